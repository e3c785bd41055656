"""fal.ai: the queue API (default) and the synchronous run API.

Queue: ``POST https://queue.fal.run/{model_id}`` answers ``{request_id, status_url, response_url,
cancel_url}``. Those URLs carry only ``{owner}/{app}`` of the model id (fal truncates
``fal-ai/flux/dev/image-to-image`` to ``fal-ai/flux``), so the flow uses them as given rather
than building its own. ``GET status_url?logs=1`` answers 202 while ``IN_QUEUE`` (with
``queue_position``) or ``IN_PROGRESS`` (with logs) and 200 once ``COMPLETED``; then
``GET response_url`` returns the model's output. At limner's deadline the flow sends
``PUT cancel_url``. Provider option ``mode="sync"`` posts to ``https://fal.run/{model_id}``
instead (one request, no queue; option ``sync_base_url`` overrides that host).
A queued request is announced with ``Submitted`` (handle: its id and queue URLs), so that
``resume_flow`` can follow it after a crash; sync mode has nothing to resume.

Per-model input names live in the catalog's ``wire`` table: ``endpoints`` (operation ->
endpoint), ``size_mode`` (``image_size`` or ``aspect_ratio``), ``image_field`` /
``images_field`` / ``control_field``, ``mask_field``, ``n_field``, ``steps_field``,
``guidance_field``, ``strength_field``.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from limner import codec, errors
from limner.catalog import ModelSpec
from limner.flows import (
    DeadlineExceeded,
    Download,
    Fetched,
    Flow,
    Progress,
    ProviderOutput,
    Send,
    Submitted,
)
from limner.http import build_request, map_http_error
from limner.images import encode_mask
from limner.providers._polling import PollSettings, data_url, error_detail, poll, wire_options
from limner.providers.base import Provider, image_from_bytes
from limner.types import GeneratedImage, ImageRequest, Operation, Usage

__all__ = ["FalProvider"]

IMAGE_SIZE_ENUMS = {
    "1:1": "square_hd",
    "4:3": "landscape_4_3",
    "16:9": "landscape_16_9",
    "3:4": "portrait_4_3",
    "9:16": "portrait_16_9",
}
EXCHANGE_OPTIONS = frozenset({"mode", "sync_base_url", "start_timeout"})


class FalProvider(Provider):
    name = "fal"
    display_name = "fal.ai"
    key_env = "FAL_KEY"
    default_base_url = "https://queue.fal.run"
    # How often to poll by default (provider options override).
    poll_defaults: ClassVar[dict[str, float]] = {"poll_interval": 0.25, "poll_max_interval": 2.0}

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Key {self.api_key}"} if self.api_key else {}

    def sync_base_url(self, request: ImageRequest) -> str:
        """``https://fal.run`` for ``https://queue.fal.run``; an emulator's ``/run`` for its ``/queue``."""
        explicit = {**self.options, **request.provider_options}.get("sync_base_url")
        if explicit:
            return str(explicit).rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.netloc.startswith("queue."):
            return urlunsplit(parts._replace(netloc=parts.netloc[len("queue.") :]))
        if parts.path.endswith("/queue"):
            return urlunsplit(parts._replace(path=parts.path[: -len("/queue")] + "/run"))
        return self.base_url

    # -- request building ----------------------------------------------------------------------
    def endpoint(self, op: Operation, spec: ModelSpec, request: ImageRequest | None = None) -> str:
        endpoints: dict[str, str] = spec.wire.get("endpoints", {})
        if op == Operation.GENERATE and request is not None and request.references:
            # Text-to-image endpoints take no images: references go to the edit endpoint.
            return (
                endpoints.get("style-reference")
                or endpoints.get("edit")
                or endpoints.get("generate")
                or spec.id
            )
        return endpoints.get(op.value) or endpoints.get("generate") or spec.id

    def _input(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> dict[str, Any]:
        wire = spec.wire
        fields: dict[str, Any] = {}
        if request.prompt:
            fields["prompt"] = request.prompt
        if request.n > 1 and wire.get("n_field", "num_images"):
            fields[wire.get("n_field", "num_images")] = request.n
        if request.seed is not None and spec.seed:
            fields["seed"] = request.seed
        if request.negative_prompt and spec.negative_prompt:
            fields["negative_prompt"] = request.negative_prompt
        if request.output_format:
            fields["output_format"] = request.output_format
        for attr, key, default in (
            ("steps", "steps_field", "num_inference_steps"),
            ("guidance", "guidance_field", "guidance_scale"),
            ("strength", "strength_field", "strength"),
        ):
            value = getattr(request, attr)
            if value is not None:
                fields[wire.get(key, default)] = value
        self._size(fields, request, wire.get("size_mode", "image_size"))
        self._images(fields, request, wire)
        fields.update(wire_options(request, EXCHANGE_OPTIONS))
        return fields

    def _size(self, fields: dict[str, Any], request: ImageRequest, mode: str) -> None:
        dims = request.dimensions()
        if mode == "image_size":
            if dims:
                fields["image_size"] = {"width": dims[0], "height": dims[1]}
            elif request.aspect_ratio:
                fields["image_size"] = IMAGE_SIZE_ENUMS[request.aspect_ratio]
        elif mode == "aspect_ratio" and request.aspect_ratio:
            fields["aspect_ratio"] = request.aspect_ratio

    def _images(self, fields: dict[str, Any], request: ImageRequest, wire: dict[str, Any]) -> None:
        images = [*request.images, *(r.image for r in request.references)]
        if images and wire.get("images_field"):
            fields[wire["images_field"]] = [data_url(img) for img in images]
        elif images:
            fields[wire.get("image_field", "image_url")] = data_url(images[0])
            extra = images[1:]
            if extra and wire.get("control_field"):
                fields[wire["control_field"]] = data_url(extra[0])
        if request.mask is not None:
            fields[wire.get("mask_field", "mask_url")] = data_url(
                encode_mask(request.mask, "white")
            )

    def _mode(self, request: ImageRequest) -> str:
        mode = str({**self.options, **request.provider_options}.get("mode", "queue"))
        if mode not in ("queue", "sync"):
            raise errors.InvalidRequestError(
                f"fal mode {mode!r} is not known.",
                param="provider_options",
                hint="Use mode 'queue' or 'sync'.",
            )
        return mode

    def _submit(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> httpx.Request:
        endpoint = self.endpoint(op, spec, request)
        headers = self._headers()
        start_timeout = {**self.options, **request.provider_options}.get("start_timeout")
        if start_timeout is not None:
            headers["X-Fal-Request-Timeout"] = str(start_timeout)
        base = self.sync_base_url(request) if self._mode(request) == "sync" else self.base_url
        return build_request(
            "POST", f"{base}/{endpoint}", json=self._input(op, request, spec), headers=headers
        )

    def native_request(
        self, op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> dict[str, Any]:
        import json

        req = self._submit(op, request, spec)
        body = json.loads(req.content)
        shown = {
            k: (
                [f"<data URL, {len(i)} chars>" for i in v]
                if isinstance(v, list) and v and isinstance(v[0], str) and v[0].startswith("data:")
                else (
                    f"<data URL, {len(v)} chars>"
                    if isinstance(v, str) and v.startswith("data:")
                    else v
                )
            )
            for k, v in body.items()
        }
        return {"method": "POST", "url": str(req.url), "json": shown, "mode": self._mode(request)}

    # -- the flow ------------------------------------------------------------------------------
    def flow(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> Flow:
        settings = self._poll_settings(request)
        submit = self._submit(op, request, spec)
        response: httpx.Response = yield Send(submit)
        if response.status_code >= 400:
            raise self._error(response, response.headers.get("x-fal-request-id"))
        if self._mode(request) == "sync":
            return (
                yield from self._collect(response.json(), response.headers.get("x-fal-request-id"))
            )
        queued = response.json()
        handle = {"id": str(queued.get("request_id", ""))}
        handle.update({k: queued.get(k) for k in ("status_url", "response_url", "cancel_url")})
        yield Submitted(self.encode_handle(**handle))
        return (yield from self._follow(handle, settings))

    def resume_flow(
        self, op: Operation, request: ImageRequest, spec: ModelSpec, handle: str
    ) -> Flow | None:
        if self._mode(request) == "sync":
            return None  # one request, nothing queued to come back to
        fields = self.decode_handle(handle, ("id", "status_url", "response_url", "cancel_url"))
        return self._follow(fields, self._poll_settings(request))

    def _poll_settings(self, request: ImageRequest) -> PollSettings:
        return PollSettings.from_options({**self.poll_defaults, **self.options}, request)

    def _follow(self, queued: dict[str, Any], settings: PollSettings) -> Flow:
        """Poll a queued request until COMPLETED, then fetch its output; at the deadline cancel."""
        rid = str(queued["id"])
        urls = [queued.get(k) for k in ("status_url", "response_url", "cancel_url")]
        for url in urls:
            if not url or not self.owns_url(str(url)):
                raise errors.ProviderError(
                    f"fal: the queue answered a URL off its own host ({url!r}); refusing to send the key.",
                    provider=self.name,
                    request_id=rid,
                )
        status_url, response_url, cancel_url = (str(url) for url in urls)
        try:
            yield from poll(
                settings,
                lambda: build_request(
                    "GET", status_url, params={"logs": "1"}, headers=self._headers()
                ),
                lambda r: self._completed(r, rid),
                _progress,
            )
        except DeadlineExceeded as exc:
            # Free the queue slot: nothing should run (and bill) after we gave up.
            yield Send(build_request("PUT", cancel_url, headers=self._headers()), retry=False)
            raise errors.ProviderTimeoutError(
                f"{self.name}: no result before the deadline; request {rid} was cancelled.",
                provider=self.name,
                request_id=rid,
            ) from exc
        result: httpx.Response = yield Send(
            build_request("GET", response_url, headers=self._headers())
        )
        if result.status_code >= 400:
            raise self._error(result, rid)
        return (yield from self._collect(result.json(), rid))

    def _completed(self, response: httpx.Response, rid: str) -> bool:
        if response.status_code >= 400:
            raise self._error(response, rid)
        body = response.json()
        if body.get("status") != "COMPLETED":
            return False
        if body.get("error"):
            kind = body.get("error_type") or "error"
            raise errors.JobFailedError(
                f"fal: {body['error']} ({kind}).", provider=self.name, request_id=rid
            )
        return True

    def _collect(self, output: dict[str, Any], rid: str | None) -> Flow:
        items = output.get("images") or (
            [output["image"]] if isinstance(output.get("image"), dict) else []
        )
        flags = output.get("has_nsfw_concepts") or output.get("nsfw_content_detected") or []
        seed = output.get("seed")
        images: list[GeneratedImage] = []
        warnings: list[str] = []
        for index, item in enumerate(items):
            if index < len(flags) and flags[index]:
                warnings.append(
                    f"fal: image {index + 1} was flagged by the safety checker and dropped."
                )
                continue
            url = str(item.get("url", ""))
            if url.startswith("data:"):
                data = codec.b64decode(url.split(",", 1)[1])
            else:
                fetched: Fetched = yield Download(url, {})  # CDN URLs are public: no key
                data = fetched.data
            images.append(
                image_from_bytes(data, seed=int(seed) + index if seed is not None else None)
            )
        if not images:
            if flags and any(flags):
                raise errors.ContentPolicyError(
                    "fal: the safety checker flagged every image (has_nsfw_concepts).",
                    provider=self.name,
                    request_id=rid,
                )
            raise errors.JobFailedError(
                "fal: the output held no image.", provider=self.name, request_id=rid
            )
        usage = Usage(raw={"timings": output.get("timings") or {}})
        return ProviderOutput(images=images, usage=usage, request_id=rid, warnings=warnings)

    def _error(self, response: httpx.Response, rid: str | None) -> errors.LimnerError:
        message = error_detail(response)
        kind = response.headers.get("x-fal-error-type", "")
        lowered = f"{message} {kind}".lower()
        if "content_policy" in lowered or "nsfw" in lowered:
            return errors.ContentPolicyError(
                f"fal: {message}", provider=self.name, status=response.status_code, request_id=rid
            )
        if response.status_code == 403 and "balance" in lowered:
            return errors.InsufficientCreditsError(
                f"fal: {message}", provider=self.name, status=403, request_id=rid
            )
        return map_http_error(self.name, response, message, request_id=rid)


def _progress(response: httpx.Response) -> Progress | None:
    body = response.json()
    if body.get("status") == "IN_QUEUE":
        return Progress(None, f"queued (position {body.get('queue_position', '?')})")
    logs = body.get("logs") or []
    last = logs[-1].get("message", "") if logs and isinstance(logs[-1], dict) else ""
    return Progress(None, f"running: {last}" if last else "running")
