"""``limner mcp``: limner as tools for AI assistants over MCP (stdio), on the official SDK.

Tools: ``generate``, ``edit``, ``upscale``, ``remove_background``, ``recommend_model``,
``estimate_cost`` and ``search_log``.
Images come back as MCP image content plus a JSON summary with their stored paths; every call
goes through :class:`limner.Limner`, so budgets, policy checks, the cache and the log apply
exactly as in the library and the CLI.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from limner import errors
from limner.client import Limner
from limner.types import ImageRequest, Operation, Result

if TYPE_CHECKING:
    from limner.ops._common import OpResult
    from limner.server.auth import KeyRing, Principal

__all__ = ["McpAuth", "build_server", "run_stdio"]


def _summary(result: Result | OpResult) -> str:
    return json.dumps(
        {
            "generation_id": result.generation_id, "model": result.model,
            "cost_usd": getattr(result, "cost_usd", None), "warnings": result.warnings,
            "images": [
                {"path": str(img.path) if img.path else None, "width": img.width,
                 "height": img.height, "seed": img.seed, "media_type": img.media_type}
                for img in result.images
            ],
        }
    )  # fmt: skip


# The server key a call under ``limner serve`` came with (set by McpAuth): what the call spends
# is charged to that key and held to its budget, as on the HTTP routes.
_caller: contextvars.ContextVar[tuple[KeyRing, Principal] | None] = contextvars.ContextVar(
    "limner_mcp_caller", default=None
)


class _KeyedLimner(Limner):
    """A client whose every run is attributed to a server key and held to its budget."""

    def __init__(self, keys: KeyRing, principal: Principal, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._keys, self._principal = keys, principal

    def run(self, op: Operation | str, request: ImageRequest, **kwargs: Any) -> Result:
        return super().run(op, self._keys.charge(self._principal, self, request), **kwargs)


class _Engine:
    """Runs tool calls through :class:`limner.Limner` and shapes their results for MCP."""

    def __init__(self, home: Path | None) -> None:
        self.home = home

    def content(self, result: Result | OpResult) -> list[Any]:
        from mcp.server.mcpserver.utilities.types import Image

        images: list[Any] = [
            Image(data=img.data, format=img.extension.replace("jpg", "jpeg"))
            for img in result.images
        ]
        return [*images, _summary(result)]

    def run(self, op: Operation, request: ImageRequest) -> list[Any]:
        return self.apply(lambda client: client.run(op, request))

    def apply(self, work: Callable[[Limner], Result | OpResult]) -> list[Any]:
        """``work(client)`` with a client on this home: an operation's cloud models go through
        ``client.run`` (budgets, policy, the log) and its local ones store into its store."""
        from mcp.server.mcpserver.exceptions import ToolError

        caller = _caller.get()
        try:
            with (
                _KeyedLimner(*caller, home=self.home) if caller else Limner(home=self.home)
            ) as client:
                return self.content(work(client))
        except errors.LimnerError as exc:
            raise ToolError(str(exc)) from exc


def _new_server() -> Any:
    from mcp.server.mcpserver import MCPServer

    from limner import __version__

    return MCPServer(
        name="limner",
        version=__version__,
        instructions="Generate and edit images with any limner model; recommend models and estimate costs first.",
        # The SDK configures the root logger at this level; INFO would log every HTTP request
        # the server makes (cost and noise), so only warnings and errors.
        log_level="WARNING",
    )


def _image_tools(server: Any, engine: _Engine) -> None:
    """``generate`` and ``edit``."""

    @server.tool(structured_output=False)
    def generate(
        prompt: str,
        model: str | None = None,
        size: str | None = None,
        n: int = 1,
        quality: str | None = None,
        seed: int | None = None,
        negative_prompt: str | None = None,
    ) -> list[Any]:
        """Make images from a prompt. ``model`` is any limner model (e.g. openai:gpt-image-2)."""
        request = ImageRequest(
            prompt=prompt, model=model, size=size, n=n, quality=quality, seed=seed,
            negative_prompt=negative_prompt,
        )  # fmt: skip
        return engine.run(Operation.GENERATE, request)

    @server.tool(structured_output=False)
    def edit(
        image_path: str, prompt: str, mask_path: str | None = None, model: str | None = None
    ) -> list[Any]:
        """Edit the image file at ``image_path``; with ``mask_path``, only the marked area
        (white, or transparent) changes."""
        from mcp.server.mcpserver.exceptions import ToolError

        from limner.images import load_image

        try:
            image = load_image(image_path)
            mask = load_image(mask_path, name="mask.png") if mask_path else None
        except errors.LimnerError as exc:
            raise ToolError(str(exc)) from exc
        op = Operation.INPAINT if mask is not None else Operation.EDIT
        return engine.run(op, ImageRequest(prompt=prompt, model=model, images=[image], mask=mask))


def _operation_tools(server: Any, engine: _Engine) -> None:
    """``upscale`` and ``remove_background``: local backends, or a cloud model through the
    engine (the same operations as ``limner upscale`` and ``limner remove-bg``)."""

    @server.tool(structured_output=False)
    def upscale(image_path: str, scale: int = 2, model: str | None = None) -> list[Any]:
        """Upscale the image file at ``image_path`` by 2, 3 or 4. ``model``: lanczos (default),
        fsrcnn, espcn, a model file, or a cloud upscaler such as stability:upscale-fast (which
        uses its own factor)."""
        from limner.ops.upscale import upscale as upscale_op

        return engine.apply(
            lambda client: upscale_op(image_path, scale, model, store=client.store, client=client)
        )

    @server.tool(structured_output=False)
    def remove_background(
        image_path: str, model: str | None = None, background: str | None = None
    ) -> list[Any]:
        """Cut the subject of the image file at ``image_path`` out; returns the cut-out, then
        its mask. ``model``: grabcut (default), an ONNX matting file, or a cloud model such as
        stability:remove-background. ``background``: a colour (#ffffff) to put behind it."""
        from limner.ops.background import remove_background as remove_op

        return engine.apply(
            lambda client: remove_op(
                image_path, model, background=background, store=client.store, client=client
            )
        )


def _catalog_tools(server: Any, home: Path | None) -> None:
    """``recommend_model``, ``estimate_cost`` and ``search_log``."""
    from mcp.server.mcpserver.exceptions import ToolError

    @server.tool()
    def recommend_model(
        prompt: str = "",
        budget_usd: float | None = None,
        commercial: bool = False,
        needs: str | None = None,
    ) -> list[dict[str, Any]]:
        """Rank models for a prompt: best first, with reasons and the price per image."""
        from limner.recommend import parse_needs, recommend

        try:
            found = recommend(
                prompt, budget=budget_usd, commercial=commercial, needs=parse_needs(needs)
            )
        except errors.LimnerError as exc:
            raise ToolError(str(exc)) from exc
        return [r.to_dict() for r in found]

    @server.tool()
    def estimate_cost(
        model: str, n: int = 1, size: str | None = None, quality: str | None = None
    ) -> dict[str, Any]:
        """The list price of ``n`` images from ``model`` at this size and quality, in USD."""
        from limner.catalog import get_catalog
        from limner.cost import estimate

        try:
            catalog = get_catalog()
            return estimate(catalog.resolve(model), n, size, quality, catalog).to_dict()
        except errors.LimnerError as exc:
            raise ToolError(str(exc)) from exc

    @server.tool()
    def search_log(
        query: str = "", model: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Search past generations (newest first) by words in the prompt, model or tags."""
        from limner.client import Limner

        with Limner(home=home) as client:
            entries = client.store.search(query or None, model=model, limit=min(max(limit, 1), 200))
        return [
            {
                "id": e.id, "created_at": e.created_at, "prompt": e.prompt, "model": e.model,
                "status": e.status, "cost_usd": e.cost_usd, "tags": e.tags,
                "images": [str(img.path) for img in e.images],
            }
            for e in entries
        ]  # fmt: skip


def build_server(home: Path | None = None) -> Any:
    """The MCP server with limner's tools registered (``home``: the limner home to use)."""
    server = _new_server()
    engine = _Engine(home)
    _image_tools(server, engine)
    _operation_tools(server, engine)
    _catalog_tools(server, home)
    return server


def run_stdio() -> None:
    build_server().run("stdio")


class McpAuth:
    """Guards the MCP endpoint under ``limner serve`` with the server's keys (``generate``)."""

    def __init__(self, app: Any, ctx: Any) -> None:
        self.app, self.ctx = app, ctx

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            from starlette.requests import Request

            from limner.server.auth import require
            from limner.server.errors import ApiError, error_response

            request = Request(scope)
            try:
                principal = self.ctx.keys.authenticate(request)
                require(principal, "generate")
                self.ctx.keys.check_rate(principal)
            except ApiError as exc:
                response = error_response(
                    request,
                    exc.status,
                    exc.message,
                    type_=exc.type,
                    code=exc.code,
                    headers=exc.headers,
                )
                await response(scope, receive, send)
                return
            token = _caller.set((self.ctx.keys, principal))
            try:
                await self.app(scope, receive, send)
            finally:
                _caller.reset(token)
            return
        await self.app(scope, receive, send)
