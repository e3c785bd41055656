from __future__ import annotations

from datetime import date

import pytest

from limner.catalog import SizeRule, get_catalog
from limner.errors import UnknownModelError
from limner.pricing import estimate_cost, token_cost
from limner.types import ImageRequest, Usage


def test_every_catalog_entry_loads_and_names_are_unique() -> None:
    catalog = get_catalog()
    refs = [spec.ref for spec in catalog]
    assert len(refs) == len(set(refs))
    assert len(catalog) >= 8
    for spec in catalog:
        assert spec.operations, spec.ref
        if spec.retired:
            assert spec.successor or spec.lifecycle_note, (
                f"{spec.ref} is retired without a successor"
            )
        if spec.successor:
            assert catalog.find(spec.successor) is not None, (
                f"{spec.ref} names unknown {spec.successor}"
            )


def test_resolve_by_ref_alias_and_bare_id() -> None:
    catalog = get_catalog()
    assert catalog.resolve("openai:gpt-image-2").id == "gpt-image-2"
    assert catalog.resolve("gpt-image").ref == "openai:gpt-image-2"
    assert catalog.resolve("dall-e-2").ref == "openai:dall-e-2"


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UnknownModelError) as info:
        get_catalog().resolve("openai:gpt-imge-2")
    assert "openai:gpt-image-2" in info.value.suggestions
    assert "Did you mean" in str(info.value)


def test_retired_models_keep_entries_with_successor() -> None:
    catalog = get_catalog()
    for name in ("dall-e-2", "dall-e-3", "gpt-image-1"):
        spec = catalog.resolve(f"openai:{name}")
        assert spec.is_retired(date(2026, 11, 23))
        assert spec.successor == "openai:gpt-image-2"
    gpt1 = catalog.resolve("openai:gpt-image-1")
    assert gpt1.status(date(2026, 10, 1)) == "retiring 2026-10-23"


@pytest.mark.parametrize(
    ("size", "ok"),
    [
        ((1024, 1024), True),
        ((3840, 2160), True),
        ((1000, 1000), False),
        ((4096, 1024), False),
        ((3840, 1024), False),
    ],
)
def test_size_rule(size: tuple[int, int], ok: bool) -> None:
    rule = SizeRule(
        multiple_of=16, min_edge=256, max_edge=3840, max_pixels=8_294_400, max_aspect=3.0
    )
    assert (rule.check(*size) is None) is ok


def test_price_per_image_table_and_tokens() -> None:
    catalog = get_catalog()
    d3 = catalog.resolve("openai:dall-e-3")
    assert estimate_cost(d3, ImageRequest(prompt="x", quality="hd", size="1792x1024")) == 0.12
    assert (
        estimate_cost(d3, ImageRequest(prompt="x", quality="standard", size="1024x1024", n=3))
        == 0.12
    )
    gpt2 = catalog.resolve("openai:gpt-image-2")
    usage = Usage(
        input_text_tokens=100, input_image_tokens=0, output_tokens=1000, output_image_tokens=1000
    )
    # 100 text tokens at $5/M + 1000 image tokens at $30/M
    assert token_cost(gpt2, usage) == pytest.approx(0.0305)
