"""A/B tests and X/Y/Z grids against the OpenAI emulator: sheets, reports, winners."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from PIL import Image

from limner.cli import cli
from limner.store import Store

MODELS = ("openai:gpt-image-2", "openai:gpt-image-2.5-flare")


def _run(args: list[str]) -> Any:
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_ab_variants_models_seeds_sheet_report_and_pick(openai_env: Any, tmp_path: Path) -> None:
    out = tmp_path / "ab"
    args = ["ab", "landing page hero image", "--variant", "minimalist, blue gradient", "--variant", "dark theme, neon accents",
            "-m", MODELS[0], "-m", MODELS[1], "--seeds", "2", "--size", "256x256", "-o", str(out), "--json"]  # fmt: skip
    result = _run(args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    cells = data["cells"]
    assert len(cells) == 2 * 2 * 2 and all(c["status"] == "done" for c in cells)
    prompts = {c["prompt"] for c in cells}
    assert prompts == {
        "landing page hero image, minimalist, blue gradient",
        "landing page hero image, dark theme, neon accents",
    }
    assert {c["params"]["model"] for c in cells} == set(MODELS)
    assert {c["params"]["seed"] for c in cells} == {1, 2}
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.height > 4 * 192 and sheet.width > 2 * 192  # 4 rows (model x seed), 2 columns
    report = (out / "report.html").read_text()
    for cell in cells:
        assert cell["generation_id"] in report
        assert Path(cell["file"]).is_file()
        assert {c["name"] for c in cell["scores"]["checks"]} >= {"sharpness", "exposure"}
    assert "minimalist, blue gradient" in report and "cost $" in report

    first, second = cells[0]["generation_id"], cells[1]["generation_id"]
    picked = _run(["ab", "pick", first, "--json"])
    assert picked.exit_code == 0 and json.loads(picked.stdout)["winner"] == first
    _run(["ab", "pick", second])
    store = Store()
    assert "winner" in (store.get(second).tags or [])  # type: ignore[union-attr]
    assert "winner" not in (store.get(first).tags or [])  # type: ignore[union-attr]
    store.close()
    again = json.loads(_run(args).stdout)
    assert again["summary"]["sent"] == 0  # the same experiment resumes, nothing is resent


def test_grid_xyz_over_any_parameters(openai_env: Any, tmp_path: Path) -> None:
    out = tmp_path / "grid"
    result = _run(["grid", "a lighthouse", "--x", f"model={MODELS[0]},{MODELS[1]}", "--y", "quality=low,high",
                   "--z", "size=256x256,512x256", "-o", str(out), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["cells"]) == 8 and len(data["sheets"]) == 2
    wide = [c for c in data["cells"] if c["z"] == "512x256"]
    assert all(Image.open(c["file"]).size == (512, 256) for c in wide)
    costs = {
        c["y"]: c["cost_usd"] for c in data["cells"] if c["x"] == MODELS[0] and c["z"] == "256x256"
    }
    assert costs["high"] > costs["low"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest) == 8 and {"x", "y", "z", "scores"} <= set(manifest[0])


def test_grid_and_ab_bad_input(openai_env: Any, tmp_path: Path) -> None:
    runner = CliRunner()
    unknown = runner.invoke(cli, ["grid", "p", "--x", "colour=red,blue"])
    assert unknown.exit_code == 2 and "Unknown grid parameter 'colour'" in unknown.output
    malformed = runner.invoke(cli, ["grid", "p", "--x", "seed"])
    assert malformed.exit_code == 2 and "PARAM=v1,v2" in malformed.output
    nan = runner.invoke(cli, ["grid", "p", "--x", "seed=one,two"])
    assert nan.exit_code == 2 and "not a number" in nan.output
    assert runner.invoke(cli, ["grid", "p"]).exit_code == 2
    huge = runner.invoke(
        cli,
        [
            "grid",
            "p",
            "--x",
            "seed=" + ",".join(map(str, range(30))),
            "--y",
            "steps=" + ",".join(map(str, range(1, 30))),
        ],
    )
    assert huge.exit_code == 2 and "maximum" in huge.output
    missing = runner.invoke(cli, ["ab", "pick", "nope"])
    assert missing.exit_code == 2 and "No generation" in missing.output
