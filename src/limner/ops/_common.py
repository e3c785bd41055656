"""Reading inputs and storing results of the local operations, like generations are stored."""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from limner import errors
from limner.images import open_checked
from limner.store import LogEntry, Store
from limner.types import GeneratedImage

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["OpResult", "encode_png", "read_image", "record_op"]


@dataclass
class OpResult:
    """What a local operation produced: stored images (and masks), the log id, warnings."""

    images: list[GeneratedImage]
    operation: str
    model: str
    generation_id: str | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def image(self) -> GeneratedImage:
        return self.images[0]


def read_image(source: Any, *, name: str | None = None) -> tuple[Image, list[str]]:
    """Open a path, bytes or PIL image through the checked reader; return it and its notes.

    Paths and bytes go through :func:`limner.images.open_checked` (format allowlist, pixel
    cap, first frame of animations), so nothing unchecked is ever decoded.
    """
    from PIL import Image as PILImage

    if isinstance(source, PILImage.Image):
        return source, []
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise errors.InputImageError(f"{path} does not exist.", hint="Check the path.") from exc
        except OSError as exc:
            raise errors.InputImageError(f"{path} cannot be read: {exc.strerror}.") from exc
        return open_checked(data, name=name or path.name)
    if isinstance(source, (bytes, bytearray)):
        return open_checked(bytes(source), name=name or "image")
    if hasattr(source, "data") and isinstance(source.data, bytes):
        return open_checked(source.data, name=name or str(getattr(source, "name", "image")))
    raise errors.InputImageError(f"Cannot read an image from {type(source).__name__}.")


def as_rgb(img: Image) -> Image:
    """RGB pixels; a transparent background is composited over white first."""
    if img.mode == "RGB":
        return img
    if "A" in img.getbands() or "transparency" in img.info:
        from PIL import Image as PILImage

        rgba = img.convert("RGBA")
        base = PILImage.new("RGB", rgba.size, (255, 255, 255))
        base.paste(rgba, mask=rgba.getchannel("A"))
        return base
    return img.convert("RGB")


def encode_png(img: Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def record_op(
    store: Store,
    *,
    operation: str,
    model: str,
    outputs: list[Image],
    params: dict[str, Any],
    inputs: list[str],
    started: float,
    warnings: list[str] | None = None,
    parent_id: str | None = None,
    project: str | None = None,
) -> OpResult:
    """Store ``outputs`` as PNG assets and log the operation like a generation."""
    images: list[GeneratedImage] = []
    stored = []
    for img in outputs:
        data = encode_png(img)
        item = store.put_asset(data, "image/png", img.width, img.height)
        stored.append(item)
        images.append(
            GeneratedImage(
                data=data,
                media_type="image/png",
                width=img.width,
                height=img.height,
                sha256=item.sha256,
                path=item.path,
            )
        )
    timings = {"total": round(time.perf_counter() - started, 4)}
    entry = LogEntry(
        operation=operation,
        provider="limner",
        model=model,
        prompt="",
        status="ok",
        params={**params, "images": inputs},
        warnings=warnings or None,
        parent_id=parent_id,
        project=project,
        timings=timings,
        cost_usd=0.0,
        images=stored,
    )
    store.record(entry)
    return OpResult(
        images=images,
        operation=operation,
        model=model,
        generation_id=entry.id,
        warnings=list(warnings or []),
        timings=timings,
    )


def input_sha(img: Image) -> str:
    import hashlib

    return hashlib.sha256(img.tobytes()).hexdigest()
