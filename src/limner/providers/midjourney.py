"""Midjourney through a self-hosted midjourney-proxy (the de-facto API over your own account).

MIDJOURNEY_PROXY_URL is the proxy's base URL (its routes live under ``/mj``); MJ_API_SECRET,
when the proxy has one, travels as ``mj-api-secret``. Midjourney has no official API: this
adapter speaks the proxy protocol and carries the same terms-of-service risk as the proxy.

Every call is a task: submit, poll ``/mj/task/{id}/fetch`` (NOT_START -> SUBMITTED ->
IN_PROGRESS -> SUCCESS | FAILURE, with a progress percentage), then download the image.

* generate   ``/mj/submit/imagine``; the 2x2 grid comes back as four images (first ``n`` kept).
             With ``provider_options={"task_id": ..., "action": "reroll"}``: reroll that task.
* edit       imagine with the input images as image prompts.
* upscale    U1-U4 of a finished task: ``provider_options={"task_id": ..., "index": 1..4}``.
* variation  V1-V4 likewise; with two to five input images and no task: ``/mj/submit/blend``.
* describe   :meth:`MidjourneyProvider.describe_flow` / :func:`describe`.

Poll pacing: ``provider_options`` ``poll_interval`` (seconds, default 3) and ``poll_timeout``
(default 600). A submitted task is announced with ``Submitted`` (handle: its id), and
``resume_flow`` waits for it again after a crash instead of queueing a second job. Reference images are uploaded through the proxy first (their URLs become
``--sref``/``--cref``); see :mod:`limner.providers.midjourney_flags` for the prompt.
"""

from __future__ import annotations

import io
import time
from typing import Any

import httpx

from limner import codec, errors
from limner.catalog import ModelSpec
from limner.flows import Download, Fetched, Flow, Progress, ProviderOutput, Send, Sleep, Submitted
from limner.http import build_request, map_http_error, parse_retry_after
from limner.providers._polling import job_failure
from limner.providers.base import Provider, image_from_bytes
from limner.providers.midjourney_flags import FLAG_OPTIONS, midjourney_prompt
from limner.types import GeneratedImage, ImageInput, ImageRequest, Operation

__all__ = ["MidjourneyProvider", "describe", "split_grid"]

CONTROL_OPTIONS = {"task_id", "index", "action", "poll_interval", "poll_timeout", "notify_hook"}
OK_CODES = {1, 21, 22}  # submitted; already exists; queued
QUEUE_FULL_CODE = 23
BANNED_CODE = 24
RATE_LIMIT_RETRIES = 3
ACTION_PREFIX = {
    "upscale": "MJ::JOB::upsample::",
    "variation": "MJ::JOB::variation::",
    "reroll": "MJ::JOB::reroll::",
}
POLICY_HINTS = ("banned", "moderation", "blocked", "not allowed", "community guidelines")


def _data_url(image: ImageInput) -> str:
    return f"data:{image.media_type};base64,{codec.b64encode(image.data)}"


def _code(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def split_grid(image: GeneratedImage, count: int = 4) -> list[GeneratedImage]:
    """Cut the first ``count`` images out of a 2x2 Midjourney grid (top-left, top-right, ...)."""
    from PIL import Image

    with Image.open(io.BytesIO(image.data)) as grid:
        grid.load()
        half_w, half_h = grid.width // 2, grid.height // 2
        tiles = []
        for top, left in ((0, 0), (0, 1), (1, 0), (1, 1))[: max(min(count, 4), 1)]:
            tile = grid.crop((left * half_w, top * half_h, (left + 1) * half_w, (top + 1) * half_h))
            buf = io.BytesIO()
            tile.save(buf, format="PNG")
            tiles.append(image_from_bytes(buf.getvalue(), revised_prompt=image.revised_prompt))
    return tiles


class MidjourneyProvider(Provider):
    name = "midjourney"
    display_name = "Midjourney (midjourney-proxy)"
    key_env = "MJ_API_SECRET"
    base_url_envs = ("MIDJOURNEY_PROXY_URL",)
    default_base_url = "http://localhost:8080"
    needs_key = False  # a proxy without a secret is valid (loopback deployments)

    def _headers(self) -> dict[str, str]:
        return {"mj-api-secret": self.api_key} if self.api_key else {}

    def _post(self, path: str, body: dict[str, Any]) -> Send:
        # Submits are not retried blindly: a retried imagine would queue (and bill) a second job.
        return Send(
            build_request("POST", f"{self.base_url}{path}", json=body, headers=self._headers()),
            retry=False,
        )

    # -- request building ----------------------------------------------------------------------
    def _check_options(self, request: ImageRequest, spec: ModelSpec) -> None:
        unknown = set(request.provider_options) - CONTROL_OPTIONS - set(FLAG_OPTIONS)
        if unknown:
            raise errors.InvalidRequestError(
                f"{spec.ref} does not take provider option(s) {', '.join(sorted(unknown))}.",
                param="provider_options",
                hint=f"Allowed: {', '.join(sorted(CONTROL_OPTIONS | set(FLAG_OPTIONS)))}.",
            )

    def _task_action(self, op: Operation, request: ImageRequest) -> tuple[str, str, int] | None:
        """(kind, task id, index) when the request acts on an earlier task, else None."""
        opts = request.provider_options
        task_id = opts.get("task_id")
        if op == Operation.GENERATE and opts.get("action") == "reroll":
            if not task_id:
                raise errors.InvalidRequestError(
                    "reroll needs provider_options task_id.", param="provider_options.task_id"
                )
            return "reroll", str(task_id), 0
        if op in (Operation.UPSCALE, Operation.VARIATION) and (task_id or op == Operation.UPSCALE):
            if not task_id:
                raise errors.InvalidRequestError(
                    "Midjourney upscales a cell of an earlier grid: give provider_options task_id (the "
                    "request_id of the imagine result) and index 1-4.",
                    param="provider_options.task_id",
                )
            index = int(opts.get("index", 1))
            if not 1 <= index <= 4:
                raise errors.InvalidRequestError(
                    f"index must be 1-4; got {index}.", param="provider_options.index"
                )
            return ("upscale" if op == Operation.UPSCALE else "variation"), str(task_id), index
        return None

    def _imagine_body(
        self, request: ImageRequest, spec: ModelSpec, reference_urls: list[str]
    ) -> tuple[dict[str, Any], list[str]]:
        prompt, warnings = midjourney_prompt(
            request, version=spec.wire.get("version"), reference_urls=reference_urls
        )
        body: dict[str, Any] = {
            "prompt": prompt,
            "base64Array": [_data_url(img) for img in request.images],
        }
        if request.provider_options.get("notify_hook"):
            body["notifyHook"] = request.provider_options["notify_hook"]
        return body, warnings

    def _blend_body(self, request: ImageRequest) -> dict[str, Any]:
        dims = request.dimensions()
        ratio = (dims[0] / dims[1]) if dims else 1.0
        if request.aspect_ratio:
            w, _, h = request.aspect_ratio.partition(":")
            ratio = float(w) / float(h)
        shape = "SQUARE" if abs(ratio - 1) < 0.2 else ("LANDSCAPE" if ratio > 1 else "PORTRAIT")
        return {"base64Array": [_data_url(img) for img in request.images], "dimensions": shape}

    def native_request(
        self, op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> dict[str, Any]:
        self._check_options(request, spec)
        action = self._task_action(op, request)
        if action:
            kind, task_id, index = action
            custom = f"{ACTION_PREFIX[kind]}{index}::<hash from the task's buttons>"
            return {
                "method": "POST",
                "path": "/mj/submit/action",
                "json": {"customId": custom, "taskId": task_id},
            }
        if op == Operation.VARIATION:
            body = self._blend_body(request)
            body["base64Array"] = [f"<image {i + 1}>" for i in range(len(body["base64Array"]))]
            return {"method": "POST", "path": "/mj/submit/blend", "json": body}
        urls = [
            f"<uploaded {ref.kind} reference {i + 1}>" for i, ref in enumerate(request.references)
        ]
        body, _ = self._imagine_body(request, spec, urls)
        body["base64Array"] = [f"<image {i + 1}>" for i in range(len(body["base64Array"]))]
        return {"method": "POST", "path": "/mj/submit/imagine", "json": body}

    # -- the flow ------------------------------------------------------------------------------
    def flow(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> Flow:
        self._check_options(request, spec)
        warnings: list[str] = []
        action = self._task_action(op, request)
        if action:
            task_id = yield from self._submit_action(*action, pause=self._interval(request))
        elif op == Operation.VARIATION:
            if not 2 <= len(request.images) <= 5:
                raise errors.InvalidRequestError(
                    "Midjourney blends two to five images, or varies a cell of an earlier task (task_id, index).",
                    param="image",
                )
            task_id = yield from self._submit(
                "/mj/submit/blend", self._blend_body(request), self._interval(request)
            )
        else:
            urls = (
                (yield from self._upload([r.image for r in request.references]))
                if request.references
                else []
            )
            body, warnings = self._imagine_body(request, spec, urls)
            task_id = yield from self._submit("/mj/submit/imagine", body, self._interval(request))
        yield Submitted(self.encode_handle(id=task_id))
        return (yield from self._follow(task_id, request, warnings))

    def resume_flow(
        self, op: Operation, request: ImageRequest, spec: ModelSpec, handle: str
    ) -> Flow | None:
        self._check_options(request, spec)
        task_id = str(self.decode_handle(handle)["id"])
        warnings: list[str] = []
        if self._task_action(op, request) is None and op != Operation.VARIATION:
            # The imagine prompt's translation notes, as the first run logged them; the
            # reference URLs (uploaded then) only count here, not their addresses.
            urls = [f"<reference {i + 1}>" for i in range(len(request.references))]
            _, warnings = midjourney_prompt(
                request, version=spec.wire.get("version"), reference_urls=urls
            )
        return self._follow(task_id, request, warnings)

    def _follow(self, task_id: str, request: ImageRequest, warnings: list[str]) -> Flow:
        """Wait for a submitted task, then download its image (a grid is cut into cells)."""
        task = yield from self._wait(task_id, request)
        fetched: Fetched = yield Download(
            task["imageUrl"]
        )  # image hosts (Discord CDN) get no secret
        image = image_from_bytes(
            fetched.data, revised_prompt=task.get("promptEn") or task.get("prompt")
        )
        single = task.get("action") == "UPSCALE"
        images = [image] if single else split_grid(image, request.n)
        return ProviderOutput(
            images=images, request_id=task_id, warnings=warnings, raw={"task": task}
        )

    def _interval(self, request: ImageRequest | None) -> float:
        opts = request.provider_options if request else {}
        return float(opts.get("poll_interval", self.options.get("poll_interval", 3.0)))

    def _submit(self, path: str, body: dict[str, Any], pause: float = 1.0) -> Any:
        response: httpx.Response = yield self._post(path, body)
        for _ in range(RATE_LIMIT_RETRIES):
            # A 429 or a full queue (code 23) means nothing was queued, so resubmitting is safe.
            if response.status_code != 429 and _code(response) != QUEUE_FULL_CODE:
                break
            yield Sleep(parse_retry_after(response.headers) or pause)
            response = yield self._post(path, body)
        if response.status_code >= 400:
            raise self._http_error(response)
        data = response.json()
        code = data.get("code")
        if code == QUEUE_FULL_CODE:
            raise errors.RateLimitError(
                f"midjourney: {data.get('description') or 'the proxy queue is full'}.",
                provider=self.name,
                status=200,
            )
        if code == BANNED_CODE:
            word = (data.get("properties") or {}).get("bannedWord")
            raise errors.ContentPolicyError(
                f"midjourney: the prompt contains a banned word{f' ({word})' if word else ''}.",
                provider=self.name,
            )
        if code not in OK_CODES or not data.get("result"):
            raise errors.ProviderRejectedError(
                f"midjourney: {data.get('description') or 'the proxy refused the task'} (code {code}).",
                status=response.status_code,
                provider=self.name,
            )
        return str(data["result"])

    def _upload(self, images: list[ImageInput]) -> Any:
        response: httpx.Response = yield self._post(
            "/mj/submit/upload-discord-images", {"base64Array": [_data_url(i) for i in images]}
        )
        if response.status_code >= 400:
            raise self._http_error(response)
        data = response.json()
        urls = data.get("result")
        if (
            data.get("code") not in OK_CODES
            or not isinstance(urls, list)
            or len(urls) != len(images)
        ):
            raise errors.ProviderRejectedError(
                f"midjourney: uploading the reference images failed ({data.get('description') or 'no URLs returned'}).",
                provider=self.name,
            )
        return [str(u) for u in urls]

    def _submit_action(self, kind: str, task_id: str, index: int, pause: float = 1.0) -> Any:
        task = yield from self._fetch(task_id)
        prefix = f"{ACTION_PREFIX[kind]}{index}::" if kind != "reroll" else ACTION_PREFIX[kind]
        custom = next(
            (
                b["customId"]
                for b in task.get("buttons") or []
                if str(b.get("customId", "")).startswith(prefix)
            ),
            None,
        )
        if custom is None:
            raise errors.InvalidRequestError(
                f"midjourney task {task_id} offers no {kind} {index or ''} button (status {task.get('status')}).".replace(
                    "  ", " "
                ),
                param="provider_options.task_id",
                hint="Use the request_id of a finished imagine, variation or reroll.",
            )
        return (
            yield from self._submit(
                "/mj/submit/action", {"customId": custom, "taskId": task_id}, pause
            )
        )

    def _fetch(self, task_id: str) -> Any:
        response: httpx.Response = yield Send(
            build_request(
                "GET", f"{self.base_url}/mj/task/{task_id}/fetch", headers=self._headers()
            )
        )
        if response.status_code == 404:
            raise errors.InvalidRequestError(
                f"midjourney: no task {task_id}.", param="provider_options.task_id"
            )
        if response.status_code >= 400:
            raise self._http_error(response)
        try:
            task = response.json()
        except ValueError:
            task = None
        if not isinstance(task, dict):
            raise errors.ProviderError(
                f"midjourney: task {task_id} could not be read.", provider=self.name
            )
        return task

    def _wait(self, task_id: str, request: ImageRequest) -> Any:
        opts = request.provider_options
        interval = self._interval(request)
        timeout = float(opts.get("poll_timeout", self.options.get("poll_timeout", 600.0)))
        started = time.monotonic()
        while True:
            task = yield from self._fetch(task_id)
            status = task.get("status")
            progress = str(task.get("progress") or "0%").rstrip("%")
            fraction = float(progress) / 100 if progress.replace(".", "", 1).isdigit() else None
            yield Progress(fraction, f"midjourney {status} {task.get('progress') or ''}".strip())
            if status == "SUCCESS":
                if not task.get("imageUrl") and task.get("action") != "DESCRIBE":
                    raise errors.JobFailedError(
                        f"midjourney: task {task_id} succeeded without an image.",
                        provider=self.name,
                    )
                return task
            if status in ("FAILURE", "CANCEL"):
                reason = task.get("failReason") or status.lower()
                raise job_failure(self.name, "task", task_id, reason, POLICY_HINTS)
            if time.monotonic() - started > timeout:
                raise errors.ProviderTimeoutError(
                    f"midjourney: task {task_id} did not finish within {timeout:g}s (last status {status}).",
                    provider=self.name,
                    request_id=task_id,
                    hint="The proxy has no cancel: the job may still finish on your account.",
                )
            yield Sleep(interval)

    def describe_flow(self, image: ImageInput, request: ImageRequest | None = None) -> Flow:
        """Four prompt suggestions for ``image`` (``output.raw["descriptions"]``)."""
        task_id = yield from self._submit(
            "/mj/submit/describe", {"base64": _data_url(image)}, self._interval(request)
        )
        task = yield from self._wait(task_id, request or ImageRequest())
        text = str((task.get("properties") or {}).get("finalPrompt") or task.get("prompt") or "")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        cleaned = [line.lstrip("1234️⃣ ").strip() for line in lines]
        return ProviderOutput(
            images=[], request_id=task_id, raw={"descriptions": cleaned, "task": task}
        )

    def _http_error(self, response: httpx.Response) -> errors.LimnerError:
        try:
            body = response.json()
        except ValueError:
            body = {}
        message = (
            (body.get("description") or body.get("message") or body.get("error"))
            if isinstance(body, dict)
            else None
        )
        return map_http_error(self.name, response, message)


def describe(
    image: Any, *, model: str = "midjourney:v7", client: Any = None, poll_interval: float = 3.0
) -> list[str]:
    """Describe an image (path, bytes or PIL image) with Midjourney's /describe."""
    from limner.client import Limner
    from limner.http import FlowRunner
    from limner.images import load_image

    owned = client is None
    engine: Limner = client or Limner()
    try:
        spec = engine.resolve(model)
        provider = engine.provider(spec.provider)
        if not isinstance(provider, MidjourneyProvider):
            raise errors.InvalidRequestError(
                f"{spec.ref} is not a Midjourney model.", param="model"
            )
        runner = FlowRunner(
            engine.http, provider.name, retry=engine.retry, fetcher=engine._fetcher(provider)
        )
        request = ImageRequest(provider_options={"poll_interval": poll_interval})
        output = runner.run(provider.describe_flow(load_image(image), request))
        return list(output.raw["descriptions"])
    finally:
        if owned:
            engine.close()
