"""limner: one typed interface over image-generation providers and a local diffusers engine.

import limner
result = limner.generate("a lighthouse at dawn", model="openai:gpt-image-2", size="1024x1024")
result.images[0].save("lighthouse.png")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from limner.client import Limner
    from limner.errors import (
        ContentPolicyError,
        InputImageError,
        InvalidRequestError,
        LimnerError,
        MissingKeyError,
        PolicyError,
        ProviderError,
        RateLimitError,
        UnknownModelError,
        UserError,
    )
    from limner.types import GeneratedImage, ImageInput, ImageRequest, Operation, Result, Usage

# Public names load on first use, so that `import limner` (and `limner --help`) stays fast.
_LAZY = {
    "Limner": "limner.client",
    **{name: "limner.errors" for name in (
        "ContentPolicyError", "InputImageError", "InvalidRequestError", "LimnerError",
        "MissingKeyError", "PolicyError", "ProviderError", "RateLimitError",
        "UnknownModelError", "UserError",
    )},
    **{name: "limner.types" for name in (
        "GeneratedImage", "ImageInput", "ImageRequest", "Operation", "Result", "Usage",
    )},
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'limner' has no attribute {name!r}")


__all__ = [
    "ContentPolicyError",
    "GeneratedImage",
    "ImageInput",
    "ImageRequest",
    "InputImageError",
    "InvalidRequestError",
    "Limner",
    "LimnerError",
    "MissingKeyError",
    "Operation",
    "PolicyError",
    "ProviderError",
    "RateLimitError",
    "Result",
    "UnknownModelError",
    "Usage",
    "UserError",
    "aedit",
    "agenerate",
    "avariations",
    "build_request",
    "edit",
    "generate",
    "variations",
]

__version__ = "0.1.0"

_CLIENT_ARGS = {
    "home",
    "keys",
    "base_urls",
    "http_client",
    "async_http_client",
    "deadline_s",
    "commercial",
    "guards",
}


def _split(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], bool]:
    client_args = {k: params.pop(k) for k in list(params) if k in _CLIENT_ARGS}
    use_cache = params.pop("use_cache", True)
    return client_args, params, use_cache


def _client(**client_args: Any) -> Limner:
    from limner.client import Limner

    return Limner(**client_args)


def build_request(
    op: Operation,
    prompt: str,
    model: str | None,
    images: list[Any],
    mask: Any,
    params: dict[str, Any],
) -> ImageRequest:
    from pydantic import ValidationError

    from limner.errors import InvalidRequestError
    from limner.images import load_image
    from limner.types import ImageRequest

    loaded = [load_image(img) for img in images]
    mask_input = load_image(mask, name="mask.png") if mask is not None else None
    try:
        return ImageRequest(prompt=prompt, model=model, images=loaded, mask=mask_input, **params)
    except ValidationError as exc:  # a typed field given the wrong value, from Python callers
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise InvalidRequestError(f"{field}: {first['msg']}.", param=field) from None


def _op_for_edit(mask: Any) -> Operation:
    from limner.types import Operation

    return Operation.INPAINT if mask is not None else Operation.EDIT


def generate(prompt: str, *, model: str | None = None, **params: Any) -> Result:
    """Make images from a prompt. ``params`` are :class:`ImageRequest` fields."""
    from limner.types import Operation

    client_args, params, use_cache = _split(params)
    with _client(**client_args) as client:
        return client.run(
            Operation.GENERATE,
            build_request(Operation.GENERATE, prompt, model, [], None, params),
            use_cache=use_cache,
        )


async def agenerate(prompt: str, *, model: str | None = None, **params: Any) -> Result:
    from limner.types import Operation

    client_args, params, use_cache = _split(params)
    with _client(**client_args) as client:
        request = build_request(Operation.GENERATE, prompt, model, [], None, params)
        return await client.arun(Operation.GENERATE, request, use_cache=use_cache)


def edit(
    image: Any, prompt: str, *, mask: Any = None, model: str | None = None, **params: Any
) -> Result:
    """Edit ``image`` (a path, bytes or PIL image; or a list of them) as the prompt says.

    With ``mask``, only the marked area changes: white marks it, or transparent pixels do.
    """
    client_args, params, use_cache = _split(params)
    images = image if isinstance(image, list) else [image]
    op = _op_for_edit(mask)
    with _client(**client_args) as client:
        return client.run(
            op, build_request(op, prompt, model, images, mask, params), use_cache=use_cache
        )


async def aedit(
    image: Any, prompt: str, *, mask: Any = None, model: str | None = None, **params: Any
) -> Result:
    client_args, params, use_cache = _split(params)
    images = image if isinstance(image, list) else [image]
    op = _op_for_edit(mask)
    with _client(**client_args) as client:
        return await client.arun(
            op, build_request(op, prompt, model, images, mask, params), use_cache=use_cache
        )


def variations(image: Any, *, model: str | None = None, **params: Any) -> Result:
    """Make variations of ``image``."""
    from limner.types import Operation

    client_args, params, use_cache = _split(params)
    with _client(**client_args) as client:
        request = build_request(Operation.VARIATION, "", model, [image], None, params)
        return client.run(Operation.VARIATION, request, use_cache=use_cache)


async def avariations(image: Any, *, model: str | None = None, **params: Any) -> Result:
    from limner.types import Operation

    client_args, params, use_cache = _split(params)
    with _client(**client_args) as client:
        request = build_request(Operation.VARIATION, "", model, [image], None, params)
        return await client.arun(Operation.VARIATION, request, use_cache=use_cache)
