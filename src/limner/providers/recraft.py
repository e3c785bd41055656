"""Recraft: raster and vector (SVG) models over an OpenAI-like API.

Generation is JSON (``/images/generations``); image operations are multipart, one endpoint
each. Operations limner has no verb for are chosen with ``provider_options={"action": ...}``:

    edit     image-to-image (default), replace-background, generate-background (mask marks
             the background to paint), erase-region (mask marks what to erase), vectorize,
             remove-background
    upscale  crisp (default), creative
    inpaint  /images/inpaint (white marks the area); generate-background and erase-region
             too, since a mask makes an edit an inpaint

Vectorize, erase-region and remove-background take no prompt; the catalog says so
(``promptless_options`` in recraft.toml), which is what lets validation pass an empty prompt.

Responses report ``credits`` (1,000 units = 1 USD), which limner records as the cost.
"""

from __future__ import annotations

from typing import Any

import httpx

from limner import codec, errors
from limner.catalog import ModelSpec
from limner.flows import Download, Fetched, Flow, ProviderOutput, Send
from limner.http import build_request, map_http_error
from limner.images import encode_mask
from limner.providers.base import Provider, b64_image, image_from_bytes
from limner.types import ImageRequest, Operation

__all__ = ["ACTIONS", "RecraftProvider"]

UNITS_PER_USD = 1000.0
# (operation, action) -> (endpoint, whether it takes a prompt, whether it needs a mask)
ACTIONS: dict[tuple[Operation, str], tuple[str, bool, bool]] = {
    (Operation.EDIT, "image-to-image"): ("imageToImage", True, False),
    (Operation.EDIT, "replace-background"): ("replaceBackground", True, False),
    (Operation.EDIT, "generate-background"): ("generateBackground", True, True),
    (Operation.EDIT, "erase-region"): ("eraseRegion", False, True),
    (Operation.EDIT, "vectorize"): ("vectorize", False, False),
    (Operation.EDIT, "remove-background"): ("removeBackground", False, False),
    (Operation.INPAINT, "inpaint"): ("inpaint", True, True),
    (Operation.INPAINT, "generate-background"): ("generateBackground", True, True),
    (Operation.INPAINT, "erase-region"): ("eraseRegion", False, True),
    (Operation.UPSCALE, "crisp"): ("crispUpscale", False, False),
    (Operation.UPSCALE, "creative"): ("creativeUpscale", False, False),
    (Operation.REMOVE_BACKGROUND, "remove-background"): ("removeBackground", False, False),
}
DEFAULT_ACTION = {
    Operation.EDIT: "image-to-image",
    Operation.INPAINT: "inpaint",
    Operation.UPSCALE: "crisp",
    Operation.REMOVE_BACKGROUND: "remove-background",
}
# Endpoints that work on the image alone: no model, style or size fields.
UTILITY_ENDPOINTS = {
    "vectorize",
    "crispUpscale",
    "creativeUpscale",
    "removeBackground",
    "eraseRegion",
}
PASSTHROUGH = {
    "substyle",
    "style_id",
    "controls",
    "text_layout",
    "artistic_level",
    "colors",
    "background_color",
    "no_text",
}
CONTROL_KEYS = {"artistic_level", "colors", "background_color", "no_text"}
POLICY_CODES = {"nsfw_content", "content_moderation", "prompt_nsfw"}


class RecraftProvider(Provider):
    name = "recraft"
    display_name = "Recraft"
    key_env = "RECRAFT_API_TOKEN"
    default_base_url = "https://external.api.recraft.ai/v1"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    # -- request building ----------------------------------------------------------------------
    def _action(self, op: Operation, request: ImageRequest) -> tuple[str, bool, bool]:
        name = str(request.provider_options.get("action", DEFAULT_ACTION.get(op, "")))
        entry = ACTIONS.get((op, name))
        if entry is None:
            valid = sorted(a for (o, a) in ACTIONS if o == op)
            raise errors.InvalidRequestError(
                f"recraft cannot {op.value} with action {name!r}.",
                param="provider_options.action",
                hint=f"Actions for {op.value}: {', '.join(valid) or 'none'}.",
            )
        if entry[1] and not request.prompt.strip():
            promptless = [a for (o, a), e in ACTIONS.items() if o == op and not e[1]]
            raise errors.InvalidRequestError(
                f"recraft action {name!r} needs a prompt.",
                param="prompt",
                hint=f"Describe the result, or use an action that takes none: {', '.join(promptless)}.",
            )
        if entry[2] and request.mask is None:
            raise errors.InvalidRequestError(f"recraft action {name!r} needs a mask.", param="mask")
        if not entry[2] and request.mask is not None:
            raise errors.InvalidRequestError(
                f"recraft action {name!r} takes no mask.",
                param="mask",
                hint="Use inpaint, or action generate-background or erase-region.",
            )
        return entry

    def _fields(self, request: ImageRequest, spec: ModelSpec, with_prompt: bool) -> dict[str, Any]:
        fields: dict[str, Any] = {"response_format": "url"}
        if with_prompt:
            fields.update(prompt=request.prompt, model=spec.wire.get("model", spec.id), n=request.n)
            if request.style:
                fields["style"] = request.style
            if request.size:
                fields["size"] = request.size
            if request.negative_prompt:
                fields["negative_prompt"] = request.negative_prompt
            if request.seed is not None:
                fields["random_seed"] = request.seed
        unknown = set(request.provider_options) - PASSTHROUGH - {"action"}
        if unknown:
            raise errors.InvalidRequestError(
                f"{spec.ref} does not take provider option(s) {', '.join(sorted(unknown))}.",
                param="provider_options",
                hint=f"Allowed: action, {', '.join(sorted(PASSTHROUGH))}.",
            )
        controls = dict(request.provider_options.get("controls") or {})
        for key in CONTROL_KEYS & set(request.provider_options):
            value = request.provider_options[key]
            if key == "colors":
                value = [{"rgb": _rgb(c)} for c in value]
            elif key == "background_color":
                value = {"rgb": _rgb(value)}
            controls[key] = value
        if controls:
            fields["controls"] = controls
        fields.update(
            {
                k: v
                for k, v in request.provider_options.items()
                if k in PASSTHROUGH - CONTROL_KEYS - {"controls"}
            }
        )
        return fields

    def native_request(
        self, op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> dict[str, Any]:
        if op == Operation.GENERATE:
            return {
                "method": "POST",
                "path": "/images/generations",
                "json": self._fields(request, spec, True),
            }
        endpoint, takes_prompt, needs_mask = self._action(op, request)
        fields = self._fields(request, spec, takes_prompt and endpoint not in UTILITY_ENDPOINTS)
        files = {"image": "<image>", **({"mask": "<mask, white = area>"} if needs_mask else {})}
        return {"method": "POST", "path": f"/images/{endpoint}", "multipart": {**fields, **files}}

    def _build(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> httpx.Request:
        if op == Operation.GENERATE:
            body = self._fields(request, spec, True)
            return build_request(
                "POST", f"{self.base_url}/images/generations", json=body, headers=self._headers()
            )
        endpoint, takes_prompt, needs_mask = self._action(op, request)
        fields = self._fields(request, spec, takes_prompt and endpoint not in UTILITY_ENDPOINTS)
        if endpoint == "imageToImage" and request.strength is not None:
            fields["strength"] = request.strength
        data = {k: v if isinstance(v, str) else _json(v) for k, v in fields.items()}
        image = request.images[0]
        files = [("image", (image.name, image.data, image.media_type))]
        if needs_mask and request.mask is not None:
            files.append(("mask", ("mask.png", encode_mask(request.mask, "white"), "image/png")))
        return build_request(
            "POST",
            f"{self.base_url}/images/{endpoint}",
            data=data,
            files=files,
            headers=self._headers(),
        )

    # -- the flow ------------------------------------------------------------------------------
    def flow(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> Flow:
        warnings = []
        if op != Operation.GENERATE and request.prompt.strip() and not self._action(op, request)[1]:
            action = request.provider_options.get("action", DEFAULT_ACTION.get(op))
            warnings.append(f"recraft action {action!r} takes no prompt: the prompt was not sent.")
        response: httpx.Response = yield Send(self._build(op, request, spec))
        if response.status_code >= 400:
            raise self._error(response)
        body = codec.json_loads_lifting(response.content, "b64_json")
        items = body.get("data") or ([body["image"]] if body.get("image") else [])
        images = []
        for item in items:
            if item.get("b64_json"):
                images.append(b64_image(item["b64_json"]))
            elif item.get("url"):
                # Result URLs are public storage links: the key never travels with downloads.
                fetched: Fetched = yield Download(item["url"])
                images.append(image_from_bytes(fetched.data))
        if not images:
            raise errors.ProviderError("recraft: the response held no image.", provider=self.name)
        credits = body.get("credits")
        cost = float(credits) / UNITS_PER_USD if isinstance(credits, (int, float)) else None
        request_id = ",".join(str(i["image_id"]) for i in items if i.get("image_id")) or None
        return ProviderOutput(
            images=images,
            cost_usd=cost,
            request_id=request_id,
            warnings=warnings,
            raw={"credits": credits},
        )

    def _error(self, response: httpx.Response) -> errors.LimnerError:
        try:
            body = response.json()
        except ValueError:
            body = {}
        code = body.get("code") if isinstance(body, dict) else None
        message = (body.get("message") or body.get("detail")) if isinstance(body, dict) else None
        if code in POLICY_CODES:
            return errors.ContentPolicyError(
                f"recraft: {message or 'refused by the content filter'}",
                provider=self.name,
                status=response.status_code,
            )
        return map_http_error(
            self.name, response, f"{message} ({code})" if code and message else message
        )


def _rgb(value: Any) -> list[int]:
    """A colour as Recraft's [r, g, b]: from "#rrggbb" or an [r, g, b] list."""
    if isinstance(value, str):
        text = value.lstrip("#")
        if len(text) != 6:
            raise errors.InvalidRequestError(
                f"Colour {value!r} is not #RRGGBB.", param="provider_options.colors"
            )
        return [int(text[i : i + 2], 16) for i in (0, 2, 4)]
    return [int(v) for v in value]


def _json(value: Any) -> str:
    import json

    return json.dumps(value)
