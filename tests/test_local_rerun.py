"""`limner rerun` works for any provider: here the OpenAI emulator (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from limner.cli import cli
from limner.client import Limner
from limner.types import ImageRequest


def test_rerun_an_openai_generation_records_its_parent(openai_env: Any, tmp_path: Path) -> None:
    with Limner() as client:
        first = client.run("generate", ImageRequest(prompt="a red kite", model="openai:gpt-image-2",
                                                    size="1024x1024", quality="low"))  # fmt: skip
    out = CliRunner().invoke(
        cli, ["rerun", first.generation_id or "", "-o", str(tmp_path), "--json"]
    )
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    assert payload["model"] == "openai:gpt-image-2"
    with Limner() as client:
        entry = client.store.get(payload["generation_id"])
    assert entry is not None
    assert (entry.parent_id, entry.prompt, entry.params["quality"]) == (
        first.generation_id,
        "a red kite",
        "low",
    )
    assert Path(payload["images"][0]["path"]).is_file()
