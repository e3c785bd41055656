"""Black Forest Labs API: FLUX.2, FLUX 1.1 [pro] / Ultra, Kontext (legacy), Fill and Expand.

Every endpoint is asynchronous: ``POST /v1/<endpoint>`` answers ``{id, polling_url, cost}``;
``GET polling_url`` moves from ``Pending`` to ``Ready`` (with ``result.sample``, a signed URL
that expires after 10 minutes, downloaded at once) or to a moderated or error status. The key
(``x-key``) goes to the API hosts only; the delivery hosts that serve samples never see it.
Cost comes from the submit answer's ``cost`` in credits (1 credit = $0.01).

A run yields ``Submitted`` with the task id, polling URL and cost as its resume handle;
``resume_flow`` polls from there (the polling URL is checked against the trusted hosts again).
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urlsplit

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
from limner.providers._polling import (
    PollSettings,
    b64,
    error_detail,
    padding_to,
    poll,
    size_for_aspect,
    wire_options,
)
from limner.providers.base import Provider, image_from_bytes
from limner.types import ImageRequest, Operation, Usage

__all__ = ["BFLProvider"]

MODERATED = {"Request Moderated", "Content Moderated"}
FAILED = {"Error", "Failed"}
# "Task not found" can show transiently right after a submit; this many in a row is a failure.
MAX_NOT_FOUND = 3
TRUSTED_DOMAINS = (".bfl.ai", ".bfl.ml")


class BFLProvider(Provider):
    name = "bfl"
    display_name = "Black Forest Labs"
    key_env = "BFL_API_KEY"
    default_base_url = "https://api.bfl.ai/v1"
    # How often to poll by default (provider options override).
    poll_defaults: ClassVar[dict[str, float]] = {"poll_interval": 0.5, "poll_max_interval": 2.0}

    def _headers(self) -> dict[str, str]:
        return {"x-key": self.api_key} if self.api_key else {}

    def trusts_host(self, url: str) -> bool:
        """Whether ``x-key`` may go to ``url``: the configured API host, or a BFL API host
        (regional polling hosts such as ``api.us1.bfl.ai``) but never a delivery host."""
        if self.owns_url(url):
            return True
        host = (urlsplit(url).hostname or "").lower()
        return (
            urlsplit(url).scheme == "https"
            and host.endswith(TRUSTED_DOMAINS)
            and not host.startswith("delivery")
        )

    # -- request building ----------------------------------------------------------------------
    def _body(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> dict[str, Any]:
        kind = spec.wire.get("kind", "flux2")
        body: dict[str, Any] = {"prompt": request.prompt}
        if request.seed is not None:
            body["seed"] = request.seed
        if request.output_format:
            body["output_format"] = "jpeg" if request.output_format == "jpeg" else "png"
        builder = {
            "flux2": self._flux2,
            "kontext": self._kontext,
            "pro": self._pro,
            "ultra": self._ultra,
            "fill": self._fill,
            "expand": self._expand,
        }[kind]
        builder(body, op, request, spec)
        body.update(wire_options(request))
        return body

    def _flux2(
        self, body: dict[str, Any], op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> None:
        dims = request.dimensions()
        if dims is None and request.aspect_ratio:
            dims = size_for_aspect(request.aspect_ratio)
        if dims is None and request.images:
            dims = (request.images[0].width, request.images[0].height)
        if dims:
            body["width"], body["height"] = dims
        if request.steps is not None:
            body["steps"] = request.steps
        if request.guidance is not None:
            body["guidance"] = request.guidance
        _input_images(body, request)

    def _kontext(
        self, body: dict[str, Any], op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> None:
        if request.aspect_ratio:
            body["aspect_ratio"] = request.aspect_ratio
        _input_images(body, request)

    def _pro(
        self, body: dict[str, Any], op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> None:
        dims = request.dimensions() or (
            size_for_aspect(request.aspect_ratio, 1.0, 32) if request.aspect_ratio else None
        )
        if dims:
            body["width"], body["height"] = dims
        # FLUX 1.1 [pro] takes one image prompt (Redux): the given image, else the reference.
        guides = [*request.images, *(r.image for r in request.references)]
        if guides:
            body["image_prompt"] = b64(guides[0])

    def _ultra(
        self, body: dict[str, Any], op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> None:
        if request.aspect_ratio:
            body["aspect_ratio"] = request.aspect_ratio
        refs = [*request.images, *(r.image for r in request.references)]
        if refs:
            body["image_prompt"] = b64(refs[0])
            weight = request.references[0].weight if request.references else request.strength
            if weight is not None:
                body["image_prompt_strength"] = weight

    def _fill(
        self, body: dict[str, Any], op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> None:
        body["image"] = b64(request.images[0])
        if request.mask is not None:
            body["mask"] = b64(encode_mask(request.mask, "white"))
        if request.steps is not None:
            body["steps"] = request.steps
        if request.guidance is not None:
            body["guidance"] = request.guidance

    def _expand(
        self, body: dict[str, Any], op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> None:
        image = request.images[0]
        body["image"] = b64(image)
        body.update(
            padding_to(
                image,
                request.size,
                request.provider_options,
                ("left", "right", "top", "bottom"),
                request.expand,
            )
        )
        if request.steps is not None:
            body["steps"] = request.steps
        if request.guidance is not None:
            body["guidance"] = request.guidance

    def _endpoint(self, spec: ModelSpec) -> str:
        return str(spec.wire.get("endpoint", spec.id))

    def native_request(
        self, op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> dict[str, Any]:
        body = self._body(op, request, spec)
        shown = {
            k: (f"<base64, {len(v)} chars>" if k in _IMAGE_FIELDS else v) for k, v in body.items()
        }
        return {
            "method": "POST",
            "path": f"/{self._endpoint(spec)}",
            "json": shown,
            "then": "GET polling_url until Ready",
        }

    # -- the flow ------------------------------------------------------------------------------
    def flow(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> Flow:
        settings = self._poll_settings(request)
        body = self._body(op, request, spec)
        url = f"{self.base_url}/{self._endpoint(spec)}"
        response: httpx.Response = yield Send(
            build_request("POST", url, json=body, headers=self._headers())
        )
        if response.status_code >= 400:
            raise self._error(response, None)
        submitted = response.json()
        task_id = str(submitted.get("id", ""))
        # The handle keeps the billed cost too, so a resumed run logs what this one would.
        handle = {k: submitted[k] for k in ("cost", "input_mp", "output_mp") if k in submitted}
        handle["id"] = task_id
        handle["polling_url"] = (
            submitted.get("polling_url") or f"{self.base_url}/get_result?id={task_id}"
        )
        yield Submitted(self.encode_handle(**handle))
        return (yield from self._follow(handle, settings))

    def resume_flow(
        self, op: Operation, request: ImageRequest, spec: ModelSpec, handle: str
    ) -> Flow | None:
        submitted = self.decode_handle(handle, ("id", "polling_url"))
        return self._follow(submitted, self._poll_settings(request))

    def _poll_settings(self, request: ImageRequest) -> PollSettings:
        return PollSettings.from_options({**self.poll_defaults, **self.options}, request)

    def _follow(self, submitted: dict[str, Any], settings: PollSettings) -> Flow:
        """Poll a submitted task until Ready, then download its sample."""
        task_id, polling_url = str(submitted["id"]), str(submitted["polling_url"])
        if not self.trusts_host(polling_url):
            raise errors.ProviderError(
                f"bfl: refusing to send the API key to the polling URL host {urlsplit(polling_url).hostname!r}.",
                provider=self.name,
                request_id=task_id,
            )
        tracker = _StatusTracker(self, task_id)
        try:
            final = yield from poll(
                settings,
                lambda: build_request("GET", polling_url, headers=self._headers()),
                tracker.check,
                tracker.progress,
            )
        except DeadlineExceeded:
            # BFL has no cancel endpoint; the task finishes (and bills) remotely.
            raise
        result = final.json().get("result") or {}
        sample = result.get("sample")
        if not sample:
            raise errors.JobFailedError(
                "bfl: the task is Ready but holds no sample.",
                provider=self.name,
                request_id=task_id,
            )
        fetched: Fetched = yield Download(sample, {})  # signed URL: never the key
        seed = result.get("seed")
        image = image_from_bytes(fetched.data, seed=int(seed) if seed is not None else None)
        credits = submitted.get("cost")
        usage = Usage(
            credits=float(credits) if credits is not None else None,
            raw={k: submitted[k] for k in ("cost", "input_mp", "output_mp") if k in submitted},
        )
        return ProviderOutput(
            images=[image],
            usage=usage,
            request_id=task_id,
            cost_usd=round(float(credits) / 100.0, 6) if credits is not None else None,
        )

    def _error(self, response: httpx.Response, request_id: str | None) -> errors.LimnerError:
        message = error_detail(response)
        lowered = (message or "").lower()
        if "moderat" in lowered or "nsfw" in lowered:
            return errors.ContentPolicyError(
                f"bfl: {message}",
                provider=self.name,
                status=response.status_code,
                request_id=request_id,
            )
        return map_http_error(self.name, response, message, request_id=request_id)


_IMAGE_FIELDS = {
    "image",
    "mask",
    "image_prompt",
    "input_image",
    *(f"input_image_{i}" for i in range(2, 11)),
}


def _input_images(body: dict[str, Any], request: ImageRequest) -> None:
    """FLUX.2 and Kontext take inputs as ``input_image``, ``input_image_2``, ...: the images to
    edit first, then the reference images."""
    images = [*request.images, *(r.image for r in request.references)]
    for index, image in enumerate(images):
        body["input_image" if index == 0 else f"input_image_{index + 1}"] = b64(image)


class _StatusTracker:
    """Reads poll answers: done, still pending (with progress) or failed (raises)."""

    def __init__(self, provider: BFLProvider, task_id: str) -> None:
        self.provider = provider
        self.task_id = task_id
        self.not_found = 0

    def check(self, response: httpx.Response) -> bool:
        name = self.provider.name
        if response.status_code == 404:
            return self._not_found()
        if response.status_code >= 400:
            raise self.provider._error(response, self.task_id)
        body = response.json()
        status = body.get("status") or body.get("state")
        if status == "Ready":
            return True
        if status == "Task not found":
            return self._not_found()
        self.not_found = 0
        if status in MODERATED:
            raise errors.ContentPolicyError(
                f"bfl: {status} by the safety system.", provider=name, request_id=self.task_id
            )
        if status in FAILED:
            detail = body.get("details") or body.get("error") or status
            raise errors.JobFailedError(
                f"bfl: the task failed ({detail}).", provider=name, request_id=self.task_id
            )
        return False

    def _not_found(self) -> bool:
        self.not_found += 1
        if self.not_found >= MAX_NOT_FOUND:
            raise errors.JobFailedError(
                f"bfl: task {self.task_id} not found.",
                provider=self.provider.name,
                request_id=self.task_id,
            )
        return False

    def progress(self, response: httpx.Response) -> Progress | None:
        try:
            body = response.json()
        except ValueError:
            return None
        fraction = body.get("progress")
        return Progress(
            float(fraction) if fraction is not None else None, str(body.get("status", ""))
        )
