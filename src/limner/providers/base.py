"""The Provider protocol: one class per provider, describing its calls as I/O-free flows."""

from __future__ import annotations

import io
import json
import os
import struct
from typing import Any, ClassVar

from limner import codec, errors
from limner.catalog import ModelSpec
from limner.config import KeyStore, UserConfig, base_url_env_name
from limner.fetch import is_loopback_url
from limner.flows import Flow
from limner.types import GeneratedImage, ImageRequest, Operation

__all__ = ["Provider", "image_from_bytes"]


class Provider:
    """Subclass this, set the class attributes and implement :meth:`flow`.

    Core validates the request against the catalog before :meth:`flow` runs, so a flow only
    translates the request to its wire format and parses the answer.
    """

    name: ClassVar[str]
    display_name: ClassVar[str] = ""
    key_env: ClassVar[str | None] = None
    extra_key_envs: ClassVar[tuple[str, ...]] = ()
    base_url_envs: ClassVar[tuple[str, ...]] = ()
    default_base_url: ClassVar[str] = ""
    needs_key: ClassVar[bool] = True
    # Where a retired model may still be called: any base URL but the provider's own default.
    serves_retired_with_custom_base_url: ClassVar[bool] = True

    def __init__(self, *, api_key: str | None = None, base_url: str | None = None, **options: Any):
        self.api_key = api_key
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        self.options = options

    # -- configuration -------------------------------------------------------------------------
    @classmethod
    def resolve_base_url(cls, explicit: str | None = None, config: UserConfig | None = None) -> str:
        if explicit:
            return explicit
        for env in (base_url_env_name(cls.name), *cls.base_url_envs):
            if os.environ.get(env):
                return os.environ[env]
        configured = (config.get("base_urls", {}) if config else {}).get(cls.name)
        return configured or cls.default_base_url

    @classmethod
    def resolve_key(cls, explicit: str | None = None, keys: KeyStore | None = None) -> str | None:
        """Explicit key, then the env var, then ``keys.json``."""
        if explicit:
            return explicit
        if cls.key_env and os.environ.get(cls.key_env):
            return os.environ[cls.key_env]
        stored = (keys or KeyStore()).get(cls.name)
        return stored

    @classmethod
    def missing_key_error(cls) -> errors.MissingKeyError:
        env = cls.key_env or "the provider's key variable"
        return errors.MissingKeyError(
            f"No API key for {cls.name}.",
            hint=f"Set {env} or run `limner keys set {cls.name}`.",
        )

    @classmethod
    def catalog_entries(cls) -> list[ModelSpec]:
        """Models a plugin provider adds to the catalog (built-ins ship theirs as data files)."""
        return []

    @property
    def is_local_endpoint(self) -> bool:
        return is_loopback_url(self.base_url)

    @property
    def uses_custom_base_url(self) -> bool:
        return self.base_url != self.default_base_url.rstrip("/")

    def owns_url(self, url: str) -> bool:
        """Whether ``url`` is on this provider's API host, so that sending the key there is safe."""
        from urllib.parse import urlsplit

        return urlsplit(url).netloc == urlsplit(self.base_url).netloc

    def model_revision(self, spec: ModelSpec) -> str | None:
        """What identifies the weights behind ``spec`` when they can change under one name
        (a local folder); it joins the cache key so new weights never return stale images."""
        return None

    # -- the call ------------------------------------------------------------------------------
    def flow(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> Flow:
        raise NotImplementedError

    def resume_flow(
        self, op: Operation, request: ImageRequest, spec: ModelSpec, handle: str
    ) -> Flow | None:
        """A flow that follows a job :meth:`flow` already submitted (the ``handle`` of its
        ``Submitted`` step) to its result without submitting again, or None when this
        provider or request cannot be resumed (synchronous APIs)."""
        return None

    def native_request(
        self, op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> dict[str, Any]:
        """The provider-native request that :meth:`flow` would send, for ``--dry-run``."""
        raise NotImplementedError

    # -- resume handles --------------------------------------------------------------------------
    @staticmethod
    def encode_handle(**fields: Any) -> str:
        """A ``Submitted`` handle: the fields polling needs, as compact JSON (never the key)."""
        return json.dumps(fields, separators=(",", ":"), sort_keys=True)

    def decode_handle(self, handle: str, required: tuple[str, ...] = ("id",)) -> dict[str, Any]:
        """The fields of a handle from :meth:`encode_handle`; a clear error when it is not one."""
        try:
            fields = json.loads(handle)
        except ValueError:
            fields = None
        missing = [k for k in required if not isinstance(fields, dict) or not fields.get(k)]
        if not isinstance(fields, dict) or missing:
            raise errors.InvalidRequestError(
                f"{self.name}: {handle[:80]!r} is not a submission handle of this provider"
                + (f" (missing {', '.join(missing)})." if isinstance(fields, dict) else "."),
                param="resume_handle",
                hint="Pass the handle recorded from the run's Submitted step unchanged.",
            )
        return fields


def image_from_bytes(
    data: bytes, *, seed: int | None = None, revised_prompt: str | None = None
) -> GeneratedImage:
    """Build a :class:`GeneratedImage`, reading size and type from the bytes themselves."""
    size = _png_size(data)
    if size is not None:  # most providers answer PNG: no need for an image library
        return GeneratedImage(
            data=data, media_type="image/png", width=size[0], height=size[1], seed=seed,
            revised_prompt=revised_prompt,
        )  # fmt: skip
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            media = Image.MIME.get(img.format or "PNG", "image/png")
    except (UnidentifiedImageError, OSError) as exc:
        if data.lstrip()[:5] in (b"<?xml", b"<svg ") or b"<svg" in data[:512]:
            return GeneratedImage(
                data=data, media_type="image/svg+xml", width=0, height=0, seed=seed
            )
        raise errors.ProviderError(
            f"The provider returned data that is not an image ({exc})."
        ) from exc
    return GeneratedImage(
        data=data,
        media_type=media,
        width=width,
        height=height,
        seed=seed,
        revised_prompt=revised_prompt,
    )


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's header chunk (which the format requires first), or None
    when ``data`` does not start like a PNG with a sane size."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return (width, height) if 0 < width < 2**31 and 0 < height < 2**31 else None


def b64_image(b64: str | bytes | memoryview, **kw: Any) -> GeneratedImage:
    return image_from_bytes(codec.b64decode(b64), **kw)
