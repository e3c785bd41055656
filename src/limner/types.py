"""Typed requests and results shared by every provider, the CLI and the server."""

from __future__ import annotations

import hashlib
import os
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Seeds are signed 64-bit integers: what the log's INTEGER columns hold, and inside the range
# torch's generators take; providers with narrower ranges refuse the rest themselves.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1

__all__ = [
    "GeneratedImage",
    "ImageInput",
    "ImageRequest",
    "Operation",
    "ReferenceImage",
    "Result",
    "Usage",
]


class Operation(StrEnum):
    GENERATE = "generate"
    EDIT = "edit"
    INPAINT = "inpaint"
    OUTPAINT = "outpaint"
    VARIATION = "variation"
    UPSCALE = "upscale"
    REMOVE_BACKGROUND = "remove-background"
    CONTROLNET = "controlnet"
    LORA = "lora"
    STYLE_REFERENCE = "style-reference"


class ImageInput(BaseModel):
    """An input image (or mask) already read and checked; ``data`` holds the encoded bytes."""

    model_config = ConfigDict(frozen=True)

    data: bytes = Field(repr=False)
    media_type: str
    width: int
    height: int
    name: str = "image.png"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class ReferenceImage(BaseModel):
    """An image that guides the result without being edited: style, character or content."""

    model_config = ConfigDict(frozen=True)

    image: ImageInput
    kind: Literal["style", "character", "content"] = "content"
    weight: float | None = None


class ImageRequest(BaseModel):
    """One request, whatever the provider. Fields a model cannot honour are translated
    (with a warning) or refused; they are never silently dropped."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = ""
    negative_prompt: str | None = None
    model: str | None = None
    n: int = 1
    size: str | None = None
    aspect_ratio: str | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    quality: str | None = None
    style: str | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    steps: int | None = None
    guidance: float | None = None
    images: list[ImageInput] = Field(default_factory=list)
    mask: ImageInput | None = None
    strength: float | None = None
    references: list[ReferenceImage] = Field(default_factory=list)
    expand: dict[str, int] | None = None  # outpainting: pixels to add on left/right/top/bottom
    provider_options: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    project: str | None = None

    @field_validator("size")
    @classmethod
    def _normalise_size(cls, v: str | None) -> str | None:
        return v.strip().lower().replace("×", "x") if v else v

    @field_validator("expand")
    @classmethod
    def _check_expand(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        if v is None:
            return v
        unknown = set(v) - {"left", "right", "top", "bottom"}
        if unknown:
            raise ValueError(f"expand takes left, right, top and bottom, not {sorted(unknown)}")
        if any(pixels < 0 for pixels in v.values()):
            raise ValueError("expand takes no negative sides")
        return v

    def dimensions(self) -> tuple[int, int] | None:
        """The requested (width, height), or None for ``auto``, unset or malformed sizes."""
        if not self.size or self.size == "auto":
            return None
        w, sep, h = self.size.partition("x")
        if not (sep and w.isdigit() and h.isdigit()):
            return None
        return int(w), int(h)


class Usage(BaseModel):
    input_tokens: int | None = None
    output_tokens: int | None = None
    input_text_tokens: int | None = None
    input_image_tokens: int | None = None
    output_image_tokens: int | None = None
    credits: float | None = None
    raw: dict[str, Any] = Field(default_factory=dict)

    def merged(self, other: Usage) -> Usage:
        def add(a: float | None, b: float | None) -> Any:
            return None if a is None and b is None else (a or 0) + (b or 0)

        return Usage(
            input_tokens=add(self.input_tokens, other.input_tokens),
            output_tokens=add(self.output_tokens, other.output_tokens),
            input_text_tokens=add(self.input_text_tokens, other.input_text_tokens),
            input_image_tokens=add(self.input_image_tokens, other.input_image_tokens),
            output_image_tokens=add(self.output_image_tokens, other.output_image_tokens),
            credits=add(self.credits, other.credits),
        )


class GeneratedImage(BaseModel):
    data: bytes = Field(repr=False)
    media_type: str
    width: int
    height: int
    seed: int | None = None
    revised_prompt: str | None = None
    sha256: str | None = None
    path: Path | None = None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the image (with its embedded metadata) to ``path`` and return it."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.data)
        return target

    @property
    def extension(self) -> str:
        return {"image/jpeg": "jpg", "image/webp": "webp", "image/svg+xml": "svg"}.get(
            self.media_type, "png"
        )

    def to_pil(self) -> Any:
        import io

        from PIL import Image

        return Image.open(io.BytesIO(self.data))


class Result(BaseModel):
    images: list[GeneratedImage]
    model: str
    provider: str
    operation: Operation = Operation.GENERATE
    warnings: list[str] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = None
    request_id: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    generation_id: str | None = None
    cache_hit: bool = False
