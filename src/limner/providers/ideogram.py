"""Ideogram: three wire formats side by side, chosen by the catalog entry's ``wire.api``.

* ``legacy`` (Ideogram 2.0): JSON ``/generate`` with an ``image_request`` object; multipart
  ``/remix``, ``/edit``, ``/upscale``, ``/describe``.
* ``v3`` (Ideogram 3.0): multipart ``/v1/ideogram-v3/{generate,remix,edit,reframe}``.
* ``v2`` (Ideogram 4.x): the action API ``/v2/image/{action}/{model}``; ``?dry_run=true``
  returns a price quote, which limner fetches first and records as the cost (turn it off with
  ``provider_options={"price_quote": False}``). Tool endpoints (upscale, remove background)
  and images asked with ``{"async": True}`` answer a ``generation_id``, polled at
  ``/v2/generations/{id}`` every ``poll_interval`` seconds (default 1) up to ``poll_timeout``.

Masks: black marks the area to change. Unsafe results come back with ``is_image_safe: false``
and no URL; when every image is unsafe that is a content-policy error.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from limner import errors
from limner.catalog import ModelSpec
from limner.flows import Download, Fetched, Flow, Progress, ProviderOutput, Send, Sleep
from limner.http import build_request, map_http_error
from limner.images import encode_mask
from limner.providers._polling import job_failure
from limner.providers.base import Provider, image_from_bytes
from limner.types import ImageInput, ImageRequest, Operation

__all__ = ["IdeogramProvider", "describe"]

Files = list[tuple[str, tuple[str, bytes, str]]]
# Options limner reads itself; everything else in provider_options must be a known wire field.
CONTROL_OPTIONS = {"price_quote", "poll_interval", "poll_timeout"}
WIRE_OPTIONS = {
    "magic_prompt", "color_palette", "style_codes", "style_preset", "resemblance", "detail",
    "resolution", "factor", "enable_copyright_detection", "image_weight", "async",
}  # fmt: skip
PRESET_PALETTES = {"EMBER", "FRESH", "JUNGLE", "MAGIC", "MELON", "MOSAIC", "PASTEL", "ULTRAMARINE"}


def _file(field: str, image: ImageInput) -> tuple[str, tuple[str, bytes, str]]:
    return field, (image.name, image.data, image.media_type)


def _multipart(fields: dict[str, Any], files: Files) -> list[tuple[str, Any]]:
    """Form fields and files as one multipart body (always multipart, even without files).

    Lists (style_codes) become repeated fields; objects travel as JSON strings.
    """
    parts: list[tuple[str, Any]] = []
    for key, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            parts.append((key, (None, item if isinstance(item, str) else json.dumps(item))))
    return [*parts, *files]


def _magic(value: Any, lower: bool) -> str:
    if isinstance(value, bool):
        value = "ON" if value else "OFF"
    text = str(value).upper()
    if text not in {"AUTO", "ON", "OFF"}:
        raise errors.InvalidRequestError(
            f"magic_prompt {value!r} is not AUTO, ON or OFF.", param="provider_options.magic_prompt"
        )
    return text.lower() if lower else text


def _palette(value: Any) -> dict[str, Any]:
    """A colour palette: a preset name, a list of "#RRGGBB", or Ideogram's own members list."""
    if isinstance(value, str):
        if value.upper() not in PRESET_PALETTES:
            raise errors.InvalidRequestError(
                f"Unknown colour palette {value!r}.",
                param="provider_options.color_palette",
                hint=f"Presets: {', '.join(sorted(PRESET_PALETTES))}, or a list of #RRGGBB colours.",
            )
        return {"name": value.upper()}
    members = []
    for item in value:
        members.append(item if isinstance(item, dict) else {"color_hex": str(item)})
    return {"members": members}


def _resolution_for(aspect_ratio: str | None) -> str:
    """A ~1 megapixel WxH (multiples of 32) for an aspect ratio: reframe takes resolutions only."""
    w, _, h = (aspect_ratio or "1:1").partition(":")
    ratio = float(w) / float(h)
    width = round((1024 * 1024 * ratio) ** 0.5 / 32) * 32
    height = round((1024 * 1024 / ratio) ** 0.5 / 32) * 32
    return f"{width}x{height}"


def _image_weight(request: ImageRequest) -> int | None:
    """Ideogram's image_weight (1-100, higher keeps more of the input) from limner's strength."""
    if "image_weight" in request.provider_options:
        return int(request.provider_options["image_weight"])
    if request.strength is None:
        return None
    return max(1, min(100, round((1.0 - request.strength) * 100)))


class IdeogramProvider(Provider):
    name = "ideogram"
    display_name = "Ideogram"
    key_env = "IDEOGRAM_API_KEY"
    default_base_url = "https://api.ideogram.ai"

    def _headers(self) -> dict[str, str]:
        return {"Api-Key": self.api_key} if self.api_key else {}

    # -- field translation ---------------------------------------------------------------------
    def _check_options(self, request: ImageRequest, spec: ModelSpec) -> None:
        unknown = set(request.provider_options) - WIRE_OPTIONS - CONTROL_OPTIONS
        if unknown:
            raise errors.InvalidRequestError(
                f"{spec.ref} does not take provider option(s) {', '.join(sorted(unknown))}.",
                param="provider_options",
                hint=f"Allowed: {', '.join(sorted(WIRE_OPTIONS | CONTROL_OPTIONS))}.",
            )

    def _common(self, request: ImageRequest, spec: ModelSpec, api: str) -> dict[str, Any]:
        """Fields shared by generate, remix and edit, in the wire format's spelling."""
        opts = request.provider_options
        fields: dict[str, Any] = {"prompt": request.prompt}
        if request.n > 1:
            fields["num_images"] = request.n
        if request.seed is not None:
            fields["seed"] = request.seed
        if request.negative_prompt:
            fields["negative_prompt"] = request.negative_prompt
        if request.aspect_ratio:
            w, _, h = request.aspect_ratio.partition(":")
            fields["aspect_ratio"] = f"ASPECT_{w}_{h}" if api == "legacy" else f"{w}x{h}"
        if request.style:
            fields["style_type"] = request.style.upper()
        if "magic_prompt" in opts:
            key = "magic_prompt_option" if api == "legacy" else "magic_prompt"
            fields[key] = _magic(opts["magic_prompt"], lower=api == "v2")
        if "color_palette" in opts:
            fields["color_palette"] = _palette(opts["color_palette"])
        fields.update(self._surface_fields(request, spec, api))
        return fields

    def _surface_fields(self, request: ImageRequest, spec: ModelSpec, api: str) -> dict[str, Any]:
        """Fields only one API surface has: model and speed or quality, style codes, resolution."""
        opts = request.provider_options
        fields: dict[str, Any] = {}
        if api == "legacy":
            fields["model"] = spec.wire.get(
                "turbo_model" if request.quality == "turbo" else "model", "V_2"
            )
        elif api == "v3":
            if request.quality:
                fields["rendering_speed"] = request.quality.upper()
            for key in ("style_codes", "style_preset"):
                if key in opts:
                    fields[key] = opts[key]
        else:
            if request.quality:
                fields["quality"] = request.quality
            for key in ("resolution", "enable_copyright_detection", "async"):
                if key in opts:
                    fields[key] = opts[key]
        return fields

    def _reference_files(self, request: ImageRequest, api: str) -> Files:
        files: Files = []
        for ref in request.references:
            if api == "v2":
                files.append(_file("reference_images", ref.image))
            elif ref.kind == "character":
                files.append(_file("character_reference_images", ref.image))
            else:
                files.append(_file("style_reference_images", ref.image))
        return files

    # -- request building ----------------------------------------------------------------------
    def _route(self, op: Operation, spec: ModelSpec) -> tuple[str, str]:
        """(path, encoding) for an operation; encoding is json, multipart or legacy-multipart."""
        api = spec.wire.get("api", "v3")
        slug = spec.wire.get("model", spec.id)
        if op == Operation.REMOVE_BACKGROUND:
            return "/v2/image/remove-background/ideogram-1", "multipart"
        if op == Operation.UPSCALE:
            return (
                ("/v2/image/upscale/auto", "multipart")
                if api == "v2"
                else ("/upscale", "legacy-multipart")
            )
        if api == "legacy":
            paths = {
                Operation.GENERATE: "/generate",
                Operation.STYLE_REFERENCE: "/generate",
                Operation.EDIT: "/remix",
                Operation.INPAINT: "/edit",
            }
            return paths[op], "json" if op in (
                Operation.GENERATE,
                Operation.STYLE_REFERENCE,
            ) else "legacy-multipart"
        if api == "v3":
            action = {
                Operation.EDIT: "remix",
                Operation.INPAINT: "edit",
                Operation.OUTPAINT: "reframe",
            }.get(op, "generate")
            return f"/v1/ideogram-v3/{action}", "multipart"
        action = "remix" if op == Operation.EDIT else "generate"
        return f"/v2/image/{action}/{slug}", "multipart"

    def _payload(
        self, op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> tuple[str, dict[str, Any], Files]:
        """(path, fields, files) for one call."""
        self._check_options(request, spec)
        api = spec.wire.get("api", "v3")
        path, _ = self._route(op, spec)
        opts = request.provider_options
        files: Files = []
        if op in (Operation.UPSCALE, Operation.REMOVE_BACKGROUND):
            fields: dict[str, Any] = {}
            if op == Operation.UPSCALE and api == "v2":
                fields = {k: opts[k] for k in ("factor",) if k in opts}
            elif op == Operation.UPSCALE:
                upscale: dict[str, Any] = {
                    k: opts[k] for k in ("resemblance", "detail") if k in opts
                }
                if request.prompt:
                    upscale["prompt"] = request.prompt
                if request.seed is not None:
                    upscale["seed"] = request.seed
                fields = {"image_request": upscale}
            field = "image_file" if path == "/upscale" else "image"
            return path, fields, [_file(field, request.images[0])]
        fields = self._common(request, spec, api)
        if op in (Operation.EDIT, Operation.INPAINT, Operation.OUTPAINT):
            field = "image_file" if api == "legacy" else "image"
            files.append(_file(field, request.images[0]))
        if op == Operation.EDIT:
            weight = _image_weight(request)
            if weight is not None:
                fields["image_weight"] = weight
        if op == Operation.INPAINT and request.mask is not None:
            files.append(("mask", ("mask.png", encode_mask(request.mask, "black"), "image/png")))
        if op == Operation.OUTPAINT:
            fields = {
                "resolution": opts.get("resolution")
                or _expanded_size(request)
                or request.size
                or _resolution_for(request.aspect_ratio)
            }
        files.extend(self._reference_files(request, api))
        if api == "legacy" and op in (Operation.EDIT,):
            fields = {"image_request": fields}
        return path, fields, files

    def _http_request(
        self, op: Operation, request: ImageRequest, spec: ModelSpec, *, dry_run: bool = False
    ) -> httpx.Request:
        path, fields, files = self._payload(op, request, spec)
        _, encoding = self._route(op, spec)
        url = f"{self.base_url}{path}"
        params = {"dry_run": "true"} if dry_run else None
        if encoding == "json" and not files:
            body = {"image_request": fields} if spec.wire.get("api") == "legacy" else fields
            return build_request("POST", url, json=body, params=params, headers=self._headers())
        if spec.wire.get("api") == "v2" and not files:
            return build_request("POST", url, json=fields, params=params, headers=self._headers())
        return build_request(
            "POST", url, files=_multipart(fields, files), params=params, headers=self._headers()
        )

    def native_request(
        self, op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> dict[str, Any]:
        path, fields, files = self._payload(op, request, spec)
        _, encoding = self._route(op, spec)
        described = {name: f"<{content[0]}>" for name, content in files}
        if (encoding == "json" or spec.wire.get("api") == "v2") and not files:
            body = {"image_request": fields} if spec.wire.get("api") == "legacy" else fields
            return {"method": "POST", "path": path, "json": body}
        return {"method": "POST", "path": path, "multipart": {**fields, **described}}

    # -- the flow ------------------------------------------------------------------------------
    def _quotes(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> bool:
        return spec.wire.get("api") == "v2" and bool(
            request.provider_options.get("price_quote", True)
        )

    def quote_flow(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> Flow:
        """Ask Ideogram for the price of ``request`` (``dry_run``): nothing is generated."""
        response: httpx.Response = yield Send(self._http_request(op, request, spec, dry_run=True))
        if response.status_code >= 400:
            raise self._error(response)
        quote = response.json()
        return ProviderOutput(
            images=[], cost_usd=int(quote.get("usd_micros", 0)) / 1_000_000, raw={"quote": quote}
        )

    def flow(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> Flow:
        cost: float | None = None
        quote: dict[str, Any] = {}
        if self._quotes(op, request, spec):
            quoted = yield from self.quote_flow(op, request, spec)
            cost, quote = quoted.cost_usd, quoted.raw["quote"]
        response: httpx.Response = yield Send(self._http_request(op, request, spec), retry=True)
        if response.status_code >= 400:
            raise self._error(response)
        body = response.json()
        if "data" not in body and body.get("generation_id"):
            # Accepted asynchronously (tool endpoints always are; images with "async"): poll.
            body = yield from self._poll(str(body["generation_id"]), request)
            if cost is None and body.get("usage_cost_usd_micros") is not None:
                cost = int(body["usage_cost_usd_micros"]) / 1_000_000
        request_id = (
            body.get("generation_id")
            or body.get("request_id")
            or response.headers.get("x-request-id")
        )
        images, withheld = [], 0
        for item in body.get("data") or []:
            if item.get("is_image_safe") is False or not item.get("url"):
                withheld += 1
                continue
            fetched: Fetched = yield Download(item["url"])  # image hosts get no key
            images.append(
                image_from_bytes(
                    fetched.data, seed=item.get("seed"), revised_prompt=item.get("prompt")
                )
            )
        if not images:
            raise errors.ContentPolicyError(
                "ideogram: the result was withheld as unsafe (is_image_safe: false).",
                provider=self.name,
                request_id=request_id,
            )
        warnings = [f"ideogram withheld {withheld} unsafe image(s)."] if withheld else []
        if cost is not None and withheld and quote.get("quantity"):
            warnings.append(
                "The quoted price covers every requested image, including withheld ones."
            )
        return ProviderOutput(
            images=images,
            request_id=request_id,
            warnings=warnings,
            cost_usd=cost,
            raw={"quote": quote},
        )

    def _poll(self, generation_id: str, request: ImageRequest) -> Any:
        """Poll ``/v2/generations/{id}`` until completed or failed; return the completed body."""
        opts = request.provider_options
        interval = float(opts.get("poll_interval", self.options.get("poll_interval", 1.0)))
        timeout = float(opts.get("poll_timeout", self.options.get("poll_timeout", 600.0)))
        started = time.monotonic()
        url = f"{self.base_url}/v2/generations/{generation_id}"
        while True:
            yield Sleep(interval)
            response: httpx.Response = yield Send(
                build_request("GET", url, headers=self._headers())
            )
            if response.status_code >= 400:
                raise self._error(response)
            body = response.json()
            status = body.get("status")
            yield Progress(1.0 if status == "completed" else None, f"ideogram {status}")
            if status == "completed":
                return body
            if status == "failed":
                reason = str(body.get("failure_reason") or "no reason given")
                raise job_failure(
                    self.name, "generation", generation_id, reason, ("safety", "moderat")
                )
            if time.monotonic() - started > timeout:
                raise errors.ProviderTimeoutError(
                    f"ideogram: generation {generation_id} not done within {timeout:g}s.",
                    provider=self.name,
                    request_id=generation_id,
                )

    def describe_flow(self, image: ImageInput, spec: ModelSpec | None = None) -> Flow:
        """Describe ``image`` in words; the descriptions are in ``output.raw["descriptions"]``."""
        version = "V_2" if spec is not None and spec.wire.get("api") == "legacy" else "V_3"
        request = build_request(
            "POST",
            f"{self.base_url}/describe",
            data={"describe_model_version": version},
            files=[_file("image_file", image)],
            headers=self._headers(),
        )
        response: httpx.Response = yield Send(request)
        if response.status_code >= 400:
            raise self._error(response)
        texts = [d.get("text", "") for d in response.json().get("descriptions") or []]
        return ProviderOutput(images=[], raw={"descriptions": texts})

    def _error(self, response: httpx.Response) -> errors.LimnerError:
        try:
            body = response.json()
        except ValueError:
            body = {}
        detail = (
            body.get("detail") or body.get("message") or body.get("error")
            if isinstance(body, dict)
            else None
        )
        message = detail if isinstance(detail, str) else (json.dumps(detail) if detail else None)
        if response.status_code in (400, 422) and message and "safety" in message.lower():
            return errors.ContentPolicyError(
                f"ideogram: {message}", provider=self.name, status=response.status_code
            )
        return map_http_error(self.name, response, message)


def describe(image: Any, *, model: str = "ideogram:ideogram-v3", client: Any = None) -> list[str]:
    """Describe an image (path, bytes or PIL image) with Ideogram; returns the descriptions."""
    from limner.client import Limner
    from limner.http import FlowRunner
    from limner.images import load_image

    owned = client is None
    engine: Limner = client or Limner()
    try:
        spec = engine.resolve(model)
        provider = engine.provider(spec.provider)
        if not isinstance(provider, IdeogramProvider):
            raise errors.InvalidRequestError(f"{spec.ref} is not an Ideogram model.", param="model")
        if not provider.api_key:
            raise IdeogramProvider.missing_key_error()
        runner = FlowRunner(
            engine.http, provider.name, retry=engine.retry, fetcher=engine._fetcher(provider)
        )
        output = runner.run(provider.describe_flow(load_image(image), spec))
        return list(output.raw["descriptions"])
    finally:
        if owned:
            engine.close()


def _expanded_size(request: ImageRequest) -> str | None:
    """The canvas size an ``expand`` request asks for, as Ideogram's reframe resolution."""
    if not request.expand or not request.images:
        return None
    image, pad = request.images[0], request.expand
    width = image.width + pad.get("left", 0) + pad.get("right", 0)
    height = image.height + pad.get("top", 0) + pad.get("bottom", 0)
    return f"{width}x{height}"
