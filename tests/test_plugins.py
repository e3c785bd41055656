"""A third-party provider found through the ``limner.providers`` entry point group."""

from __future__ import annotations

import sys
import textwrap

import pytest

from limner.client import Limner
from limner.providers import _plugin_table, get_provider_class
from limner.types import ImageRequest, Operation

PLUGIN = textwrap.dedent(
    """
    from limner.catalog import ModelSpec
    from limner.flows import ProviderOutput, Run
    from limner.providers.base import Provider, image_from_bytes


    class SolidProvider(Provider):
        name = "solid"
        needs_key = False

        @classmethod
        def catalog_entries(cls):
            return [ModelSpec(id="red", provider="solid", operations=["generate"], max_n=2,
                              price={"kind": "per_image", "per_image": 0.5})]

        def flow(self, op, request, spec):
            import io
            from PIL import Image

            def render():
                buf = io.BytesIO()
                Image.new("RGB", (8, 8), (255, 0, 0)).save(buf, format="PNG")
                return buf.getvalue()

            data = yield Run(render)
            return ProviderOutput(images=[image_from_bytes(data) for _ in range(request.n)])
    """
)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "limner_solid.py").write_text(PLUGIN)
    dist = tmp_path / "limner_solid-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: limner-solid\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[limner.providers]\nsolid = limner_solid:SolidProvider\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LIMNER_LOAD_PLUGINS", "solid")
    _plugin_table.cache_clear()
    get_provider_class.cache_clear()
    yield
    _plugin_table.cache_clear()
    get_provider_class.cache_clear()
    sys.modules.pop("limner_solid", None)


def test_entry_point_provider_runs_through_the_engine(plugin) -> None:
    with Limner() as client:
        assert client.catalog.resolve("solid:red").price is not None
        result = client.run(Operation.GENERATE, ImageRequest(prompt="red", model="solid:red", n=3))
    assert len(result.images) == 3  # split into calls of at most 2
    assert result.cost_usd == pytest.approx(1.5)
    assert result.images[0].to_pil().getpixel((0, 0)) == (255, 0, 0)


def test_plugins_can_be_turned_off(plugin, monkeypatch) -> None:
    monkeypatch.setenv("LIMNER_LOAD_PLUGINS", "")
    _plugin_table.cache_clear()
    assert "solid" not in _plugin_table()
