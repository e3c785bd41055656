"""Image inputs from clients: uploads, base64 strings and URLs, each checked and re-encoded.

Uploads are read with a size cap; every image goes through :func:`limner.images.load_image`
(format allowlist, pixel cap before decoding, re-encoded, metadata dropped). URLs go through the
one SSRF-safe fetcher, restricted to ports 80 and 443 and three redirects.
"""

from __future__ import annotations

import asyncio
import binascii

import httpx
from starlette.datastructures import UploadFile

from limner import codec, errors
from limner.fetch import SafeFetcher
from limner.images import load_image
from limner.types import ImageInput

__all__ = [
    "ASPECT_PATTERN",
    "SIZE_PATTERN",
    "image_from_b64",
    "image_from_upload",
    "image_from_url",
    "image_from_value",
]

# Shapes checked at the edge, so that malformed sizes get a 400 naming the field.
SIZE_PATTERN = r"^\s*(auto|[1-9]\d{0,4}\s*[xX×]\s*[1-9]\d{0,4})\s*$"
ASPECT_PATTERN = r"^[1-9]\d{0,2}(\.\d{1,3})?:[1-9]\d{0,2}(\.\d{1,3})?$"
URL_FETCH_TIMEOUT_S = 15.0
URL_MAX_REDIRECTS = 3


def _load(data: bytes, name: str) -> ImageInput:
    return load_image(data, name=name)


async def image_from_upload(upload: UploadFile, *, name: str, max_bytes: int) -> ImageInput:
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise errors.InputImageError(
            f"{name} is larger than {max_bytes // 2**20} MiB.", hint="Send a smaller image."
        )
    if not data:
        raise errors.InputImageError(f"{name} is empty.")
    return await asyncio.to_thread(_load, data, upload.filename or name)


def image_from_b64(value: str, *, name: str, max_bytes: int) -> ImageInput:
    text = value.strip()
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > max_bytes * 4 // 3 + 8:
        raise errors.InputImageError(f"{name} is larger than {max_bytes // 2**20} MiB.")
    try:
        data = codec.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.InputImageError(
            f"{name} is not valid base64.", hint="Send the image as base64 or a data: URL."
        ) from exc
    return _load(data, name)


async def image_from_url(
    url: str, *, name: str, max_bytes: int, client: httpx.AsyncClient
) -> ImageInput:
    fetcher = SafeFetcher(
        max_bytes=max_bytes, max_redirects=URL_MAX_REDIRECTS, timeout=URL_FETCH_TIMEOUT_S,
        allowed_ports=frozenset({80, 443}),
    )  # fmt: skip
    try:
        fetched = await fetcher.afetch(client, url)
    except errors.ProviderError as exc:
        # A failed download of the client's URL is the client's input problem, not ours.
        raise errors.InputImageError(f"{name}: {exc.message}") from exc
    except httpx.HTTPError as exc:
        raise errors.InputImageError(
            f"{name}: could not download {url!r} ({type(exc).__name__})."
        ) from exc
    return await asyncio.to_thread(_load, fetched.data, name)


async def image_from_value(
    value: str, *, name: str, max_bytes: int, client: httpx.AsyncClient
) -> ImageInput:
    """A JSON image field: an http(s) URL, a data: URL or bare base64."""
    if value.startswith(("http://", "https://")):
        return await image_from_url(value, name=name, max_bytes=max_bytes, client=client)
    return await asyncio.to_thread(lambda: image_from_b64(value, name=name, max_bytes=max_bytes))
