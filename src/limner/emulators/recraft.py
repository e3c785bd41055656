"""An emulator of Recraft's API: JSON generation (raster or SVG by model), the multipart image
operations, per-model size and style checks, ``credits`` in every response (1,000 = 1 USD),
result URLs served from an expiring delivery path (Recraft keeps them about 24 hours), Bearer
auth, and a content-filter refusal on ``BLOCKED_WORD``."""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from limner import codec
from limner.emulators.common import (
    BLOCKED_WORD,
    EmulatorState,
    JSONResponse,
    emulator_app,
    render_image,
)

__all__ = ["BASE_PATH", "create_app", "render_svg"]

BASE_PATH = "/v1"

V3_SIZES = {
    "1024x1024", "1365x1024", "1024x1365", "1536x1024", "1024x1536", "1820x1024", "1024x1820",
    "1024x2048", "2048x1024", "1434x1024", "1024x1434", "1024x1280", "1280x1024", "1024x1707", "1707x1024",
}  # fmt: skip
V4_SIZES = {
    "1024x1024", "1536x768", "768x1536", "1280x832", "832x1280", "1216x896", "896x1216",
    "1152x896", "896x1152", "1344x768", "768x1344",
}  # fmt: skip
V4_PRO_SIZES = {
    "2048x2048",
    "3072x1536",
    "1536x3072",
    "2560x1664",
    "1664x2560",
    "2432x1792",
    "1792x2432",
}
V3_STYLES = {
    "realistic_image",
    "digital_illustration",
    "vector_illustration",
    "logo_raster",
    "icon",
    "any",
}
V3_VECTOR_STYLES = {"vector_illustration", "icon", "logo", "any"}
# model -> (credits per image, sizes, styles or None, vector output)
MODELS: dict[str, tuple[int, set[str], set[str] | None, bool]] = {
    "recraftv4_1": (35, V4_SIZES, None, False),
    "recraftv4_1_pro": (210, V4_PRO_SIZES, None, False),
    "recraftv4_1_vector": (80, V4_SIZES, None, True),
    "recraftv4_1_pro_vector": (300, V4_PRO_SIZES, None, True),
    "recraftv4": (40, V4_SIZES, None, False),
    "recraftv4_pro": (250, V4_PRO_SIZES, None, False),
    "recraftv4_vector": (80, V4_SIZES, None, True),
    "recraftv4_pro_vector": (300, V4_PRO_SIZES, None, True),
    "recraftv3": (40, V3_SIZES, V3_STYLES, False),
    "recraftv3_vector": (80, V3_SIZES, V3_VECTOR_STYLES, True),
}
UTILITY_CREDITS = {
    "vectorize": 10,
    "removeBackground": 10,
    "crispUpscale": 4,
    "creativeUpscale": 250,
    "eraseRegion": 2,
}
PROMPTED_OPS = {"imageToImage", "inpaint", "replaceBackground", "generateBackground"}
MASKED_OPS = {"inpaint", "generateBackground", "eraseRegion"}


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request"):
        super().__init__(message)
        self.status, self.code = status, code

    def response(self) -> JSONResponse:
        return JSONResponse({"code": self.code, "message": str(self)}, status_code=self.status)


def error_body(status: int, message: str) -> dict[str, Any]:
    code = {401: "unauthorized", 429: "too_many_requests"}.get(
        status, "internal_error" if status >= 500 else "invalid_request"
    )
    return {"code": code, "message": message}


def render_svg(prompt: str, seed: int | None, width: int, height: int) -> bytes:
    """A deterministic SVG: flat shapes whose colours derive from prompt and seed."""
    digest = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
    c1, c2, c3 = (f"#{digest[i]:02x}{digest[i + 1]:02x}{digest[i + 2]:02x}" for i in (0, 3, 6))
    r = min(width, height) // 4
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'<rect width="{width}" height="{height}" fill="{c1}"/>'
        f'<rect x="0" y="{height // 2}" width="{width}" height="{height // 2}" fill="{c2}"/>'
        f'<circle cx="{width // 2}" cy="{height // 2}" r="{r}" fill="{c3}"/></svg>'
    ).encode()


def _check_auth(request: Request) -> None:
    if not request.headers.get("authorization", "").startswith("Bearer "):
        raise APIError(401, "Missing or invalid authorization token", "unauthorized")


def _check_prompt(prompt: str) -> None:
    if not prompt:
        raise APIError(400, "prompt is required", "invalid_prompt")
    if BLOCKED_WORD in prompt:
        raise APIError(400, "Your prompt was rejected by the content filter.", "nsfw_content")


def _render(prompt: str, seed: Any, size: str, vector: bool) -> tuple[bytes, str]:
    w, _, h = size.partition("x")
    if vector:
        return render_svg(prompt, seed, int(w), int(h)), "image/svg+xml"
    return render_image(prompt, seed, int(w), int(h)), "image/png"


def _deliver(
    request: Request, state: EmulatorState, data: bytes, media: str, b64: bool
) -> dict[str, Any]:
    item: dict[str, Any] = {"image_id": str(uuid.uuid4())}
    if b64:
        item["b64_json"] = codec.b64encode(data)
    else:
        item["url"] = state.delivery.put(data, media, str(request.base_url))
    return item


def _model(
    params: dict[str, Any], default: str
) -> tuple[str, tuple[int, set[str], set[str] | None, bool]]:
    name = str(params.get("model", default))
    if name not in MODELS:
        raise APIError(400, f"Unknown model: {name}", "invalid_model")
    return name, MODELS[name]


def _check_params(
    params: dict[str, Any], rules: tuple[int, set[str], set[str] | None, bool], model: str
) -> str:
    _, sizes, styles, _ = rules
    size = str(params.get("size", "1024x1024" if "1024x1024" in sizes else sorted(sizes)[0]))
    if size not in sizes:
        raise APIError(400, f"Size {size} is not supported by {model}", "invalid_size")
    style = params.get("style")
    if style is not None and (styles is None or style not in styles):
        raise APIError(400, f"Style {style} is not supported by {model}", "invalid_style")
    n = int(params.get("n", 1))
    if not 1 <= n <= 6:
        raise APIError(400, "n must be between 1 and 6", "invalid_n")
    return size


async def _image_of(upload: Any) -> tuple[int, int, bytes]:
    from PIL import Image

    data = await upload.read()
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.width, img.height, data
    except Exception:
        raise APIError(400, "Invalid image", "invalid_image") from None


def _b64(params: dict[str, Any]) -> bool:
    return params.get("response_format") == "b64_json"


async def _generations(request: Request, state: EmulatorState) -> Response:
    _check_auth(request)
    params = await request.json()
    _check_prompt(str(params.get("prompt", "")))
    model, rules = _model(params, "recraftv4")
    size = _check_params(params, rules, model)
    n, seed = int(params.get("n", 1)), params.get("random_seed")
    data = []
    for i in range(n):
        raw, media = _render(str(params["prompt"]), (seed or 0) + i, size, rules[3])
        data.append(_deliver(request, state, raw, media, _b64(params)))
    return JSONResponse({"created": int(time.time()), "credits": rules[0] * n, "data": data})


async def _read_operation_form(
    request: Request, endpoint: str
) -> tuple[dict[str, Any], tuple[int, int, bytes]]:
    """The form fields and the input image (width, height, bytes); the mask checked where the
    endpoint needs one."""
    form = await request.form()
    params = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
    upload = form.get("image") or form.get("file")
    if upload is None or isinstance(upload, str):
        raise APIError(400, "image is required", "invalid_image")
    width, height, data = await _image_of(upload)
    if endpoint in MASKED_OPS:
        mask = form.get("mask")
        if mask is None or isinstance(mask, str):
            raise APIError(400, "mask is required", "invalid_mask")
        mw, mh, _ = await _image_of(mask)
        if (mw, mh) != (width, height):
            raise APIError(400, "mask must have the same dimensions as image", "invalid_mask")
    return params, (width, height, data)


def _prompted_operation(
    request: Request,
    state: EmulatorState,
    endpoint: str,
    params: dict[str, Any],
    image: tuple[int, int, bytes],
) -> dict[str, Any]:
    """An operation guided by a prompt (image-to-image, inpaint, backgrounds), billed as its model."""
    _check_prompt(str(params.get("prompt", "")))
    _, rules = _model(params, "recraftv3")
    credits, vector = rules[0], rules[3]
    width, height, data = image
    salt = hashlib.sha256(data).hexdigest()[:12]
    n, seed = int(params.get("n", 1)), params.get("random_seed")
    items = []
    for i in range(n):
        prompt = f"{endpoint}|{params['prompt']}|{salt}"
        raw, media = _render(prompt, f"{seed}-{i}", f"{width}x{height}", vector)
        items.append(_deliver(request, state, raw, media, _b64(params)))
    return {"created": int(time.time()), "credits": credits * n, "data": items}


def _utility_operation(
    request: Request,
    state: EmulatorState,
    endpoint: str,
    params: dict[str, Any],
    image: tuple[int, int, bytes],
) -> dict[str, Any]:
    """A model-independent utility (vectorize, upscales, background removal, erase), one image."""
    width, height, data = image
    salt = hashlib.sha256(data).hexdigest()[:12]
    factor = {"crispUpscale": 4, "creativeUpscale": 4}.get(endpoint, 1)
    w, h = width * factor, height * factor
    raw, media = _render(f"{endpoint}|{salt}", None, f"{w}x{h}", endpoint == "vectorize")
    item = _deliver(request, state, raw, media, _b64(params))
    return {"created": int(time.time()), "credits": UTILITY_CREDITS[endpoint], "image": item}


async def _operation(request: Request, state: EmulatorState) -> Response:
    endpoint = request.path_params["endpoint"]
    _check_auth(request)
    if endpoint not in PROMPTED_OPS and endpoint not in UTILITY_CREDITS:
        raise APIError(404, f"Unknown endpoint /images/{endpoint}", "not_found")
    params, image = await _read_operation_form(request, endpoint)
    run = _prompted_operation if endpoint in PROMPTED_OPS else _utility_operation
    return JSONResponse(run(request, state, endpoint, params, image))


async def _me(request: Request) -> Response:
    _check_auth(request)
    return JSONResponse(
        {"id": "emulator", "email": "emulator@example.com", "name": "Emulator", "credits": 100000}
    )


def create_app(state: EmulatorState | None = None) -> Any:
    app_state = state or EmulatorState()
    app_state.delivery.ttl = 24 * 3600.0

    def endpoint(handler: Callable[..., Awaitable[Response]], *with_state: EmulatorState) -> Any:
        async def respond(request: Request) -> Response:
            try:
                return await handler(request, *with_state)
            except APIError as exc:
                return exc.response()

        return respond

    routes = [
        Route(
            f"{BASE_PATH}/images/generations",
            endpoint(_generations, app_state),
            methods=["POST"],
        ),
        Route(
            f"{BASE_PATH}/images/{{endpoint}}", endpoint(_operation, app_state), methods=["POST"]
        ),
        Route(f"{BASE_PATH}/users/me", endpoint(_me), methods=["GET"]),
    ]
    return emulator_app(routes, app_state, error_body)
