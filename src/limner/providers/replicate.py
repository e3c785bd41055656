"""Replicate predictions API: official models by name, community models by version.

``POST /v1/models/{owner}/{name}/predictions`` (official models) or ``POST /v1/predictions``
with ``version`` creates a prediction. limner sends ``Prefer: wait=N`` so that quick models answer
in one round trip, and polls ``urls.get`` when the answer is still ``starting``/``processing``.
A ``Cancel-After`` header (provider option ``cancel_after``, seconds) makes Replicate stop the
prediction itself; at limner's own deadline the flow posts to ``urls.cancel``. Output is a URL
or a list of URLs, downloaded at once without the token (the delivery host is not the API).

Per-model input names live in the catalog's ``wire`` table: ``n_field``, ``steps_field``,
``guidance_field``, ``image_field``, ``images_field`` (a list), ``strength_field``, ``mask_field``,
``size_mode`` (``aspect``, ``dims`` or ``none``), ``negative_field``.

Once created, a prediction is announced with ``Submitted`` (handle: its id and API URLs);
``resume_flow`` polls it from that handle after a crash instead of creating it again.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import httpx

from limner import errors
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
from limner.types import ImageRequest, Operation, Usage

__all__ = ["ReplicateProvider"]

TERMINAL = {"succeeded", "failed", "canceled"}
# Options that shape the HTTP exchange rather than the model's input.
EXCHANGE_OPTIONS = frozenset({"wait", "cancel_after"})
POLICY_MARKERS = ("nsfw", "safety", "content policy", "flagged as sensitive")


class ReplicateProvider(Provider):
    name = "replicate"
    display_name = "Replicate"
    key_env = "REPLICATE_API_TOKEN"
    default_base_url = "https://api.replicate.com/v1"
    # How often to poll by default (provider options override).
    poll_defaults: ClassVar[dict[str, float]] = {"poll_interval": 0.5, "poll_max_interval": 2.0}

    def _headers(self, request: ImageRequest | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        if request is None:
            return headers
        options = {**self.options, **request.provider_options}
        wait = options.get("wait", 60)
        if wait not in (False, None, 0):
            seconds = 60 if wait is True else int(wait)
            # Never block in one request past limner's own deadline.
            if options.get("deadline_s") is not None:
                seconds = min(seconds, int(float(options["deadline_s"])))
            headers["Prefer"] = f"wait={max(1, min(seconds, 60))}"
        # Replicate's own deadline: set explicitly, or taken from limner's deadline_s option, so
        # that the prediction stops remotely even if this process dies while waiting.
        cancel_after = options.get("cancel_after") or _deadline_option(options.get("deadline_s"))
        if cancel_after:
            headers["Cancel-After"] = _duration(cancel_after)
        return headers

    # -- request building ----------------------------------------------------------------------
    def _input(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> dict[str, Any]:
        wire = spec.wire
        fields: dict[str, Any] = {}
        if request.prompt and wire.get("prompt", True):
            fields["prompt"] = request.prompt
        if request.negative_prompt and wire.get("negative_field"):
            fields[wire["negative_field"]] = request.negative_prompt
        if wire.get("n_field") and request.n > 1:
            fields[wire["n_field"]] = request.n
        if request.seed is not None and spec.seed:
            fields["seed"] = request.seed
        if request.output_format:
            fields["output_format"] = (
                "jpg" if request.output_format == "jpeg" else request.output_format
            )
        for attr, key in (("steps", "steps_field"), ("guidance", "guidance_field")):
            value = getattr(request, attr)
            if value is not None and wire.get(key):
                fields[wire[key]] = value
        self._size(fields, request, wire)
        self._images(fields, op, request, wire)
        fields.update(wire_options(request, EXCHANGE_OPTIONS))
        return fields

    def _size(self, fields: dict[str, Any], request: ImageRequest, wire: dict[str, Any]) -> None:
        mode = wire.get("size_mode", "aspect")
        if mode == "aspect" and request.aspect_ratio:
            fields["aspect_ratio"] = request.aspect_ratio
        elif mode == "dims" and (dims := request.dimensions()):
            fields["width"], fields["height"] = dims
        elif mode == "dims" and request.aspect_ratio:
            fields["aspect_ratio"] = request.aspect_ratio

    def _images(
        self, fields: dict[str, Any], op: Operation, request: ImageRequest, wire: dict[str, Any]
    ) -> None:
        images = [*request.images, *(r.image for r in request.references)]
        if not images:
            return
        if wire.get("images_field"):
            fields[wire["images_field"]] = [data_url(img) for img in images]
        elif wire.get("image_field"):
            fields[wire["image_field"]] = data_url(images[0])
        if request.strength is not None and wire.get("strength_field"):
            fields[wire["strength_field"]] = request.strength
        if request.mask is not None and wire.get("mask_field"):
            fields[wire["mask_field"]] = data_url(encode_mask(request.mask, spec_mask(wire)))
        dims = request.dimensions()
        if op == Operation.UPSCALE and wire.get("scale_field") and dims and request.images:
            fields[wire["scale_field"]] = max(1, round(dims[0] / request.images[0].width))

    def _create(
        self, spec: ModelSpec, body_input: dict[str, Any], request: ImageRequest
    ) -> httpx.Request:
        version = spec.wire.get("version")
        headers = self._headers(request)
        if version:
            body = {"version": version, "input": body_input}
            return build_request("POST", f"{self.base_url}/predictions", json=body, headers=headers)
        model = spec.wire.get("model", spec.id)
        return build_request(
            "POST",
            f"{self.base_url}/models/{model}/predictions",
            json={"input": body_input},
            headers=headers,
        )

    def native_request(
        self, op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> dict[str, Any]:
        req = self._create(spec, self._input(op, request, spec), request)
        import json

        body = json.loads(req.content)
        shown = {
            k: (
                f"<data URL, {len(v)} chars>" if isinstance(v, str) and v.startswith("data:") else v
            )
            for k, v in body["input"].items()
        }
        body["input"] = shown
        headers = {k: v for k, v in req.headers.items() if k.lower() in ("prefer", "cancel-after")}
        return {"method": "POST", "url": str(req.url), "headers": headers, "json": body}

    # -- the flow ------------------------------------------------------------------------------
    def flow(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> Flow:
        settings = self._poll_settings(request)
        create = self._create(spec, self._input(op, request, spec), request)
        response: httpx.Response = yield Send(create)
        if response.status_code >= 400:
            raise self._error(response, None)
        prediction = response.json()
        pid = str(prediction.get("id", ""))
        urls = prediction.get("urls") or {}
        get_url = urls.get("get") or f"{self.base_url}/predictions/{pid}"
        handle = {
            "id": pid,
            "get": get_url,
            "cancel": urls.get("cancel") or f"{get_url}/cancel",
            "cancel_after": "cancel-after" in create.headers,
        }
        yield Submitted(self.encode_handle(**handle))
        return (yield from self._follow(handle, settings, prediction))

    def resume_flow(
        self, op: Operation, request: ImageRequest, spec: ModelSpec, handle: str
    ) -> Flow | None:
        fields = self.decode_handle(handle, ("id", "get", "cancel"))
        return self._follow(fields, self._poll_settings(request), None)

    def _poll_settings(self, request: ImageRequest) -> PollSettings:
        return PollSettings.from_options({**self.poll_defaults, **self.options}, request)

    def _follow(
        self, handle: dict[str, Any], settings: PollSettings, prediction: dict[str, Any] | None
    ) -> Flow:
        """Poll a created prediction (unless ``prediction`` already ended) and fetch its output;
        at the deadline cancel it."""
        pid, get_url, cancel_url = str(handle["id"]), str(handle["get"]), str(handle["cancel"])
        for url in (get_url, cancel_url):
            if not self.owns_url(url):
                raise errors.ProviderError(
                    f"replicate: refusing to send the token to {url!r}, not the API host.",
                    provider=self.name,
                    request_id=pid,
                )
        if prediction is None or prediction.get("status") not in TERMINAL:
            try:
                final = yield from poll(
                    settings,
                    lambda: build_request("GET", get_url, headers=self._headers()),
                    lambda r: self._terminal(r, pid),
                    _progress,
                )
            except DeadlineExceeded as exc:
                # Stop the prediction so it does not keep running (and billing) after we gave up.
                yield Send(build_request("POST", cancel_url, headers=self._headers()), retry=False)
                raise errors.ProviderTimeoutError(
                    f"{self.name}: no result before the deadline; prediction {pid} was cancelled.",
                    provider=self.name,
                    request_id=pid,
                ) from exc
            prediction = final.json()
        return (yield from self._collect(prediction, pid, bool(handle.get("cancel_after"))))

    def _terminal(self, response: httpx.Response, pid: str) -> bool:
        if response.status_code >= 400:
            raise self._error(response, pid)
        return response.json().get("status") in TERMINAL

    def _collect(self, prediction: dict[str, Any], pid: str, had_deadline: bool = False) -> Flow:
        status = prediction.get("status")
        if status == "canceled" and had_deadline:
            raise errors.ProviderTimeoutError(
                "replicate: the prediction was canceled at its Cancel-After deadline.",
                provider=self.name,
                request_id=pid,
            )
        if status != "succeeded":
            message = str(prediction.get("error") or f"the prediction ended {status}")
            if any(marker in message.lower() for marker in POLICY_MARKERS):
                raise errors.ContentPolicyError(
                    f"replicate: {message}", provider=self.name, request_id=pid
                )
            raise errors.JobFailedError(f"replicate: {message}", provider=self.name, request_id=pid)
        output = prediction.get("output")
        urls = [
            u
            for u in (output if isinstance(output, list) else [output])
            if isinstance(u, str) and u
        ]
        if not urls:
            raise errors.JobFailedError(
                "replicate: the prediction succeeded without output.",
                provider=self.name,
                request_id=pid,
            )
        images = []
        for url in urls:
            fetched: Fetched = yield Download(url, {})
            images.append(image_from_bytes(fetched.data))
        metrics = prediction.get("metrics") or {}
        return ProviderOutput(images=images, usage=Usage(raw={"metrics": metrics}), request_id=pid)

    def _error(self, response: httpx.Response, pid: str | None) -> errors.LimnerError:
        message = error_detail(response)
        if response.status_code == 402:
            return errors.InsufficientCreditsError(
                f"replicate: {message}",
                provider=self.name,
                status=402,
                request_id=pid,
                hint="Add credit at replicate.com/account/billing.",
            )
        return map_http_error(self.name, response, message, request_id=pid)


def spec_mask(wire: dict[str, Any]) -> str:
    return str(wire.get("mask_convention", "white"))


def _progress(response: httpx.Response) -> Progress | None:
    body = response.json()
    logs = str(body.get("logs") or "")
    # Diffusion models print tqdm-style lines; the last percentage is the progress.
    found = re.findall(r"(\d{1,3})%\|", logs)
    fraction = int(found[-1]) / 100 if found else None
    return Progress(fraction, str(body.get("status", "")))


def _deadline_option(value: Any) -> str | None:
    try:
        return _duration(value) if value is not None and float(value) > 0 else None
    except (TypeError, ValueError):
        return None


def _duration(value: Any) -> str:
    """Seconds (or a duration string such as ``"6m"``) as Replicate's ``Cancel-After`` value."""
    if isinstance(value, str) and not value.replace(".", "", 1).isdigit():
        return value
    seconds = float(value)
    return f"{int(seconds * 1000)}ms" if seconds < 1 else f"{int(seconds)}s"
