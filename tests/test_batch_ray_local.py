"""Local-engine items of a batch on Ray GPU actors: one actor per (logical) GPU, model resident."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("torch")
pytest.importorskip("diffusers")

from limner.batch import BatchRunner, batch_id_for, parse_batch_file  # noqa: E402
from limner.batch.ray_backend import ray_executor  # noqa: E402
from limner.store import Store  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.local]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from limner.local.testing import build_tiny

    folder = tmp_path_factory.getbasetemp() / "tiny-local-models" / "sd15"
    if not (folder / "model_index.json").exists():
        build_tiny("sd15", folder)
    return folder


@pytest.fixture
def ray_with_one_gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A CPU-only machine declares one logical GPU: the actor is placed on it, while the engine
    # is told to compute on the CPU (the variable reaches the workers with the LIMNER_ env).
    monkeypatch.setenv("LIMNER_LOCAL_DEVICE", "cpu")
    ray.init(
        num_cpus=2,
        num_gpus=1,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def test_local_items_run_on_a_resident_gpu_actor(
    tiny_sd: Path, ray_with_one_gpu: None, tmp_path: Path
) -> None:
    path = tmp_path / "local.jsonl"
    lines = [
        {"prompt": f"ray local cat {i}", "model": f"local:{tiny_sd}", "size": "64x64",
         "steps": 2, "seed": i, "provider_options": {"device": "cpu"}}
        for i in range(3)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    parsed = parse_batch_file(path, {})
    assert not parsed.problems
    batch_id = batch_id_for("batch", path.name, str(path))
    with BatchRunner() as runner:
        rows = runner.plan_items(parsed.lines)
        summary = runner.run(batch_id, rows, executor=ray_executor("local"))
        stats = dict(runner.limiter.stats)
    assert (summary.done, summary.failed, summary.sent) == (3, 0, 3), summary.problems
    # One actor for the one GPU; it ran every item on a single load of the model.
    assert stats["local:engine_actors"] == 1
    assert stats["local:engine_items"] == 3
    assert stats["local:model_loads"] == 1
    store = Store()
    found = store.search("ray local cat", limit=None, status="ok")
    store.close()
    assert sorted(e.prompt for e in found) == [f"ray local cat {i}" for i in range(3)]
    assert {e.model for e in found} == {f"local:{tiny_sd}"}
