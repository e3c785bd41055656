"""An emulator of the remove.bg API: ``POST /v1.0/removebg`` with ``X-Api-Key`` and a multipart
``image_file``; answers the cut-out PNG with ``X-Credits-Charged``, or remove.bg's error shape.

The "removal" is deterministic and simple: pixels close to the colour of the image corners become
transparent. An image of one flat colour has no foreground and is refused as remove.bg does.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from limner.emulators.common import EmulatorState, JSONResponse, emulator_app

__all__ = ["BASE_PATH", "create_app"]

BASE_PATH = "/v1.0"
SIZES = {"auto", "preview", "full", "50MP", "small", "regular", "medium", "hd", "4k"}
PREVIEW_PIXELS = 625 * 400


def _error(status: int, title: str, code: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"title": title}
    if code:
        item["code"] = code
    return {"errors": [item]}


def _cut_out(data: bytes, size: str, bg_color: str | None) -> tuple[bytes, int, int] | None:
    import numpy as np
    from PIL import Image, ImageColor

    with Image.open(io.BytesIO(data), formats=["PNG", "JPEG", "WEBP"]) as img:
        rgb = img.convert("RGB")
    if size == "preview" and rgb.width * rgb.height > PREVIEW_PIXELS:
        factor = (PREVIEW_PIXELS / (rgb.width * rgb.height)) ** 0.5
        rgb = rgb.resize((max(int(rgb.width * factor), 1), max(int(rgb.height * factor), 1)))
    pixels = np.asarray(rgb, dtype=np.int16)
    corners = np.array([pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]])
    background = np.median(corners, axis=0)
    distance = np.abs(pixels - background).max(axis=-1)
    alpha = np.where(distance > 40, 255, 0).astype(np.uint8)
    if not alpha.any():
        return None
    out = rgb.convert("RGBA")
    out.putalpha(Image.fromarray(alpha))
    if bg_color:
        base = Image.new("RGBA", out.size, ImageColor.getcolor("#" + bg_color.lstrip("#"), "RGBA"))
        base.alpha_composite(out)
        out = base
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue(), out.width, out.height


def create_app(state: EmulatorState | None = None) -> Any:
    state = state or EmulatorState()

    async def removebg(request: Request) -> Response:
        if not request.headers.get("x-api-key"):
            return JSONResponse(_error(403, "Missing API Key", "auth_failed"), status_code=403)
        form = await request.form()
        upload = form.get("image_file")
        if not isinstance(upload, UploadFile):
            return JSONResponse(_error(400, "No image given", "missing_source"), status_code=400)
        size = str(form.get("size") or "auto")
        if size not in SIZES:
            return JSONResponse(
                _error(400, f"Invalid size: {size}", "invalid_parameters"), status_code=400
            )
        try:
            result = _cut_out(await upload.read(), size, str(form.get("bg_color") or "") or None)
        except OSError:
            return JSONResponse(
                _error(400, "Failed to read image", "invalid_image"), status_code=400
            )
        if result is None:
            return JSONResponse(
                _error(400, "Could not identify foreground in image.", "unknown_foreground"),
                status_code=400,
            )
        data, width, height = result
        headers = {
            "X-Credits-Charged": "0.25" if size == "preview" else "1",
            "X-Width": str(width), "X-Height": str(height), "X-Type": "other",
            "x-request-id": uuid.uuid4().hex,
        }  # fmt: skip
        return Response(data, media_type="image/png", headers=headers)

    routes = [Route(f"{BASE_PATH}/removebg", removebg, methods=["POST"])]
    return emulator_app(routes, state, lambda status, message: _error(status, message))
