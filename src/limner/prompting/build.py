"""Structured prompts: subject, setting, style, lighting, composition and technical parts joined
in that order (the structure the product description recommends)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from limner.errors import UserError
from limner.prompting.library import Library, load_library
from limner.prompting.negative import combine_negative

__all__ = ["BuiltPrompt", "PromptParts", "build_prompt"]

PARTS = ("subject", "setting", "style", "lighting", "composition", "technical")
PREPOSITIONS = ("in ", "on ", "at ", "inside ", "under ", "over ", "by ", "near ", "against ",
                "beside ", "within ", "among ", "amid ", "above ", "below ", "underwater", "outdoors")  # fmt: skip


@dataclass
class PromptParts:
    subject: str = ""
    setting: str = ""
    style: str = ""
    lighting: str = ""
    composition: str = ""
    technical: str = ""
    extra: list[str] = field(default_factory=list)


@dataclass
class BuiltPrompt:
    prompt: str
    negative_prompt: str | None
    parts: dict[str, str]
    preset: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _setting_phrase(setting: str) -> str:
    text = setting.strip()
    if not text or text.lower().startswith(PREPOSITIONS):
        return text
    return f"in {text}" if text.lower().startswith(("a ", "an ", "the ")) else f"in a {text}"


def build_prompt(
    parts: PromptParts,
    *,
    negative: str | None = None,
    negative_presets: list[str] | None = None,
    library: Library | None = None,
) -> BuiltPrompt:
    """Join the parts into one prompt. ``parts.style`` may name a style preset (see
    ``limner prompt keywords presets``): its text becomes the style and it fills the lighting,
    composition and technical parts left empty, and adds its negative presets."""
    if not parts.subject.strip():
        raise UserError("A structured prompt needs a subject.", hint='Pass --subject "...".')
    library = library or load_library()
    values = {name: getattr(parts, name).strip() for name in PARTS}
    preset_name = values["style"] if values["style"] in library.styles else None
    presets = list(negative_presets or [])
    if preset_name:
        preset = library.style(preset_name)
        values["style"] = str(preset.get("style", preset_name))
        for name in ("lighting", "composition", "technical"):
            if not values[name] and preset.get(name):
                values[name] = str(preset[name])
        presets = [*presets, *[p for p in preset.get("negative", []) if p not in presets]]
        # A preset's negatives are suggestions: the user's own presets come first.
    values["setting"] = _setting_phrase(values["setting"])
    pieces = [values[name] for name in PARTS if values[name]] + [
        e.strip() for e in parts.extra if e.strip()
    ]
    prompt = ", ".join(pieces)
    return BuiltPrompt(
        prompt=prompt[0].upper() + prompt[1:],
        negative_prompt=combine_negative(presets, negative, library),
        parts=values,
        preset=preset_name,
    )
