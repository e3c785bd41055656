"""An emulator of the ComfyUI server API: ``POST /prompt`` (API-format workflows, validated
node by node), ``GET /history[/{id}]`` (empty ``{}`` while a prompt runs, as ComfyUI does),
``GET /view``, ``POST /upload/image``, ``POST /interrupt``, ``GET|POST /queue``,
``GET /object_info``, ``GET /system_stats`` and the ``/ws?clientId=`` websocket (``progress``
messages per KSampler step, then ``executing`` with ``node: null``). Every route is also under
``/api``.

A prompt "runs" for ``run_seconds`` (``POST /_emulator/comfyui {"run_seconds": 2}``; the shared
``latency`` setting delays every request instead) and renders one image per
batch item from the positive prompt, seed and size; a prompt containing the blocked word
ends in ``execution_error``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from limner.emulators.common import (
    BLOCKED_WORD,
    EmulatorState,
    JSONResponse,
    emulator_app,
    render_image,
)

__all__ = ["BASE_PATH", "NODE_INPUTS", "create_app"]

BASE_PATH = ""
# The core nodes the emulator knows, with their required inputs.
NODE_INPUTS: dict[str, set[str]] = {
    "CheckpointLoaderSimple": {"ckpt_name"},
    "CLIPTextEncode": {"text", "clip"},
    "EmptyLatentImage": {"width", "height", "batch_size"},
    "KSampler": {
        "seed",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "denoise",
        "model",
        "positive",
        "negative",
        "latent_image",
    },
    "VAEDecode": {"samples", "vae"},
    "VAEEncode": {"pixels", "vae"},
    "SaveImage": {"filename_prefix", "images"},
    "LoadImage": {"image"},
    "ImageToMask": {"channel", "image"},
    "SetLatentNoiseMask": {"samples", "mask"},
    "RepeatLatentBatch": {"samples", "amount"},
    "LoraLoader": {"lora_name", "strength_model", "strength_clip", "model", "clip"},
    "ControlNetLoader": {"control_net_name"},
    "ControlNetApplyAdvanced": {
        "positive",
        "negative",
        "control_net",
        "image",
        "strength",
        "start_percent",
        "end_percent",
    },
    "FluxGuidance": {"guidance", "conditioning"},
}
SAMPLERS = [
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "lms",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_sde",
    "ddim",
    "uni_pc",
    "lcm",
]
SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta"]


def error_body(status: int, message: str) -> dict[str, Any]:
    return {
        "error": {"type": "server_error", "message": message, "details": "", "extra_info": {}},
        "node_errors": {},
    }


def _node_errors(workflow: Any) -> dict[str, Any]:
    if not isinstance(workflow, dict) or not workflow:
        return {"": {"errors": [{"type": "invalid_prompt", "message": "prompt is not a workflow"}]}}
    found: dict[str, Any] = {}
    for node_id, node in workflow.items():
        problems = []
        kind = node.get("class_type") if isinstance(node, dict) else None
        if kind not in NODE_INPUTS:
            problems.append(
                {
                    "type": "invalid_prompt",
                    "message": f"Cannot execute because node {kind} does not exist.",
                }
            )
        else:
            inputs = node.get("inputs", {})
            problems += [{"type": "required_input_missing", "message": f"Required input is missing: {name}"}
                         for name in sorted(NODE_INPUTS[kind] - set(inputs))]  # fmt: skip
            for name, value in inputs.items():
                if isinstance(value, list) and len(value) == 2 and str(value[0]) not in workflow:
                    problems.append(
                        {
                            "type": "bad_linked_input",
                            "message": f"{name} links to missing node {value[0]}",
                        }
                    )
            if kind == "KSampler" and inputs.get("sampler_name") not in SAMPLERS:
                problems.append(
                    {
                        "type": "value_not_in_list",
                        "message": f"sampler_name: {inputs.get('sampler_name')}",
                    }
                )
            if kind == "KSampler" and inputs.get("scheduler") not in SCHEDULERS:
                problems.append(
                    {
                        "type": "value_not_in_list",
                        "message": f"scheduler: {inputs.get('scheduler')}",
                    }
                )
        if problems:
            found[str(node_id)] = {"errors": problems, "class_type": kind}
    if not any(
        isinstance(n, dict) and n.get("class_type") == "SaveImage" for n in workflow.values()
    ):
        found.setdefault("", {"errors": []})["errors"].append(
            {"type": "prompt_no_outputs", "message": "Prompt has no outputs"}
        )
    return found


def _trace(workflow: dict[str, Any], ref: Any, kind: str) -> dict[str, Any] | None:
    """Follow links from ``ref`` back to the first node of class ``kind``."""
    seen = 0
    while isinstance(ref, list) and seen < 64:
        node = workflow.get(str(ref[0]), {})
        if node.get("class_type") == kind:
            return dict(node)
        inputs = node.get("inputs", {})
        ref = next(
            (
                v
                for k, v in inputs.items()
                if k in ("conditioning", "positive", "samples", "images", "model")
            ),
            None,
        )
        seen += 1
    return None


def _render(workflow: dict[str, Any]) -> tuple[list[tuple[str, bytes]], str | None]:
    """The output images of the workflow's SaveImage nodes, or an error message."""
    outputs: list[tuple[str, bytes]] = []
    sampler: dict[str, Any] = next(
        (n["inputs"] for n in workflow.values() if n.get("class_type") == "KSampler"), {}
    )
    positive = _trace(workflow, sampler.get("positive"), "CLIPTextEncode") or {
        "inputs": {"text": ""}
    }
    text = str(positive["inputs"].get("text", ""))
    if BLOCKED_WORD in text:
        return [], "the prompt was refused by a content filter node"
    latent = next(
        (n["inputs"] for n in workflow.values() if n.get("class_type") == "EmptyLatentImage"), None
    )
    width, height, batch = (
        (int(latent["width"]), int(latent["height"]), int(latent["batch_size"]))
        if latent
        else (512, 512, 1)
    )
    seed = int(sampler.get("seed", 0))
    for node_id, node in workflow.items():
        if node.get("class_type") == "SaveImage":
            prefix = str(node["inputs"].get("filename_prefix", "ComfyUI"))
            for k in range(batch):
                name = f"{prefix}_{uuid.uuid4().hex[:5]}_{node_id}_{k:05d}_.png"
                outputs.append((name, render_image(text, seed + k, width, height)))
    return outputs, None


class _Server:
    """The emulated server: queued prompts (in ``state.jobs``), stored files, the run time."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.files: dict[tuple[str, str], bytes] = {}
        self.number = 0
        self.run_seconds = 0.0

    def finish(self, prompt_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.state.jobs[prompt_id]
        if job["status"] != "running" or time.monotonic() < job["ready_at"]:
            return job
        images, error = _render(job["workflow"])
        outputs: dict[str, Any] = {}
        for name, data in images:
            self.files[("output", name)] = data
            node_id = name.split("_")[-3]
            entry = {"filename": name, "subfolder": "", "type": "output"}
            outputs.setdefault(node_id, {"images": []})["images"].append(entry)
        job.update(status="error" if error else "success", error=error, outputs=outputs)
        return job

    def history_item(self, prompt_id: str) -> dict[str, Any] | None:
        job = self.finish(prompt_id)
        if job["status"] in ("running", "queued"):
            return None
        last = {
            "error": [
                "execution_error",
                {
                    "prompt_id": prompt_id,
                    "exception_message": job.get("error"),
                    "node_type": "KSampler",
                },
            ],
            "interrupted": ["execution_interrupted", {"prompt_id": prompt_id}],
        }.get(job["status"], ["execution_success", {"prompt_id": prompt_id}])
        ok = job["status"] == "success"
        return {
            "prompt": [job["number"], prompt_id, job["workflow"], {}, list(job.get("outputs", {}))],
            "outputs": job.get("outputs", {}),
            "status": {"status_str": "success" if ok else "error", "completed": ok,
                       "messages": [["execution_start", {"prompt_id": prompt_id}], last]},
        }  # fmt: skip

    async def post_prompt(self, request: Request) -> Response:
        body = await request.json()
        workflow = body.get("prompt")
        node_errors = _node_errors(workflow)
        if node_errors:
            error = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                     "details": "", "extra_info": {}}  # fmt: skip
            return JSONResponse({"error": error, "node_errors": node_errors}, status_code=400)
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        self.number += 1
        now = time.monotonic()
        self.state.jobs[prompt_id] = {"workflow": workflow, "status": "running", "number": self.number,
                                      "started_at": now, "ready_at": now + self.run_seconds,
                                      "client_id": body.get("client_id")}  # fmt: skip
        return JSONResponse({"prompt_id": prompt_id, "number": self.number, "node_errors": {}})

    async def history_one(self, request: Request) -> Response:
        prompt_id = request.path_params["prompt_id"]
        item = self.history_item(prompt_id) if prompt_id in self.state.jobs else None
        return JSONResponse({prompt_id: item} if item else {})

    async def history_all(self, request: Request) -> Response:
        items = {pid: self.history_item(pid) for pid in list(self.state.jobs)}
        return JSONResponse({k: v for k, v in items.items() if v})

    async def view(self, request: Request) -> Response:
        key = (request.query_params.get("type", "output"), request.query_params.get("filename", ""))
        if key not in self.files:
            return Response(status_code=404)
        return Response(self.files[key], media_type="image/png")

    async def upload(self, request: Request) -> Response:
        form = await request.form()
        upload_file: Any = form.get("image")
        if upload_file is None or not hasattr(upload_file, "read"):
            return Response(status_code=400)
        name = str(upload_file.filename or "upload.png")
        kind = str(form.get("type") or "input")
        self.files[(kind, name)] = await upload_file.read()
        return JSONResponse(
            {"name": name, "subfolder": str(form.get("subfolder") or ""), "type": kind}
        )

    async def interrupt(self, request: Request) -> Response:
        body = await request.json() if await request.body() else {}
        for prompt_id, job in self.state.jobs.items():
            if job["status"] == "running" and body.get("prompt_id") in (None, prompt_id):
                job["status"] = "interrupted"
        return Response(status_code=200)

    async def queue(self, request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            for prompt_id in body.get("delete", []):
                self.state.jobs.pop(prompt_id, None)
            return Response(status_code=200)
        running = [[j["number"], pid, j["workflow"], {}, []] for pid, j in list(self.state.jobs.items())
                   if self.finish(pid)["status"] == "running"]  # fmt: skip
        return JSONResponse({"queue_running": running, "queue_pending": []})

    async def object_info(self, request: Request) -> Response:
        return JSONResponse({name: {"input": {"required": {k: [] for k in sorted(inputs)}}, "output_node": name == "SaveImage"}
                             for name, inputs in NODE_INPUTS.items()})  # fmt: skip

    async def system_stats(self, request: Request) -> Response:
        return JSONResponse(
            {
                "system": {"comfyui_version": "0.3.64-emulator", "python_version": "3.11"},
                "devices": [],
            }
        )

    def _progress_messages(
        self, client_id: str | None, sent: dict[str, int]
    ) -> list[dict[str, Any]]:
        """The websocket messages due for ``client_id``'s prompts: KSampler steps, then done."""
        messages = []
        for prompt_id in list(self.state.jobs):
            job = self.finish(prompt_id)
            if job.get("client_id") != client_id or sent.get(prompt_id) == -1:
                continue
            if job["status"] != "running":
                messages.append(
                    {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}}
                )
                sent[prompt_id] = -1
                continue
            sampler: dict[str, Any] = next(
                (
                    n["inputs"]
                    for n in job["workflow"].values()
                    if n.get("class_type") == "KSampler"
                ),
                {},
            )
            steps = int(sampler.get("steps", 20))
            span = max(job["ready_at"] - job["started_at"], 1e-6)
            value = min(int(steps * (time.monotonic() - job["started_at"]) / span), steps - 1)
            if value > sent.get(prompt_id, 0):
                sent[prompt_id] = value
                messages.append(
                    {
                        "type": "progress",
                        "data": {"value": value, "max": steps, "prompt_id": prompt_id, "node": "3"},
                    }
                )
        return messages

    async def websocket(self, socket: WebSocket) -> None:
        await socket.accept()
        client_id = socket.query_params.get("clientId")
        await socket.send_json(
            {
                "type": "status",
                "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id},
            }
        )
        sent: dict[str, int] = {}
        try:
            while True:
                for message in self._progress_messages(client_id, sent):
                    await socket.send_json(message)
                try:  # wait a little, noticing at once when the client goes away
                    incoming = await asyncio.wait_for(socket.receive(), timeout=0.05)
                except TimeoutError:
                    continue
                if incoming.get("type") == "websocket.disconnect":
                    return
        except (WebSocketDisconnect, RuntimeError):
            return  # the client went away

    async def settings(self, request: Request) -> Response:
        body = await request.json()
        self.run_seconds = float(body.get("run_seconds", self.run_seconds))
        return JSONResponse({"run_seconds": self.run_seconds})


def create_app(state: EmulatorState | None = None) -> Any:
    state = state or EmulatorState()
    server = _Server(state)
    routes: list[Any] = [Route("/_emulator/comfyui", server.settings, methods=["POST"])]
    for prefix in ("", "/api"):
        routes += [
            Route(prefix + "/prompt", server.post_prompt, methods=["POST"]),
            Route(prefix + "/history/{prompt_id}", server.history_one, methods=["GET"]),
            Route(prefix + "/history", server.history_all, methods=["GET"]),
            Route(prefix + "/view", server.view, methods=["GET"]),
            Route(prefix + "/upload/image", server.upload, methods=["POST"]),
            Route(prefix + "/interrupt", server.interrupt, methods=["POST"]),
            Route(prefix + "/queue", server.queue, methods=["GET", "POST"]),
            Route(prefix + "/object_info", server.object_info, methods=["GET"]),
            Route(prefix + "/system_stats", server.system_stats, methods=["GET"]),
            WebSocketRoute(prefix + "/ws", server.websocket),
        ]
    return emulator_app(routes, state, error_body)
