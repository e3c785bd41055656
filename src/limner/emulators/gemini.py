"""An emulator of the Gemini API's image generation (``models/{model}:generateContent``),
faithful enough for the official ``google-genai`` SDK: ``x-goog-api-key`` (or ``?key=``) auth,
``imageConfig`` aspect ratios and sizes, input images as ``inlineData`` parts, usage in tokens
by modality, Google's error shape, and the ``IMAGE_SAFETY`` refusal on ``BLOCKED_WORD``.
Result PNGs carry metadata of the provider's own (an AI-made credit and IPTC XMP), as Google's do.
The retired Imagen ``:predict`` path is kept for the catalog's retired entries."""

from __future__ import annotations

import hashlib
import io
import uuid
from typing import Any

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

__all__ = ["BASE_PATH", "create_app"]

BASE_PATH = "/v1beta"

ASPECTS = {"1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"}
WIDE_ASPECTS = {"1:4", "4:1", "1:8", "8:1"}
# Output image tokens by imageSize, per model (Google bills images as output tokens).
MODELS: dict[str, dict[str, Any]] = {
    "gemini-3-pro-image-preview": {
        "sizes": {"1K": 1120, "2K": 1120, "4K": 2000},
        "aspects": ASPECTS,
        "thinks": True,
    },
    "gemini-3.1-flash-image-preview": {
        "sizes": {"512": 747, "1K": 1120, "2K": 1680, "4K": 2520},
        "aspects": ASPECTS | WIDE_ASPECTS,
    },
    "gemini-2.5-flash-image": {"sizes": {"1K": 1290}, "aspects": ASPECTS},
}
IMAGEN_MODELS = {
    "imagen-4.0-generate-001",
    "imagen-4.0-ultra-generate-001",
    "imagen-4.0-fast-generate-001",
}
# The emulator draws small images so that tests stay fast; the long edge per imageSize.
EDGE = {"512": 128, "1K": 256, "2K": 320, "4K": 384}
VERTEX_ONLY = {"personGeneration", "prominentPeople", "imageOutputOptions"}
GOOGLE_XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
    ' Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"/>'
    "</rdf:RDF></x:xmpmeta>"
)


GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class APIError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.code, str(self)), status_code=self.code)


def error_body(code: int, message: str) -> dict[str, Any]:
    return {
        "error": {"code": code, "message": message, "status": GOOGLE_STATUS.get(code, "UNKNOWN")}
    }


def _dimensions(aspect: str, size: str) -> tuple[int, int]:
    a, _, b = aspect.partition(":")
    ratio = float(a) / float(b)
    edge = EDGE[size]
    if ratio >= 1:
        return edge, max(int(edge / ratio) // 8 * 8, 8)
    return max(int(edge * ratio) // 8 * 8, 8), edge


def _check_auth(request: Request) -> None:
    if not (request.headers.get("x-goog-api-key") or request.query_params.get("key")):
        raise APIError(
            403,
            "Method doesn't allow unregistered callers. Please use API Key or other form of API consumer identity to call this API.",
        )


def _read_parts(body: dict[str, Any]) -> tuple[str, list[bytes]]:
    contents = body.get("contents")
    if not contents:
        raise APIError(400, "* GenerateContentRequest.contents: contents is not specified")
    texts, images = [], []
    for content in contents:
        for part in content.get("parts") or []:
            if "text" in part:
                texts.append(str(part["text"]))
            inline = part.get("inlineData") or part.get("inline_data")
            if inline:
                try:
                    # Google accepts standard and URL-safe base64 (the SDK sends the latter).
                    raw = str(inline["data"]).replace("-", "+").replace("_", "/")
                    images.append(codec.b64decode(raw + "=" * (-len(raw) % 4), validate=True))
                except (KeyError, ValueError):
                    raise APIError(
                        400,
                        "Invalid value at 'contents[0].parts[1].inline_data.data': invalid base64.",
                    ) from None
    return " ".join(texts), images


def _image_settings(model: str, rules: dict[str, Any], config: dict[str, Any]) -> tuple[str, str]:
    """The aspect ratio and imageSize asked for, checked against what ``model`` takes."""
    image_config = config.get("imageConfig") or {}
    for key in VERTEX_ONLY & set(image_config):
        raise APIError(400, f"{key} parameter is not supported in Gemini API.")
    aspect = image_config.get("aspectRatio", "1:1")
    if aspect not in rules["aspects"]:
        raise APIError(400, f"Unsupported aspect ratio: {aspect}.")
    size = image_config.get("imageSize", "1K")
    if size not in rules["sizes"]:
        raise APIError(400, f"Unsupported image size: {size} for model {model}.")
    return aspect, size


def _prompt_usage(prompt: str, images: list[bytes]) -> dict[str, Any]:
    text_tokens = max(len(prompt.split()), 1)
    return {
        "promptTokenCount": text_tokens + 258 * len(images),
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": text_tokens}]
        + ([{"modality": "IMAGE", "tokenCount": 258 * len(images)}] if images else []),
    }


def with_provider_metadata(png: bytes) -> bytes:
    """Mark an image as AI-made the way Google does (IPTC digital source type in XMP, a credit
    line), so that clients have provider metadata to keep or strip."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Credit", "Made with Google AI")
    info.add_itxt("XML:com.adobe.xmp", GOOGLE_XMP)
    with Image.open(io.BytesIO(png)) as img:
        buf = io.BytesIO()
        img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _inline_png(data: bytes) -> dict[str, Any]:
    return {"mimeType": "image/png", "data": codec.b64encode(data)}


def _image_parts(
    prompt: str,
    images: list[bytes],
    rules: dict[str, Any],
    config: dict[str, Any],
    shape: tuple[str, str],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The thought parts (a draft, for models that think) and the image part."""
    width, height = _dimensions(*shape)
    seed = config.get("seed")
    salt = hashlib.sha256(b"".join(images)).hexdigest()[:8] if images else ""
    data = with_provider_metadata(render_image(prompt + salt, seed, width, height, "png"))
    thoughts = []
    if rules.get("thinks"):
        draft = render_image("draft " + prompt, seed, width // 2, height // 2, "png")
        thoughts.append({"inlineData": _inline_png(draft), "thought": True})
    return thoughts, {"inlineData": _inline_png(data), "thoughtSignature": "c2lnbmF0dXJl"}


def _generate_content(model: str, body: dict[str, Any]) -> dict[str, Any]:
    rules = MODELS.get(model)
    if rules is None:
        raise APIError(
            404,
            f"models/{model} is not found for API version v1beta, or is not supported for generateContent.",
        )
    prompt, images = _read_parts(body)
    config = body.get("generationConfig") or {}
    shape = _image_settings(model, rules, config)
    modalities = [m.upper() for m in config.get("responseModalities") or ["TEXT"]]
    usage = _prompt_usage(prompt, images)
    reply = {"modelVersion": model, "responseId": uuid.uuid4().hex[:22]}
    if BLOCKED_WORD in prompt:
        usage.update(candidatesTokenCount=0, totalTokenCount=usage["promptTokenCount"])
        candidate = {
            "finishReason": "IMAGE_SAFETY",
            "index": 0,
            "finishMessage": "Unable to show the generated image.",
        }
        return {"candidates": [candidate], "usageMetadata": usage, **reply}
    parts: list[dict[str, Any]] = []
    if "TEXT" in modalities:
        parts.append({"text": f"Here is the image: {prompt[:60]}"})
    image_tokens = 0
    if "IMAGE" in modalities:
        thoughts, image = _image_parts(prompt, images, rules, config, shape)
        parts = [*thoughts, *parts, image]  # thoughts come first, the image last
        image_tokens = rules["sizes"][shape[1]]
    text_out = 8 if "TEXT" in modalities else 0
    usage.update(
        candidatesTokenCount=image_tokens + text_out,
        totalTokenCount=usage["promptTokenCount"] + image_tokens + text_out,
        candidatesTokensDetails=[{"modality": "IMAGE", "tokenCount": image_tokens}]
        + ([{"modality": "TEXT", "tokenCount": text_out}] if text_out else []),
    )
    candidate = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
    if "IMAGE" in modalities and not parts:
        candidate["finishReason"] = "NO_IMAGE"
    return {"candidates": [candidate], "usageMetadata": usage, **reply}


def _predict(model: str, body: dict[str, Any]) -> dict[str, Any]:
    if model not in IMAGEN_MODELS:
        raise APIError(
            404,
            f"models/{model} is not found for API version v1beta, or is not supported for predict.",
        )
    instances = body.get("instances") or [{}]
    prompt = str(instances[0].get("prompt", ""))
    params = body.get("parameters") or {}
    count = int(params.get("sampleCount", 1))
    if not 1 <= count <= 4:
        raise APIError(400, "sampleCount must be between 1 and 4.")
    if BLOCKED_WORD in prompt:
        return {
            "predictions": [
                {
                    "raiFilteredReason": "Your current safety filter threshold filtered out the generated images."
                }
            ]
        }
    width, height = _dimensions(params.get("aspectRatio", "1:1"), "1K")
    predictions = [
        {
            "bytesBase64Encoded": codec.b64encode(render_image(prompt, i, width, height)),
            "mimeType": "image/png",
        }
        for i in range(count)
    ]
    return {"predictions": predictions}


def create_app(state: EmulatorState | None = None) -> Any:
    state = state or EmulatorState()

    async def model_method(request: Request) -> Response:
        try:
            _check_auth(request)
            model, _, method = request.path_params["target"].partition(":")
            try:
                body = await request.json()
            except ValueError:
                raise APIError(400, "Invalid JSON payload received.") from None
            if method == "generateContent":
                return JSONResponse(_generate_content(model, body))
            if method == "predict":
                return JSONResponse(_predict(model, body))
            raise APIError(404, f"Method {method!r} is not found.")
        except APIError as exc:
            return exc.response()

    # The google-genai SDK addresses /v1 by default and /v1beta when asked; both are served.
    routes = [
        Route(f"{path}/models/{{target}}", model_method, methods=["POST"])
        for path in (BASE_PATH, "/v1")
    ]
    return emulator_app(routes, state, error_body)
