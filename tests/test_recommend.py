"""Model recommendation and the feature matrix, from the catalog."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from limner.catalog import Catalog, ModelSpec, get_catalog
from limner.cli import cli
from limner.errors import UserError
from limner.prompting import load_library
from limner.recommend import detect_use_cases, feature_matrix, parse_needs, recommend
from limner.types import Operation


def _spec(id: str, **fields: object) -> ModelSpec:
    base: dict = {"id": id, "provider": "test", "operations": ["generate"],
                  "price": {"kind": "per_image", "per_image": 0.04}}  # fmt: skip
    return ModelSpec.model_validate({**base, **fields})


@pytest.fixture
def small_catalog() -> Catalog:
    return Catalog([
        _spec("typo", family="ideogram", text_rendering="excellent", use_cases=["text", "logo"]),
        _spec("photo", family="flux", text_rendering="good", traits={"photorealism": "excellent"},
              operations=["generate", "inpaint", "controlnet"], use_cases=["portrait", "product"]),
        _spec("dev", family="flux", text_rendering="good", commercial_use=False, licence="FLUX.1 [dev] Non-Commercial",
              traits={"photorealism": "excellent"}, price={"kind": "per_image", "per_image": 0.02}),
        _spec("fast", family="flux-schnell", text_rendering="moderate", use_cases=["quick-iteration"],
              price={"kind": "per_image", "per_image": 0.003}),
        _spec("weak", text_rendering="weak", price={"kind": "per_image", "per_image": 0.001}),
        _spec("old", text_rendering="excellent", use_cases=["text"], retired="2020-01-01"),
    ])  # fmt: skip


def test_use_cases_from_the_prompt():
    library = load_library()
    assert detect_use_cases('logo with the text "FAION"', library)[:2] == ["text", "logo"]
    assert "portrait" in detect_use_cases("studio headshot of a ceo", library)
    assert detect_use_cases("a mountain", library) == []


def test_text_prompt_ranks_text_renderers_first(small_catalog):
    ranked = recommend('logo with the text "FAION"', catalog=small_catalog, limit=0)
    assert ranked[0].model == "test:typo"
    assert any("text rendering excellent" in r for r in ranked[0].reasons)
    assert ranked[-1].model == "test:weak"
    assert "test:old" not in {r.model for r in ranked}  # retired models are never recommended


def test_constraints_filter(small_catalog):
    commercial = recommend("portrait of a woman", commercial=True, catalog=small_catalog, limit=0)
    assert "test:dev" not in {r.model for r in commercial}
    assert "test:dev" in {
        r.model for r in recommend("portrait of a woman", catalog=small_catalog, limit=0)
    }
    needs = recommend(
        "", needs=[Operation.INPAINT, Operation.CONTROLNET], catalog=small_catalog, limit=0
    )
    assert [r.model for r in needs] == ["test:photo"]
    cheap = recommend("", budget=0.01, catalog=small_catalog, limit=0)
    assert {r.model for r in cheap} == {"test:fast", "test:weak"}


def test_use_case_option(small_catalog):
    ranked = recommend(use_cases=["quick-iteration"], catalog=small_catalog)
    assert ranked[0].model == "test:fast"
    with pytest.raises(UserError, match="Known use cases"):
        recommend(use_cases=["wedding"], catalog=small_catalog)
    with pytest.raises(UserError):
        recommend(budget=-1, catalog=small_catalog)


def test_parse_needs():
    assert parse_needs("inpaint, controlnet") == [Operation.INPAINT, Operation.CONTROLNET]
    assert parse_needs("inpainting") == [Operation.INPAINT]
    with pytest.raises(UserError, match="Unknown capability"):
        parse_needs("teleport")


def test_real_catalog_text_prompt_prefers_excellent_text():
    catalog = get_catalog()
    top = recommend('logo with the text "FAION"', catalog=catalog, limit=3)
    assert top and all(catalog.resolve(r.model).text_rendering == "excellent" for r in top)


def test_feature_matrix(small_catalog):
    specs = [
        small_catalog.resolve("test:typo"),
        small_catalog.resolve("test:photo"),
        small_catalog.resolve("test:dev"),
    ]
    matrix = feature_matrix(specs)
    assert matrix["Text Rendering"] == {
        "test:typo": "Excellent",
        "test:photo": "Good",
        "test:dev": "Good",
    }
    assert matrix["ControlNet"]["test:photo"] == "Yes" and matrix["ControlNet"]["test:typo"] == "No"
    assert matrix["Inpainting"]["test:photo"] == "Yes"
    assert matrix["Commercial Use"]["test:dev"].startswith("No (FLUX.1 [dev]")
    assert matrix["Photorealism"]["test:photo"] == "Excellent"


def test_cli_recommend_and_compare():
    runner = CliRunner()
    out = runner.invoke(cli, ["recommend", 'logo with the text "FAION"', "--json", "--commercial"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["use_cases"][:2] == ["text", "logo"] and data["recommendations"]
    out = runner.invoke(
        cli, ["models", "compare", "openai:gpt-image-2", "openai:dall-e-3", "--json"]
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["Text Rendering"]["openai:dall-e-3"] == "Excellent"
    for args in (["recommend", "--use-case", "wedding"], ["recommend", "x", "--budget", "0"],
                 ["recommend", "x", "--needs", "teleport"]):  # fmt: skip
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, result.output
