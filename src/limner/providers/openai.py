"""OpenAI Images API: gpt-image models and the legacy DALL-E wire format.

The DALL-E format (``response_format``, ``style``, ``/images/variations``) is kept for
OpenAI-compatible servers after OpenAI retired those models.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx

from limner import codec, errors
from limner.catalog import ModelSpec
from limner.flows import Download, Fetched, Flow, ProviderOutput, Send
from limner.http import build_request, map_http_error
from limner.images import encode_mask
from limner.providers.base import Provider, b64_image, image_from_bytes
from limner.types import ImageRequest, Operation, Usage

__all__ = ["OpenAIProvider"]

POLICY_CODES = {"moderation_blocked", "content_policy_violation"}
# Options a caller may pass through provider_options, by wire format.
GPT_IMAGE_OPTIONS = {"output_compression", "moderation", "user", "input_fidelity", "partial_images"}
DALLE_OPTIONS = {"response_format", "user"}


class OpenAIProvider(Provider):
    name = "openai"
    display_name = "OpenAI"
    key_env = "OPENAI_API_KEY"
    base_url_envs = ("OPENAI_BASE_URL",)
    default_base_url = "https://api.openai.com/v1"

    _headers_extra: ClassVar[dict[str, str]] = {}

    def _headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        org = self.options.get("organization")
        if org:
            headers["OpenAI-Organization"] = org
        return headers

    # -- request building ----------------------------------------------------------------------
    def _common_fields(self, request: ImageRequest, spec: ModelSpec, n: int) -> dict[str, Any]:
        api = spec.wire.get("api", "gpt-image")
        fields: dict[str, Any] = {"model": spec.wire.get("model", spec.id), "n": n}
        if request.size:
            fields["size"] = request.size
        if request.quality:
            fields["quality"] = request.quality
        allowed = GPT_IMAGE_OPTIONS if api == "gpt-image" else DALLE_OPTIONS
        if api == "gpt-image":
            if request.background:
                fields["background"] = request.background
            if request.output_format:
                fields["output_format"] = request.output_format
        else:
            if request.style:
                fields["style"] = request.style
            fields["response_format"] = "b64_json"
        unknown = set(request.provider_options) - allowed - {"organization"}
        if unknown:
            raise errors.InvalidRequestError(
                f"{spec.ref} does not take provider option(s) {', '.join(sorted(unknown))}.",
                param="provider_options",
                hint=f"Allowed: {', '.join(sorted(allowed))}.",
            )
        fields.update({k: v for k, v in request.provider_options.items() if k in allowed})
        return fields

    def native_request(
        self, op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> dict[str, Any]:
        n = min(request.n, spec.max_n)
        fields = self._common_fields(request, spec, n)
        if op == Operation.VARIATION:
            return {
                "method": "POST",
                "path": "/images/variations",
                "multipart": {**fields, "image": "<image>"},
            }
        fields["prompt"] = request.prompt
        if op == Operation.GENERATE:
            return {"method": "POST", "path": "/images/generations", "json": fields}
        files = {
            "image[]" if len(request.images) > 1 else "image": f"<{len(request.images)} image(s)>"
        }
        if request.mask:
            files["mask"] = "<mask, transparent = edit>"
        return {"method": "POST", "path": "/images/edits", "multipart": {**fields, **files}}

    def _build(
        self, op: Operation, request: ImageRequest, spec: ModelSpec, n: int
    ) -> httpx.Request:
        fields = self._common_fields(request, spec, n)
        url = f"{self.base_url}/images/"
        if op == Operation.GENERATE:
            fields["prompt"] = request.prompt
            return build_request("POST", url + "generations", json=fields, headers=self._headers())
        data = {k: str(v) for k, v in fields.items()}
        files: list[tuple[str, tuple[str, bytes, str]]] = []
        if op == Operation.VARIATION:
            image = request.images[0]
            files.append(("image", (image.name, image.data, image.media_type)))
            return build_request(
                "POST", url + "variations", data=data, files=files, headers=self._headers()
            )
        data["prompt"] = request.prompt
        images = [*request.images, *(r.image for r in request.references)]
        key = "image[]" if len(images) > 1 else "image"
        files.extend((key, (img.name, img.data, img.media_type)) for img in images)
        if request.mask:
            files.append(("mask", ("mask.png", encode_mask(request.mask, "alpha"), "image/png")))
        return build_request("POST", url + "edits", data=data, files=files, headers=self._headers())

    # -- the flow ------------------------------------------------------------------------------
    def flow(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> Flow:
        response: httpx.Response = yield Send(self._build(op, request, spec, request.n))
        request_id = response.headers.get("x-request-id")
        if response.status_code >= 400:
            raise self._error(response, request_id)
        body = codec.json_loads_lifting(response.content, "b64_json")
        images = []
        for item in body.get("data") or []:
            revised = item.get("revised_prompt")
            if item.get("b64_json"):
                images.append(b64_image(item["b64_json"], revised_prompt=revised))
            elif item.get("url"):
                headers = self._headers() if self.owns_url(item["url"]) else {}
                fetched: Fetched = yield Download(item["url"], headers)
                images.append(image_from_bytes(fetched.data, revised_prompt=revised))
        if not images:
            raise errors.ContentPolicyError(
                "openai: the response held no image.", provider=self.name, request_id=request_id
            )
        return ProviderOutput(images=images, usage=_usage(body.get("usage")), request_id=request_id)

    def _error(self, response: httpx.Response, request_id: str | None) -> errors.LimnerError:
        try:
            err = response.json().get("error") or {}
        except ValueError:
            err = {}
        message = err.get("message") if isinstance(err, dict) else None
        code = err.get("code") if isinstance(err, dict) else None
        if code in POLICY_CODES or (
            isinstance(err, dict) and err.get("type") == "image_generation_user_error"
        ):
            return errors.ContentPolicyError(
                f"openai: {message or 'refused by the safety system'}",
                provider=self.name,
                status=response.status_code,
                request_id=request_id,
            )
        if response.status_code == 429 and code == "insufficient_quota":
            return errors.InsufficientCreditsError(
                f"openai: {message}", provider=self.name, status=429, request_id=request_id
            )
        return map_http_error(self.name, response, message, request_id=request_id)


def _usage(raw: dict[str, Any] | None) -> Usage:
    if not raw:
        return Usage()
    details_in = raw.get("input_tokens_details") or {}
    details_out = raw.get("output_tokens_details") or {}
    return Usage(
        input_tokens=raw.get("input_tokens"),
        output_tokens=raw.get("output_tokens"),
        input_text_tokens=details_in.get("text_tokens"),
        input_image_tokens=details_in.get("image_tokens"),
        output_image_tokens=details_out.get("image_tokens", raw.get("output_tokens")),
        raw=raw,
    )
