"""remove.bg: background removal over HTTP (``X-Api-Key``, multipart ``image_file``, ``size``).

The answer to a successful call is the cut-out image itself; ``X-Credits-Charged`` says what it
cost. Errors come as ``{"errors": [{"title": ..., "code": ...}]}``.
"""

from __future__ import annotations

from typing import Any

import httpx

from limner import errors
from limner.catalog import ModelSpec
from limner.flows import Flow, ProviderOutput, Send
from limner.http import build_request, map_http_error
from limner.providers.base import Provider, image_from_bytes
from limner.types import ImageRequest, Operation, Usage

__all__ = ["RemoveBgProvider"]

# provider_options a caller may pass, sent as form fields.
OPTIONS = {"size", "type", "type_level", "format", "roi", "crop", "crop_margin", "scale", "position",
           "channels", "add_shadow", "semitransparency", "bg_color"}  # fmt: skip


class RemoveBgProvider(Provider):
    name = "removebg"
    display_name = "remove.bg"
    key_env = "REMOVEBG_API_KEY"
    default_base_url = "https://api.remove.bg/v1.0"

    def _fields(self, request: ImageRequest, spec: ModelSpec) -> dict[str, str]:
        unknown = set(request.provider_options) - OPTIONS
        if unknown:
            raise errors.InvalidRequestError(
                f"{spec.ref} does not take provider option(s) {', '.join(sorted(unknown))}.",
                param="provider_options",
                hint=f"Allowed: {', '.join(sorted(OPTIONS))}.",
            )
        fields = {"size": "auto", "format": "png"}
        fields.update({k: str(v) for k, v in request.provider_options.items()})
        sizes = spec.wire.get("sizes") or []
        if sizes and fields["size"] not in sizes:
            raise errors.InvalidRequestError(
                f"remove.bg size {fields['size']!r} is not one of {', '.join(sizes)}.", param="size"
            )
        return fields

    def native_request(
        self, op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> dict[str, Any]:
        return {
            "method": "POST",
            "path": "/removebg",
            "headers": {"X-Api-Key": "<key>"},
            "multipart": {**self._fields(request, spec), "image_file": "<image>"},
        }

    def flow(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> Flow:
        if op != Operation.REMOVE_BACKGROUND:
            raise errors.UnsupportedOperationError(f"{spec.ref} can only remove backgrounds.")
        image = request.images[0]
        http_request = build_request(
            "POST",
            f"{self.base_url}/removebg",
            data=self._fields(request, spec),
            files=[("image_file", (image.name, image.data, image.media_type))],
            headers={"X-Api-Key": self.api_key or "", "Accept": "image/*, application/json"},
        )
        response: httpx.Response = yield Send(http_request)
        request_id = response.headers.get("x-request-id")
        if response.status_code >= 400:
            raise self._error(response, request_id)
        credits = _float(response.headers.get("x-credits-charged"))
        result = image_from_bytes(response.content)
        return ProviderOutput(
            images=[result],
            usage=Usage(credits=credits),
            request_id=request_id,
        )

    def _error(self, response: httpx.Response, request_id: str | None) -> errors.LimnerError:
        try:
            items = response.json().get("errors") or []
        except ValueError:
            items = []
        first = items[0] if items and isinstance(items[0], dict) else {}
        message = first.get("title") or first.get("detail")
        if response.status_code == 400 and first.get("code") == "unknown_foreground":
            return errors.ProviderRejectedError(
                f"removebg: {message or 'no foreground found'}", status=400, provider=self.name
            )
        return map_http_error(self.name, response, message, request_id=request_id)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
