"""The prompt toolkit: build, keywords, negative presets, translation, wildcards, lint, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from limner.catalog import ModelSpec, get_catalog
from limner.cli import cli
from limner.errors import InvalidRequestError, UserError
from limner.prompting import (
    PromptParts,
    build_prompt,
    combine_negative,
    count_variants,
    dialect_for,
    expand,
    keywords,
    lint_prompt,
    load_library,
    translate,
)
from limner.prompting.wildcards import WildcardError
from limner.types import ImageRequest, Operation


def _spec(**fields: object) -> ModelSpec:
    base: dict = {"id": "m", "provider": "custom", "operations": ["generate"]}
    return ModelSpec.model_validate({**base, **fields})


def _codes(issues: list) -> set[str]:
    return {i.code for i in issues}


# -- build and keywords --------------------------------------------------------------------------
def test_build_joins_parts_in_the_guide_order():
    built = build_prompt(PromptParts(
        subject="a professional businesswoman", setting="modern glass office", style="corporate photography style",
        lighting="soft natural window light", composition="medium shot, shallow depth of field", technical="8K, sharp focus",
    ))  # fmt: skip
    assert built.prompt == (
        "A professional businesswoman, in a modern glass office, corporate photography style, "
        "soft natural window light, medium shot, shallow depth of field, 8K, sharp focus"
    )
    assert built.negative_prompt is None


def test_style_preset_fills_empty_parts_and_adds_its_negatives():
    built = build_prompt(
        PromptParts(subject="a teapot", style="product", lighting="candlelight"), negative="steam"
    )
    assert built.preset == "product"
    assert "product photography" in built.prompt
    assert "candlelight" in built.prompt and "softbox" not in built.prompt  # the user's part wins
    assert built.negative_prompt is not None
    terms = built.negative_prompt.split(", ")
    assert terms[0] == "steam" and "watermark" in terms and "blurry" in terms


def test_build_needs_a_subject():
    with pytest.raises(UserError, match="subject"):
        build_prompt(PromptParts(subject=" "))


def test_negative_presets_combine_without_repeats():
    combined = combine_negative(["general", "text"], "Blurry, neon")
    assert combined is not None
    terms = combined.split(", ")
    assert terms[:2] == ["Blurry", "neon"]
    assert "blurry" not in terms  # the preset's duplicate (any case) is dropped
    assert "watermark" in terms
    with pytest.raises(UserError, match="Known negative presets"):
        combine_negative(["nope"])


def test_user_library_files_extend_the_bundled_ones(tmp_path: Path):
    folder = tmp_path / "prompting"
    folder.mkdir()
    (folder / "mine.toml").write_text(
        '[categories.lighting.groups]\nnatural = ["dappled light"]\nunderwater = ["caustics"]\n'
        '[negative.hands]\nterms = ["six fingers"]\n'
        '[styles.noir]\nstyle = "film noir"\nlighting = "venetian blind shadows"\n'
    )
    library = load_library(tmp_path)
    natural = keywords("lighting", "natural", library)
    assert natural[0] == "golden hour" and natural[-1] == "dappled light"
    assert keywords("lighting", "underwater", library) == ["caustics"]
    assert library.negative("hands") == ["six fingers"]
    assert (
        "venetian"
        in build_prompt(PromptParts(subject="a detective", style="noir"), library=library).prompt
    )


def test_unknown_category_is_a_user_error():
    with pytest.raises(UserError, match="Known categories"):
        keywords("smells")


# -- translation ---------------------------------------------------------------------------------
def test_natural_language_folds_the_negative_with_a_warning():
    spec = get_catalog().resolve("openai:gpt-image-2")
    request = ImageRequest(prompt="a cat, (fluffy:1.3)", negative_prompt="dogs", aspect_ratio="3:2")
    fields, warnings = translate(request, spec)
    assert fields["prompt"] == "a cat, (fluffy:1.3). Avoid: dogs."
    assert fields["size"] == "1536x1024"  # the same size mapping every generation gets
    assert any("negative prompt" in w for w in warnings) and any("weights" in w for w in warnings)


def test_translation_matches_the_provider_request():
    from limner.providers import get_provider_class
    from limner.validate import check_request

    for ref in ("openai:gpt-image-2", "midjourney:v7"):
        spec = get_catalog().resolve(ref)
        request = ImageRequest(prompt="a fox", negative_prompt="snow", seed=4, aspect_ratio="16:9")
        fields, _ = translate(request, spec)
        checked, _ = check_request(Operation.GENERATE, request, spec)
        native = get_provider_class(spec.provider)().native_request(
            Operation.GENERATE, checked, spec
        )
        assert native["json"]["prompt"] == fields["prompt"]


def test_flux_has_no_negative_and_a_guidance():
    spec = _spec(
        provider="bfl", family="flux", guidance=True, seed=True, aspect_ratios=["1:1", "16:9"]
    )
    request = ImageRequest(
        prompt="a fox", negative_prompt="blur", seed=3, aspect_ratio="16:9", guidance=3.5
    )
    fields, warnings = translate(request, spec)
    assert "negative_prompt" not in fields and fields["prompt"] == "a fox. Avoid: blur."
    assert fields["guidance"] == 3.5 and fields["seed"] == 3 and fields["aspect_ratio"] == "16:9"
    assert any("literally" in w for w in warnings)
    _, warnings = translate(ImageRequest(prompt="a fox", guidance=9), spec)
    assert any("outside the range" in w for w in warnings)
    _, warnings = translate(ImageRequest(prompt="a fox"), spec)
    assert any("try --guidance 3.5" in w for w in warnings)


def test_stable_diffusion_keeps_negative_and_cfg_in_range():
    spec = _spec(
        provider="stability", family="sd3.5", negative_prompt=True, guidance=True, seed=True
    )
    fields, warnings = translate(
        ImageRequest(prompt="a lion", negative_prompt="blurry", seed=1, guidance=5), spec
    )
    assert fields["negative_prompt"] == "blurry" and fields["cfg_scale"] == 5
    assert warnings == []
    _, warnings = translate(ImageRequest(prompt="a lion", guidance=12), spec)
    assert any("CFG scale 12" in w for w in warnings) and any(
        "negative-preset" in w for w in warnings
    )
    _, warnings = translate(ImageRequest(prompt="a lion", negative_prompt="x"), spec)
    assert any("4-7" in w and "--guidance 4.5" in w for w in warnings)


def test_ideogram_enums():
    ratios = ["1:1", "16:9", "3:2"]
    styles = ["AUTO", "GENERAL", "REALISTIC", "DESIGN"]
    legacy = _spec(
        provider="ideogram", id="V_2", family="ideogram", aspect_ratios=ratios, negative_prompt=True
    )
    request = ImageRequest(
        prompt="a logo with the text 'FAION'", aspect_ratio="16:9", negative_prompt="blur"
    )
    fields, warnings = translate(request, legacy)
    assert fields["aspect_ratio"] == "ASPECT_16_9" and fields["negative_prompt"] == "blur"
    assert any("--style DESIGN" in w for w in warnings)
    v3 = _spec(
        provider="ideogram",
        id="ideogram-v3",
        family="ideogram",
        aspect_ratios=ratios,
        styles=styles,
    )
    request = ImageRequest(
        prompt="a cat",
        aspect_ratio="3:2",
        style="REALISTIC",
        provider_options={"magic_prompt": "off"},
    )
    fields, _ = translate(request, v3)
    assert (fields["aspect_ratio"], fields["style_type"], fields["magic_prompt"]) == (
        "3x2",
        "REALISTIC",
        "OFF",
    )
    with pytest.raises(InvalidRequestError, match="style"):
        translate(ImageRequest(prompt="a cat", style="baroque"), v3)


def test_midjourney_flags():
    spec = _spec(provider="midjourney", family="midjourney", wire={"version": "6.1"}, negative_prompt=True,
                 seed=True, qualities=["1", "2"], styles=["raw"], aspect_ratios=["3:4", "1:1"])  # fmt: skip
    request = ImageRequest(
        prompt="portrait of a scientist", aspect_ratio="3:4", negative_prompt="blur, watermark", seed=42,
        style="raw", quality="1",
        provider_options={"stylize": 750, "chaos": 20, "tile": True,
                          "cref": "https://x.test/c.png", "cw": 50, "sref": "https://x.test/s.png", "sw": 500},
    )  # fmt: skip
    fields, _ = translate(request, spec)
    prompt = fields["prompt"]
    assert prompt.startswith("portrait of a scientist --ar 3:4 --no blur, watermark --seed 42")
    for flag in ("--stylize 750", "--chaos 20", "--style raw", "--tile", "--q 1", "--v 6.1",
                 "--cref https://x.test/c.png", "--cw 50", "--sref https://x.test/s.png", "--sw 500"):  # fmt: skip
        assert flag in prompt
    with pytest.raises(InvalidRequestError, match="chaos"):
        translate(ImageRequest(prompt="x", provider_options={"chaos": 101}), spec)


def test_dialect_comes_from_the_catalog_entry():
    assert dialect_for(_spec(provider="replicate", id="black-forest-labs/flux-schnell")) == "flux"
    assert dialect_for(_spec(provider="fal", wire={"prompt_dialect": "sd"})) == "sd"
    assert dialect_for(get_catalog().resolve("openai:gpt-image-2")) == "natural"


# -- wildcards -----------------------------------------------------------------------------------
def test_expand_all_combinations_in_order():
    assert expand("product shot of {earbuds|smartwatch} on {marble|wood}") == [
        "product shot of earbuds on marble", "product shot of earbuds on wood",
        "product shot of smartwatch on marble", "product shot of smartwatch on wood",
    ]  # fmt: skip


def test_nested_and_empty_alternatives():
    assert expand("a {red|{dark|light} blue} car") == [
        "a red car",
        "a dark blue car",
        "a light blue car",
    ]
    assert expand("a {|shiny} car") == ["a car", "a shiny car"]
    assert expand(r"literal \{braces\}") == ["literal {braces}"]


def test_random_draw_is_distinct_and_reproducible():
    pattern = "{a|b|c|d} {1|2|3|4} {x|y|z}"
    first = expand(pattern, count=10, seed=5)
    assert len(set(first)) == 10
    assert first == expand(pattern, count=10, seed=5)
    assert first != expand(pattern, count=10, seed=6)
    assert len(expand(pattern, count=500, seed=1)) == 48


def test_wildcard_files(tmp_path: Path):
    folder = tmp_path / "wildcards" / "colors"
    folder.mkdir(parents=True)
    (folder / "warm.txt").write_text("# warm colours\nred\n\n{amber|orange}\n")
    (tmp_path / "wildcards" / "self.txt").write_text("__self__\n")
    assert expand("a __colors/warm__ door", home=tmp_path) == [
        "a red door",
        "a amber door",
        "a orange door",
    ]
    assert count_variants("__colors/warm__ {a|b}", home=tmp_path) == 6
    with pytest.raises(WildcardError, match="No wildcard file"):
        expand("__nope__", home=tmp_path)
    with pytest.raises(WildcardError, match="itself"):
        expand("__self__", home=tmp_path)


@pytest.mark.parametrize("pattern", ["a {b|c", "a b|c}", "a {b} c", "{}"])
def test_malformed_patterns(pattern: str):
    with pytest.raises(WildcardError, match="Malformed"):
        expand(pattern)


def test_too_many_combinations_needs_random():
    with pytest.raises(WildcardError, match="more than the maximum"):
        expand("{a|b}" * 11, max_count=1000)
    assert len(expand("{a|b}" * 11, count=3, seed=0)) == 3


# -- lint ----------------------------------------------------------------------------------------
def test_lint_quoted_text_on_weak_model_suggests_text_models():
    catalog = get_catalog()
    issues = lint_prompt(
        'a shop sign saying "OPEN ALL NIGHT"', _spec(text_rendering="weak"), catalog=catalog
    )
    text = [i for i in issues if i.code == "weak-text-rendering"]
    assert text and "gpt-image" in text[0].suggestion
    assert "weak-text-rendering" not in _codes(
        lint_prompt('a sign saying "OPEN"', catalog.resolve("gpt-image-2"))
    )


def test_lint_length_weights_flags_and_conflicts():
    spec = _spec(max_prompt_tokens=10, max_prompt_chars=60)
    issues = lint_prompt(
        "a photorealistic watercolor of a (castle:1.4) on a hill at dawn --ar 16:9 with many towers",
        spec,
    )
    assert {
        "too-long",
        "too-many-tokens",
        "ignored-weights",
        "midjourney-flags",
        "conflicting-styles",
    } <= _codes(issues)
    assert issues[0].level == "error"
    local = _spec(provider="local", family="sdxl", negative_prompt=True)
    assert "ignored-weights" not in _codes(lint_prompt("a (castle:1.4)", local))
    assert lint_prompt("a castle on a hill", _spec()) == []


# -- CLI -----------------------------------------------------------------------------------------
def test_cli_build_keywords_for_expand_lint():
    runner = CliRunner()
    out = runner.invoke(cli, ["prompt", "build", "--subject", "a professional businesswoman", "--setting",
                              "modern glass office", "--style", "corporate", "--negative-preset", "anatomy", "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["prompt"].startswith(
        "A professional businesswoman, in a modern glass office, corporate photography style"
    )
    assert "bad anatomy" in data["negative_prompt"]
    listing = json.loads(runner.invoke(cli, ["prompt", "keywords", "--json"]).output)
    assert {
        "subject",
        "style",
        "lighting",
        "composition",
        "camera",
        "quality",
        "presets",
        "negative",
    } <= set(listing)
    out = runner.invoke(
        cli, ["prompt", "for", "gpt-image-2", "a cat", "--negative", "dogs", "--json"]
    )
    assert json.loads(out.output)["fields"]["prompt"] == "a cat. Avoid: dogs."
    out = runner.invoke(cli, ["prompt", "expand", "{a|b} {c|d}", "--json"])
    assert json.loads(out.output) == ["a c", "a d", "b c", "b d"]
    out = runner.invoke(cli, ["prompt", "lint", "dall-e-2", 'a sign saying "OPEN"', "--json"])
    assert "weak-text-rendering" in {i["code"] for i in json.loads(out.output)["issues"]}


@pytest.mark.parametrize("args", [
    ["prompt", "keywords", "smells"],
    ["prompt", "build", "--subject", "x", "--negative-preset", "nope"],
    ["prompt", "expand", "a {b"],
    ["prompt", "expand", "__missing__"],
    ["prompt", "expand", "{a|b}", "--random", "0"],
])  # fmt: skip
def test_cli_bad_input_exits_2(args: list[str]):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
