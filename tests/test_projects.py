"""Projects and tags on generations, and ``limner export project``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from PIL import Image

from limner.cli import cli
from limner.store import Store

MODEL = "openai:gpt-image-2"


def _make_project(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        '{"prompt": "hero one", "tags": ["hero"]}\n{"prompt": "hero two"}\n{"prompt": "other", "project": "elsewhere"}\n'
    )
    result = CliRunner().invoke(
        cli,
        [
            "batch",
            str(prompts),
            "-m",
            MODEL,
            "--size",
            "256x256",
            "--project",
            "spring",
            "--tag",
            "q2",
            "-o",
            str(tmp_path / "b"),
        ],
    )
    assert result.exit_code == 0, result.output


def test_tags_and_project_are_on_every_generation(openai_env: Any, tmp_path: Path) -> None:
    _make_project(tmp_path)
    store = Store()
    entries = {e.prompt: e for e in store.search(None, limit=None)}
    store.close()
    assert entries["hero one"].project == "spring" and entries["hero one"].tags == ["q2", "hero"]
    assert entries["hero two"].tags == ["q2"]
    assert entries["other"].project == "elsewhere"  # a line's own project wins over --project


def test_export_project_names_files_and_writes_manifest_and_sheet(
    openai_env: Any, tmp_path: Path
) -> None:
    _make_project(tmp_path)
    out = tmp_path / "export"
    result = CliRunner().invoke(cli, ["export", "project", "spring", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["images"] == 2
    files = sorted(p.name for p in out.glob("*.png") if p.name != "contact_sheet.png")
    assert len(files) == 2
    assert all(re.fullmatch(r"gpt-image-2_[0-9a-f]{8}_\d{8}_\d{6}\.png", f) for f in files)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {r["prompt"] for r in manifest} == {"hero one", "hero two"}
    assert all(r["file"] in files and r["project"] == "spring" for r in manifest)
    assert (out / "manifest.csv").is_file()
    assert Image.open(out / "contact_sheet.png").width > 2 * 192

    named = tmp_path / "named"
    tagged = CliRunner().invoke(
        cli,
        [
            "export",
            "project",
            "spring",
            str(named),
            "--naming",
            "{project}-{index}-{seed}",
            "--tag",
            "hero",
            "--no-sheet",
        ],
    )
    assert tagged.exit_code == 0, tagged.output
    assert sorted(p.name for p in named.iterdir()) == [
        "manifest.csv",
        "manifest.json",
        "spring-0000.png",
    ]


def test_export_project_bad_input(openai_env: Any, tmp_path: Path) -> None:
    _make_project(tmp_path)
    runner = CliRunner()
    unknown = runner.invoke(cli, ["export", "project", "nope", str(tmp_path / "x")])
    assert (
        unknown.exit_code == 2
        and "No generations in project 'nope'" in unknown.output
        and "spring" in unknown.output
    )
    bad = runner.invoke(
        cli, ["export", "project", "spring", str(tmp_path / "y"), "--naming", "{modle}"]
    )
    assert bad.exit_code == 2 and "{modle}" in bad.output
