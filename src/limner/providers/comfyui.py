"""The ``comfyui:`` provider: queue a workflow on a running ComfyUI server.

``-m comfyui:<checkpoint file>`` builds an API-format workflow from the request (the same one
``limner export comfyui`` writes) with core nodes; ``provider_options={"workflow": {...}}``
sends a workflow of your own as it is. Inputs are uploaded first (``/upload/image``), the
prompt queued (``POST /prompt``), ``/history/{id}`` polled until it holds the outputs (it is
``{}`` while the prompt runs; between polls the ``/ws`` feed gives per-step progress), and the
images fetched from ``/view``. On the deadline the
prompt is interrupted and removed from the queue. A queued prompt is announced with
``Submitted`` (handle: prompt id and client id); ``resume_flow`` waits for it again after a
crash, reading the queued workflow back from the history.

The server is ``LIMNER_COMFYUI_BASE_URL`` (default http://127.0.0.1:8188). ComfyUI has no
authentication, so no key is needed or sent.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from collections.abc import Callable, Generator
from typing import Any
from urllib.parse import urlencode

import httpx

from limner import errors
from limner.catalog import ModelSpec, Price, SizeRule
from limner.flows import (
    DeadlineExceeded,
    Download,
    Flow,
    Progress,
    ProviderOutput,
    Run,
    Send,
    Sleep,
    Submitted,
)
from limner.http import build_request, map_http_error
from limner.images import encode_mask
from limner.providers.base import Provider, image_from_bytes
from limner.types import ImageRequest, Operation

__all__ = ["ComfyUIProvider"]

POLL_SECONDS = 0.25
OPTIONS = {"workflow", "scheduler", "family", "loras", "filename_prefix"}


class ComfyUIProvider(Provider):
    name = "comfyui"
    display_name = "ComfyUI server"
    needs_key = False
    default_base_url = "http://127.0.0.1:8188"
    base_url_envs = ("COMFYUI_URL",)

    @classmethod
    def spec_for(cls, model_id: str) -> ModelSpec | None:
        """``comfyui:<checkpoint>``: any checkpoint the server has (it validates the name)."""
        if not model_id:
            return None
        return ModelSpec(
            id=model_id, provider="comfyui", name=model_id, description=f"{model_id} on a ComfyUI server",
            operations=[Operation.GENERATE, Operation.EDIT, Operation.INPAINT, Operation.VARIATION],
            size_rule=SizeRule(multiple_of=8, min_edge=64, max_edge=8192), max_n=8,
            negative_prompt=True, seed=True, steps=True, guidance=True, mask_convention="white",
            licence="see the checkpoint's model card", self_hostable=True, price=Price(kind="free"),
        )  # fmt: skip

    # -- building the workflow ----------------------------------------------------------------
    def _workflow(
        self, op: Operation, request: ImageRequest, spec: ModelSpec, names: dict[str, str]
    ) -> dict[str, Any]:
        from limner.local.comfyui import workflow_for

        options = request.provider_options
        unknown = set(options) - OPTIONS
        if unknown:
            raise errors.InvalidRequestError(
                f"comfyui does not take option(s) {', '.join(sorted(unknown))}.", param="provider_options",
                hint=f"Allowed: {', '.join(sorted(OPTIONS))}.",
            )  # fmt: skip
        if "workflow" in options:
            workflow = options["workflow"]
            if not isinstance(workflow, dict):
                raise errors.InvalidRequestError(
                    "The workflow option must be an API-format workflow object.", param="workflow"
                )
            return workflow
        width, height = request.dimensions() or (
            (request.images[0].width, request.images[0].height) if request.images else (1024, 1024)
        )
        seed = request.seed if request.seed is not None else random.randrange(2**31)
        loras = [(str(x).rpartition(":")[0] or str(x), float(str(x).rpartition(":")[2] or 1)) if ":" in str(x) else (str(x), 1.0)
                 for x in options.get("loras", [])]  # fmt: skip
        return workflow_for(
            checkpoint=spec.id, family=str(options.get("family", "sd")), prompt=request.prompt,
            negative_prompt=request.negative_prompt, seed=seed, steps=request.steps or 20,
            cfg=request.guidance if request.guidance is not None else 7.0, width=width, height=height,
            n=request.n, scheduler=options.get("scheduler"), operation=op.value, strength=request.strength,
            image_name=names.get("image"), mask_name=names.get("mask"), loras=loras,
            filename_prefix=str(options.get("filename_prefix", "limner")),
        )  # fmt: skip

    def native_request(
        self, op: Operation, request: ImageRequest, spec: ModelSpec
    ) -> dict[str, Any]:
        names = {"image": "<uploaded image>"} if request.images else {}
        if request.mask:
            names["mask"] = "<uploaded mask>"
        return {
            "method": "POST",
            "path": "/prompt",
            "json": {"prompt": self._workflow(op, request, spec, names), "client_id": "<uuid>"},
        }

    # -- the flow ------------------------------------------------------------------------------
    def _upload(self, name: str, data: bytes) -> Generator[Any, Any, str]:
        files = {"image": (name, data, "image/png")}
        response: httpx.Response = yield Send(build_request(
            "POST", f"{self.base_url}/upload/image", files=files, data={"type": "input", "overwrite": "true"}))  # fmt: skip
        if response.status_code >= 400:
            raise map_http_error(self.name, response, "the image upload was refused")
        return str(response.json().get("name", name))

    def flow(self, op: Operation, request: ImageRequest, spec: ModelSpec) -> Flow:
        names: dict[str, str] = {}
        stem = uuid.uuid4().hex[:12]
        if request.images:
            names["image"] = yield from self._upload(f"limner-{stem}.png", request.images[0].data)
        if request.mask is not None:
            names["mask"] = yield from self._upload(
                f"limner-{stem}-mask.png", encode_mask(request.mask, "white")
            )
        workflow = self._workflow(op, request, spec, names)
        client_id = uuid.uuid4().hex
        return (
            yield from self._watching(
                client_id, lambda socket: self._submit(workflow, client_id, socket)
            )
        )

    def resume_flow(
        self, op: Operation, request: ImageRequest, spec: ModelSpec, handle: str
    ) -> Flow | None:
        fields = self.decode_handle(handle)
        # The same client id: the server sends the prompt's progress to that socket.
        client_id = str(fields.get("client_id") or uuid.uuid4().hex)
        prompt_id = str(fields["id"])
        return self._watching(client_id, lambda socket: self._follow(prompt_id, socket, None))

    def _watching(self, client_id: str, follow: Callable[[_ProgressSocket | None], Flow]) -> Flow:
        """Run ``follow`` with the progress socket of ``client_id`` open (when it opens)."""
        socket: _ProgressSocket | None = yield Run(
            lambda: _ProgressSocket.open(self.base_url, client_id)
        )
        try:
            return (yield from follow(socket))
        finally:
            if socket is not None:
                socket.close()

    def _submit(
        self, workflow: dict[str, Any], client_id: str, socket: _ProgressSocket | None
    ) -> Flow:
        body = {"prompt": workflow, "client_id": client_id}
        response: httpx.Response = yield Send(
            build_request("POST", f"{self.base_url}/prompt", json=body), retry=False
        )
        if response.status_code == 400:
            raise _validation_error(response)
        if response.status_code >= 400:
            raise map_http_error(self.name, response, None)
        prompt_id = str(response.json()["prompt_id"])
        yield Submitted(self.encode_handle(id=prompt_id, client_id=client_id))
        return (yield from self._follow(prompt_id, socket, workflow))

    def _follow(
        self, prompt_id: str, socket: _ProgressSocket | None, workflow: dict[str, Any] | None
    ) -> Flow:
        """Wait for a queued prompt and fetch its images; at the deadline interrupt it."""
        try:
            item = yield from self._wait(prompt_id, socket)
        except DeadlineExceeded:
            yield Send(
                build_request("POST", f"{self.base_url}/interrupt", json={"prompt_id": prompt_id}),
                retry=False,
            )
            yield Send(
                build_request("POST", f"{self.base_url}/queue", json={"delete": [prompt_id]}),
                retry=False,
            )
            raise
        images = []
        for output in item.get("outputs", {}).values():
            for image in output.get("images", []):
                query = urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                                   "type": image.get("type", "output")})  # fmt: skip
                fetched = yield Download(f"{self.base_url}/view?{query}")
                images.append(image_from_bytes(fetched.data))
        if not images:
            raise errors.JobFailedError(
                f"comfyui: prompt {prompt_id} finished without images.",
                provider=self.name,
                request_id=prompt_id,
            )
        if workflow is None:  # resumed: the history holds the workflow that was queued
            queued = item.get("prompt")
            workflow = queued[2] if isinstance(queued, list) and len(queued) > 2 else None
        return ProviderOutput(
            images=images,
            request_id=prompt_id,
            cost_usd=0.0,
            raw={"workflow": workflow} if isinstance(workflow, dict) else {},
        )

    def _wait(
        self, prompt_id: str, socket: _ProgressSocket | None
    ) -> Generator[Any, Any, dict[str, Any]]:
        polls = 0
        while True:
            response: httpx.Response = yield Send(
                build_request("GET", f"{self.base_url}/history/{prompt_id}")
            )
            if response.status_code >= 400:
                raise map_http_error(self.name, response, None, request_id=prompt_id)
            item = response.json().get(prompt_id)
            if item:  # {} while the prompt is queued or running
                status = item.get("status", {})
                if status.get("status_str") == "error" or not status.get("completed", True):
                    raise errors.JobFailedError(
                        f"comfyui: prompt {prompt_id} failed: {_error_message(status)}",
                        provider=self.name, request_id=prompt_id,
                    )  # fmt: skip
                return item
            polls += 1
            if socket is None:
                yield Progress(None, f"running on ComfyUI ({polls * POLL_SECONDS:.0f}s)")
                yield Sleep(POLL_SECONDS)
                continue
            # Between polls, wait on the websocket: per-step progress, or "done" at once.
            event = yield Run(lambda: socket.next_event(prompt_id, POLL_SECONDS * 4))
            if event is not None and event[0] == "progress":
                yield Progress(event[1] / max(event[2], 1), f"step {event[1]}/{event[2]}")


class _ProgressSocket:
    """ComfyUI's ``/ws?clientId=`` feed, read with the websockets package when it is installed;
    without it (or when the socket cannot open) the flow polls ``/history`` alone."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    @classmethod
    def open(cls, base_url: str, client_id: str) -> _ProgressSocket | None:
        try:
            from websockets.exceptions import WebSocketException
            from websockets.sync.client import connect
        except ImportError:
            return None
        url = "ws" + base_url.removeprefix("http") + f"/ws?clientId={client_id}"
        try:
            # Entered like a context manager, which newer websockets versions require.
            return cls(connect(url, open_timeout=5, close_timeout=1).__enter__())
        except (OSError, WebSocketException, TimeoutError):
            return None

    def next_event(self, prompt_id: str, timeout: float) -> tuple[str, int, int] | None:
        """("progress", value, max), ("done", 0, 0), or None when nothing came in ``timeout``."""
        from websockets.exceptions import ConnectionClosed

        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                raw = self.connection.recv(timeout=left)
            except (TimeoutError, ConnectionClosed):
                return None
            if isinstance(raw, bytes):
                continue  # binary preview frames
            message = json.loads(raw)
            data = message.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if message.get("type") == "progress":
                return ("progress", int(data.get("value", 0)), int(data.get("max", 1)))
            if (
                message.get("type") == "executing"
                and data.get("node") is None
                and data.get("prompt_id")
            ):
                return ("done", 0, 0)
        return None

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a broken socket may raise anything
            self.connection.close()


def _error_message(status: dict[str, Any]) -> str:
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return str(data.get("exception_message", "execution error"))
        if kind == "execution_interrupted":
            return "interrupted"
    return "execution error"


def _validation_error(response: httpx.Response) -> errors.LimnerError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    details = []
    for node_id, node in (body.get("node_errors") or {}).items():
        for err in node.get("errors", []):
            details.append(
                f"node {node_id or '-'} ({node.get('class_type', '?')}): {err.get('message')}"
            )
    message = (body.get("error") or {}).get("message", "the workflow was refused")
    return errors.ProviderRejectedError(
        f"comfyui: {message}" + (": " + "; ".join(details[:5]) if details else ""),
        status=400,
        provider="comfyui",
    )
