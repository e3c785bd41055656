"""An emulator of the midjourney-proxy API (novicezk/midjourney-proxy and its forks).

Routes under ``/mj``: ``submit/imagine``, ``submit/action`` (``customId`` from a task's
buttons), ``submit/change``, ``submit/describe``, ``submit/blend``,
``submit/upload-discord-images``, ``task/{id}/fetch``, ``task/list-by-condition``.
Submits answer ``{"code": 1, "description", "result": "<task id>"}``; code 22 when queued,
23 when the queue is full, 24 for a banned word (``BLOCKED_WORD``).

Tasks advance one status per fetch: NOT_START -> SUBMITTED -> IN_PROGRESS (with a progress
percentage) -> SUCCESS, or FAILURE for a prompt containing ``fail-task``. Tune it with
``POST /_emulator/midjourney {"polls_to_finish": 4, "queue_size": null, "secret": ""}``
(``secret`` "" accepts any non-empty ``mj-api-secret``; a string requires exactly it; null
turns auth off). Images are 2x2 grids served from the expiring delivery path.
"""

from __future__ import annotations

import binascii
import hashlib
import io
import re
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from limner import codec
from limner.emulators.common import (
    BLOCKED_WORD,
    EmulatorState,
    JSONResponse,
    emulator_app,
    render_image,
)

__all__ = ["BASE_PATH", "create_app"]

BASE_PATH = ""

TILE_EDGE = 256
FAIL_WORD = "fail-task"
KINDS = {"upsample": "UPSCALE", "variation": "VARIATION", "reroll": "REROLL"}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"code": status, "description": message, "result": None}


def _ok(
    task_id: str, code: int = 1, description: str = "Submit success", **properties: Any
) -> JSONResponse:
    return JSONResponse(
        {"code": code, "description": description, "result": task_id, "properties": properties}
    )


def _refuse(code: int, description: str, **properties: Any) -> JSONResponse:
    return JSONResponse(
        {"code": code, "description": description, "result": None, "properties": properties}
    )


def _tile_size(prompt: str) -> tuple[int, int]:
    match = re.search(r"--(?:ar|aspect)\s+(\d+):(\d+)", prompt)
    w, h = (int(match.group(1)), int(match.group(2))) if match else (1, 1)
    if w >= h:
        return TILE_EDGE, max(TILE_EDGE * h // w // 8 * 8, 8)
    return max(TILE_EDGE * w // h // 8 * 8, 8), TILE_EDGE


def _grid(prompt: str, salt: str, size: tuple[int, int]) -> bytes:
    from PIL import Image

    tw, th = size
    grid = Image.new("RGB", (tw * 2, th * 2))
    for i in range(4):
        tile = Image.open(io.BytesIO(render_image(f"{prompt}|{salt}", i, tw, th)))
        grid.paste(tile, ((i % 2) * tw, (i // 2) * th))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()


def _decode_data_url(value: str) -> bytes:
    payload = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        return codec.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("base64 is not valid") from None


def _buttons(task: dict[str, Any]) -> list[dict[str, Any]]:
    digest = task["id"]
    if task["action"] == "UPSCALE":
        names = [
            ("upsample_v7_2x_subtle", 1, "Upscale (Subtle)"),
            ("low_variation", 1, "Vary (Subtle)"),
        ]
        return [
            {
                "customId": f"MJ::JOB::{n}::{i}::{digest}::SOLO",
                "emoji": "",
                "label": label,
                "type": 2,
                "style": 2,
            }
            for n, i, label in names
        ]
    buttons = [
        {
            "customId": f"MJ::JOB::upsample::{i}::{digest}",
            "emoji": "",
            "label": f"U{i}",
            "type": 2,
            "style": 2,
        }
        for i in range(1, 5)
    ]
    buttons.append(
        {
            "customId": f"MJ::JOB::reroll::0::{digest}::SOLO",
            "emoji": "🔄",
            "label": "",
            "type": 2,
            "style": 2,
        }
    )
    buttons += [
        {
            "customId": f"MJ::JOB::variation::{i}::{digest}",
            "emoji": "",
            "label": f"V{i}",
            "type": 2,
            "style": 2,
        }
        for i in range(1, 5)
    ]
    return buttons


class Proxy:
    """The proxy's task table and settings."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.tasks: dict[str, dict[str, Any]] = state.jobs
        self.polls_to_finish = 4
        self.queue_size: int | None = None
        self.secret: str | None = ""

    def authorised(self, request: Request) -> bool:
        given = request.headers.get("mj-api-secret")
        if self.secret is None:
            return True
        return bool(given) if self.secret == "" else given == self.secret

    def active(self) -> int:
        return sum(1 for t in self.tasks.values() if t["status"] not in ("SUCCESS", "FAILURE"))

    def create(self, action: str, prompt: str, render: dict[str, Any]) -> tuple[str, int]:
        """Add a task; returns its id and the submit code (1 started, 22 queued)."""
        task_id = str(int(time.time() * 1000)) + uuid.uuid4().hex[:4]
        queued = self.active() > 0
        self.tasks[task_id] = {
            "id": task_id, "action": action, "status": "NOT_START", "prompt": prompt, "promptEn": prompt,
            "description": f"/{action.lower()} {prompt}".strip(), "submitTime": int(time.time() * 1000),
            "startTime": None, "finishTime": None, "progress": "0%", "imageUrl": None, "failReason": None,
            "properties": {"finalPrompt": prompt}, "buttons": [], "fetches": 0, "render": render,
        }  # fmt: skip
        return task_id, 22 if queued else 1

    def advance(self, task: dict[str, Any], base_url: str) -> None:
        if task["status"] in ("SUCCESS", "FAILURE"):
            return
        task["fetches"] += 1
        step, total = task["fetches"], max(self.polls_to_finish, 1)
        if step >= total:
            self.finish(task, base_url)
        elif step == 1:
            task["status"] = "NOT_START"
        elif step == 2:
            task.update(status="SUBMITTED", startTime=int(time.time() * 1000))
        else:
            task.update(status="IN_PROGRESS", progress=f"{round(100 * (step - 2) / (total - 2))}%")

    def finish(self, task: dict[str, Any], base_url: str) -> None:
        now = int(time.time() * 1000)
        if FAIL_WORD in task["prompt"]:
            task.update(
                status="FAILURE",
                failReason="Job failed: the Midjourney bot reported an error",
                finishTime=now,
            )
            return
        render = task["render"]
        if task["action"] == "DESCRIBE":
            salt = render["salt"]
            lines = [
                f"{n}️⃣ a study in colour bands, reference {salt[:6]}, variant {n} --ar 1:1"
                for n in range(1, 5)
            ]
            task["prompt"] = task["properties"]["finalPrompt"] = "\n\n".join(lines)
        elif task["action"] == "UPSCALE":
            tw, th = render["size"]
            data = render_image(f"{render['prompt']}|{render['salt']}", render["index"] - 1, tw, th)
            task["imageUrl"] = self.state.delivery.put(data, "image/png", base_url)
        else:
            data = _grid(render["prompt"], render["salt"], render["size"])
            task["imageUrl"] = self.state.delivery.put(data, "image/png", base_url)
        task.update(status="SUCCESS", progress="100%", finishTime=now)
        if task["action"] != "DESCRIBE":
            task["buttons"] = _buttons(task)

    def public(self, task: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in task.items() if k not in ("fetches", "render")}


class Handlers:
    """The HTTP handlers of the proxy emulator."""

    def __init__(self, state: EmulatorState, proxy: Proxy) -> None:
        self.state, self.proxy = state, proxy

    def guard(self, request: Request) -> JSONResponse | None:
        if not self.proxy.authorised(request):
            return JSONResponse(
                error_body(401, "unauthorized: mj-api-secret is missing or wrong"), status_code=401
            )
        if self.proxy.queue_size is not None and self.proxy.active() >= self.proxy.queue_size:
            return _refuse(
                23, "queue is full, please try again later", numberOfQueues=self.proxy.active()
            )
        return None

    async def imagine(self, request: Request) -> Response:
        if refused := self.guard(request):
            return refused
        body = await request.json()
        prompt = str(body.get("prompt") or "")
        if not prompt:
            return _refuse(4, "prompt cannot be empty")
        if BLOCKED_WORD in prompt:
            return _refuse(
                24, "may contain sensitive words", promptEn=prompt, bannedWord=BLOCKED_WORD
            )
        try:
            images = [_decode_data_url(v) for v in body.get("base64Array") or []]
        except ValueError:
            return _refuse(4, "base64 format error")
        salt = hashlib.sha256(b"".join(images)).hexdigest()[:10] if images else ""
        task_id, code = self.proxy.create(
            "IMAGINE", prompt, {"prompt": prompt, "salt": salt, "size": _tile_size(prompt)}
        )
        return _ok(
            task_id,
            code,
            "Submit success" if code == 1 else "Waiting in queue",
            numberOfQueues=self.proxy.active() - 1,
        )

    def act(self, parent_id: str, kind: str, index: int) -> JSONResponse:
        parent = self.proxy.tasks.get(parent_id)
        if parent is None:
            return _refuse(3, "related task does not exist or has expired")
        if parent["status"] != "SUCCESS":
            return _refuse(4, "related task status error")
        action = KINDS[kind]
        render = dict(parent["render"])
        if action == "UPSCALE":
            render["index"] = index
        else:
            render["salt"] = f"{render['salt']}|{kind}{index}|{uuid.uuid4().hex[:6]}"
        task_id, code = self.proxy.create(action, parent["prompt"], render)
        return _ok(task_id, code)

    async def action(self, request: Request) -> Response:
        if refused := self.guard(request):
            return refused
        body = await request.json()
        custom, parent_id = str(body.get("customId") or ""), str(body.get("taskId") or "")
        match = re.match(r"MJ::JOB::(upsample|variation|reroll)::(\d)::", custom)
        if not match:
            return _refuse(4, f"unsupported customId {custom!r}")
        parent = self.proxy.tasks.get(parent_id)
        if parent is not None and custom not in {b["customId"] for b in parent["buttons"]}:
            return _refuse(4, "customId does not belong to the task")
        return self.act(parent_id, match.group(1), int(match.group(2)))

    async def change(self, request: Request) -> Response:
        if refused := self.guard(request):
            return refused
        body = await request.json()
        kind = {"UPSCALE": "upsample", "VARIATION": "variation", "REROLL": "reroll"}.get(
            str(body.get("action"))
        )
        if kind is None:
            return _refuse(4, "action must be UPSCALE, VARIATION or REROLL")
        return self.act(str(body.get("taskId") or ""), kind, int(body.get("index") or 0))

    async def describe(self, request: Request) -> Response:
        if refused := self.guard(request):
            return refused
        body = await request.json()
        try:
            data = _decode_data_url(str(body.get("base64") or ""))
        except ValueError:
            return _refuse(4, "base64 format error")
        if not data:
            return _refuse(4, "base64 cannot be empty")
        salt = hashlib.sha256(data).hexdigest()
        task_id, code = self.proxy.create("DESCRIBE", "", {"salt": salt})
        return _ok(task_id, code)

    async def blend(self, request: Request) -> Response:
        if refused := self.guard(request):
            return refused
        body = await request.json()
        try:
            images = [_decode_data_url(v) for v in body.get("base64Array") or []]
        except ValueError:
            return _refuse(4, "base64 format error")
        if not 2 <= len(images) <= 5:
            return _refuse(4, "base64List size must be 2-5")
        ratio = {"PORTRAIT": "2:3", "SQUARE": "1:1", "LANDSCAPE": "3:2"}.get(
            str(body.get("dimensions", "SQUARE"))
        )
        if ratio is None:
            return _refuse(4, "dimensions must be PORTRAIT, SQUARE or LANDSCAPE")
        prompt = f"blend --ar {ratio}"
        salt = hashlib.sha256(b"".join(images)).hexdigest()[:10]
        task_id, code = self.proxy.create(
            "BLEND", prompt, {"prompt": prompt, "salt": salt, "size": _tile_size(prompt)}
        )
        return _ok(task_id, code)

    async def upload(self, request: Request) -> Response:
        if refused := self.guard(request):
            return refused
        body = await request.json()
        urls = []
        for value in body.get("base64Array") or []:
            try:
                data = _decode_data_url(str(value))
            except ValueError:
                return _refuse(4, "base64 format error")
            urls.append(self.state.delivery.put(data, "image/png", str(request.base_url)))
        return JSONResponse({"code": 1, "description": "success", "result": urls})

    async def fetch(self, request: Request) -> Response:
        if not self.proxy.authorised(request):
            return JSONResponse(error_body(401, "unauthorized"), status_code=401)
        task = self.proxy.tasks.get(request.path_params["task_id"])
        if task is None:
            return Response(status_code=404)
        self.proxy.advance(task, str(request.base_url))
        return JSONResponse(self.proxy.public(task))

    async def list_by_condition(self, request: Request) -> Response:
        if not self.proxy.authorised(request):
            return JSONResponse(error_body(401, "unauthorized"), status_code=401)
        ids = (await request.json()).get("ids") or []
        return JSONResponse(
            [self.proxy.public(self.proxy.tasks[i]) for i in ids if i in self.proxy.tasks]
        )

    async def settings(self, request: Request) -> Response:
        body = await request.json()
        self.proxy.polls_to_finish = int(body.get("polls_to_finish", self.proxy.polls_to_finish))
        self.proxy.queue_size = body.get("queue_size", self.proxy.queue_size)
        self.proxy.secret = body.get("secret", self.proxy.secret)
        return JSONResponse(
            {"polls_to_finish": self.proxy.polls_to_finish, "queue_size": self.proxy.queue_size}
        )


def create_app(state: EmulatorState | None = None) -> Any:
    state = state or EmulatorState()
    state.delivery.ttl = 24 * 3600.0  # Discord attachment URLs last about a day
    h = Handlers(state, Proxy(state))
    routes = [
        Route("/_emulator/midjourney", h.settings, methods=["POST"]),
        Route("/mj/submit/imagine", h.imagine, methods=["POST"]),
        Route("/mj/submit/action", h.action, methods=["POST"]),
        Route("/mj/submit/change", h.change, methods=["POST"]),
        Route("/mj/submit/describe", h.describe, methods=["POST"]),
        Route("/mj/submit/blend", h.blend, methods=["POST"]),
        Route("/mj/submit/upload-discord-images", h.upload, methods=["POST"]),
        Route("/mj/task/{task_id}/fetch", h.fetch, methods=["GET"]),
        Route("/mj/task/list-by-condition", h.list_by_condition, methods=["POST"]),
    ]
    return emulator_app(routes, state, error_body)
