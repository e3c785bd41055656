"""Stability AI REST v2beta: Stable Image Ultra / Core, SD 3.5, and the edit, upscale and
control services.

Every POST is multipart/form-data. limner asks for ``Accept: image/*`` (raw bytes, with the
``finish-reason`` and ``seed`` response headers) unless provider option ``accept="json"`` asks
for the base64 JSON form. ``finish-reason: CONTENT_FILTERED`` (a blurred image) and 403
``content_moderation`` are content-policy errors. Creative upscale is asynchronous: the POST
answers ``{"id"}`` and ``GET /v2beta/results/{id}`` answers 202 while running, 200 with the
image, and 404 once the result has expired.
Its id is announced with ``Submitted``; ``resume_flow`` polls the result again after a crash.

The catalog's ``wire.service`` names the endpoint (``generate/sd3``, ``edit/inpaint``,
``upscale/creative``, ...); ``wire.model`` is the ``model`` field of ``generate/sd3``.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from limner import codec, errors
from limner.catalog import ModelSpec
from limner.flows import Flow, Progress, ProviderOutput, Send, Submitted
from limner.http import build_request, map_http_error
from limner.images import encode_mask
from limner.providers._polling import PollSettings, error_detail, padding_to, poll, wire_options
from limner.providers.base import Provider, image_from_bytes
from limner.types import ImageInput, ImageRequest, Operation, Usage

__all__ = ["StabilityProvider"]

ASYNC_SERVICES = {"upscale/creative"}
EXCHANGE_OPTIONS = frozenset({"accept"})
Field = tuple[str, tuple[str | None, bytes | str, str] | tuple[None, str]]


class StabilityProvider(Provider):
    name = "stability"
    display_name = "Stability AI"
    key_env = "STABILITY_API_KEY"
    default_base_url = "https://api.stability.ai"
    # How often to poll by default (provider options override).
    poll_defaults: ClassVar[dict[str, float]] = {"poll_interval": 2.0, "poll_max_interval": 10.0}

    def _headers(self, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _accept(self, request: ImageRequest) -> str:
        wanted = str({**self.options, **request.provider_options}.get("accept", "image"))
        return "application/json" if wanted == "json" else "image/*"

    # -- request building ----------------------------------------------------------------------
    def _fields(
        self, op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> tuple[dict[str, Any], list[tuple[str, ImageInput | bytes]]]:
        """Text fields and file fields of the multipart body."""
        service = str(spec.wire["service"])
        text: dict[str, Any] = {}
        files: list[tuple[str, ImageInput | bytes]] = []
        if request.prompt and not service.startswith(
            ("edit/erase", "edit/remove-background", "upscale/fast")
        ):
            text["prompt"] = request.prompt
        if request.negative_prompt and spec.negative_prompt:
            text["negative_prompt"] = request.negative_prompt
        if request.seed is not None and spec.seed:
            text["seed"] = request.seed
        if request.output_format:
            text["output_format"] = request.output_format
        if request.style:
            text["style_preset"] = request.style
        family = service.split("/")[0]
        if family == "generate":
            self._generate_fields(text, files, op, request, spec)
        elif family == "control":
            self._control_fields(text, files, request, service)
        else:
            self._edit_fields(text, files, request, service)
        text.update(wire_options(request, EXCHANGE_OPTIONS))
        return text, files

    def _generate_fields(
        self,
        text: dict[str, Any],
        files: list[tuple[str, ImageInput | bytes]],
        op: Operation,
        request: ImageRequest,
        spec: ModelSpec,
    ) -> None:
        if spec.wire.get("model"):
            text["model"] = spec.wire["model"]
        if request.guidance is not None and spec.guidance:
            text["cfg_scale"] = request.guidance
        if op == Operation.EDIT and request.images:
            files.append(("image", request.images[0]))
            text["strength"] = request.strength if request.strength is not None else 0.6
            if spec.wire.get("model"):
                text["mode"] = "image-to-image"
        elif request.aspect_ratio:
            text["aspect_ratio"] = request.aspect_ratio

    def _control_fields(
        self,
        text: dict[str, Any],
        files: list[tuple[str, ImageInput | bytes]],
        request: ImageRequest,
        service: str,
    ) -> None:
        refs = [r.image for r in request.references]
        # Style control wants the style image: a reference when given; sketch and structure want
        # the control image itself.
        sources = (
            [*refs, *request.images] if service == "control/style" else [*request.images, *refs]
        )
        if not sources:
            raise errors.InvalidRequestError(
                f"Stability {service} needs a control image.",
                param="image",
                hint="Pass --image or a reference image.",
            )
        files.append(("image", sources[0]))
        weight = request.references[0].weight if request.references else None
        strength = weight if weight is not None else request.strength
        if strength is not None:
            text["fidelity" if service == "control/style" else "control_strength"] = strength
        if request.aspect_ratio and service == "control/style":
            text["aspect_ratio"] = request.aspect_ratio

    def _edit_fields(
        self,
        text: dict[str, Any],
        files: list[tuple[str, ImageInput | bytes]],
        request: ImageRequest,
        service: str,
    ) -> None:
        image = request.images[0]
        files.append(("image", image))
        if request.mask is not None and service in ("edit/inpaint", "edit/erase"):
            files.append(("mask", encode_mask(request.mask, "white")))
        if service == "edit/outpaint":
            text.update(
                padding_to(
                    image,
                    request.size,
                    request.provider_options,
                    ("left", "right", "up", "down"),
                    request.expand,
                )
            )
        if service == "edit/search-and-replace" and "search_prompt" not in request.provider_options:
            raise errors.InvalidRequestError(
                "Search-and-replace needs the object to replace.",
                param="provider_options",
                hint="Pass provider option search_prompt (what to find); the prompt says what replaces it.",
            )
        if service in ("upscale/conservative", "upscale/creative") and not request.prompt:
            raise errors.InvalidRequestError(
                f"Stability {service} needs a prompt describing the image.", param="prompt"
            )

    def _endpoint(self, spec: ModelSpec) -> str:
        return f"{self.base_url}/v2beta/stable-image/{spec.wire['service']}"

    def _build(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> httpx.Request:
        text, files = self._fields(op, request, spec)
        # (None, value) parts are plain form fields: the body is multipart even without files.
        parts: list[Any] = [(k, (None, str(v))) for k, v in text.items()]
        for key, item in files:
            data = item.data if isinstance(item, ImageInput) else item
            parts.append((key, (f"{key}.png", data, "image/png")))
        return build_request(
            "POST", self._endpoint(spec), files=parts, headers=self._headers(self._accept(request))
        )

    def native_request(
        self, op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> dict[str, Any]:
        text, files = self._fields(op, request, spec)
        multipart = {**{k: v for k, v in text.items()}, **{k: "<png>" for k, _ in files}}
        return {
            "method": "POST",
            "url": self._endpoint(spec),
            "accept": self._accept(request),
            "multipart": multipart,
        }

    # -- the flow ------------------------------------------------------------------------------
    def flow(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> Flow:
        accept = self._accept(request)
        asynchronous = spec.wire["service"] in ASYNC_SERVICES
        settings = self._poll_settings(request) if asynchronous else None
        response: httpx.Response = yield Send(self._build(op, request, spec))
        if response.status_code >= 400:
            raise self._error(response)
        if settings is not None:
            generation_id = str(response.json()["id"])
            yield Submitted(self.encode_handle(id=generation_id))
            return (yield from self._follow(generation_id, accept, settings))
        return self._output(response, response.headers.get("x-request-id"))

    def resume_flow(
        self, op: Operation, request: ImageRequest, spec: ModelSpec, handle: str
    ) -> Flow | None:
        if spec.wire["service"] not in ASYNC_SERVICES:
            return None  # answered in the one request: nothing to come back to
        generation_id = str(self.decode_handle(handle)["id"])
        return self._follow(generation_id, self._accept(request), self._poll_settings(request))

    def _poll_settings(self, request: ImageRequest) -> PollSettings:
        return PollSettings.from_options({**self.poll_defaults, **self.options}, request)

    def _follow(self, generation_id: str, accept: str, settings: PollSettings) -> Flow:
        """Poll an asynchronous generation's result until it is ready."""
        url = f"{self.base_url}/v2beta/results/{quote(generation_id, safe='')}"
        # No cancel endpoint: at a deadline the generation finishes remotely.
        response = yield from poll(
            settings,
            lambda: build_request("GET", url, headers=self._headers(accept)),
            lambda r: self._result_ready(r, generation_id),
            lambda r: Progress(None, "in-progress"),
        )
        return self._output(response, generation_id)

    def _result_ready(self, response: httpx.Response, generation_id: str) -> bool:
        if response.status_code == 202:
            return False
        if response.status_code == 404:
            raise errors.JobFailedError(
                f"stability: result {generation_id} not found (results expire after 24 hours).",
                provider=self.name,
                status=404,
                request_id=generation_id,
            )
        if response.status_code >= 400:
            raise self._error(response)
        return True

    def _output(self, response: httpx.Response, request_id: str | None) -> ProviderOutput:
        media = response.headers.get("content-type", "").split(";")[0]
        if media == "application/json":
            body = codec.json_loads(response.content)
            finish = body.get("finish_reason")
            seed = body.get("seed")
            data = codec.b64decode(body.get("image") or body.get("result") or "")
        else:
            finish = response.headers.get("finish-reason")
            seed = response.headers.get("seed")
            data = response.content
        if finish == "CONTENT_FILTERED":
            raise errors.ContentPolicyError(
                "stability: the result was filtered by the safety system (finish-reason CONTENT_FILTERED).",
                provider=self.name,
                request_id=request_id,
            )
        image = image_from_bytes(data, seed=int(seed) if seed not in (None, "") else None)
        return ProviderOutput(
            images=[image], usage=Usage(raw={"finish_reason": finish}), request_id=request_id
        )

    def _error(self, response: httpx.Response) -> errors.LimnerError:
        message = error_detail(response)
        try:
            body = codec.json_loads(response.content)
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else {}
        name, request_id = str(body.get("name", "")), body.get("id")
        if name == "content_moderation":
            return errors.ContentPolicyError(
                f"stability: {message}",
                provider=self.name,
                status=response.status_code,
                request_id=request_id,
            )
        return map_http_error(
            self.name, response, f"{name}: {message}" if name else message, request_id=request_id
        )
