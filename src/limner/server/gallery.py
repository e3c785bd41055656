"""The web gallery at ``/``: a searchable grid of everything generated, an image view with all
parameters, download, delete, re-run and "use as input", and a generate form with live
progress. Plain HTML and a small script, served by the same app; images on signed URLs."""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse, Response

from limner.server.auth import Principal
from limner.server.context import ServerContext
from limner.server.deps import context, needs
from limner.server.errors import ApiError
from limner.store import LogEntry, db

__all__ = ["router"]

router = APIRouter()
PAGE_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"


def _static(name: str) -> bytes:
    return (resources.files("limner.server") / "static" / name).read_bytes()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(
        _static("gallery.html").decode(), headers={"Content-Security-Policy": PAGE_CSP}
    )


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    files = {"gallery.js": "text/javascript", "gallery.css": "text/css"}
    if name not in files:  # a fixed list: never a path from the request
        raise ApiError(404, "No such file.", code="not_found")
    return Response(_static(name), media_type=files[name])


def _item(ctx: ServerContext, entry: LogEntry) -> dict[str, Any]:
    return {
        "id": entry.id, "created_at": entry.created_at, "prompt": entry.prompt,
        "negative_prompt": entry.negative_prompt, "model": entry.model, "provider": entry.provider,
        "operation": entry.operation, "status": entry.status, "cost_usd": entry.cost_usd,
        "tags": entry.tags or [], "project": entry.project, "params": entry.params,
        "warnings": entry.warnings or [], "cache_hit": entry.cache_hit,
        "images": [
            {"sha256": img.sha256, "url": ctx.sign(img.sha256), "width": img.width,
             "height": img.height, "seed": img.seed, "media_type": img.media_type}
            for img in entry.images
        ],
    }  # fmt: skip


@router.get("/v1/gallery/items", tags=["gallery"])
async def items(
    q: str | None = Query(None, max_length=500),
    model: str | None = Query(None, max_length=200),
    tag: str | None = Query(None, max_length=200),
    since: float | None = Query(None, ge=0),
    limit: int = Query(60, ge=1, le=500),
    ctx: ServerContext = Depends(context),
    principal: Principal = Depends(needs("read")),
) -> dict[str, Any]:
    query = " ".join(part for part in (q, tag) if part) or None
    entries = await asyncio.to_thread(
        ctx.store.search, query, limit=limit, model=model or None, status="ok", since=since
    )
    return {"object": "list", "data": [_item(ctx, e) for e in entries]}


@router.get("/v1/gallery/items/{item_id}", tags=["gallery"])
async def item(
    item_id: str,
    ctx: ServerContext = Depends(context),
    principal: Principal = Depends(needs("read")),
) -> dict[str, Any]:
    entry = await asyncio.to_thread(ctx.store.get, item_id)
    if entry is None:
        raise ApiError(404, f"No generation {item_id!r}.", code="not_found")
    return _item(ctx, entry)


@router.delete("/v1/gallery/items/{item_id}", tags=["gallery"])
async def delete_item(
    item_id: str,
    ctx: ServerContext = Depends(context),
    principal: Principal = Depends(needs("admin")),
) -> dict[str, Any]:
    """Remove a generation from the log. Its image files stay while other rows may share them."""

    def remove() -> int:
        with ctx.store.engine.begin() as conn:
            conn.execute(
                db.generation_images.delete().where(db.generation_images.c.generation_id == item_id)
            )
            return int(
                conn.execute(db.generations.delete().where(db.generations.c.id == item_id)).rowcount
            )

    if not await asyncio.to_thread(remove):
        raise ApiError(404, f"No generation {item_id!r}.", code="not_found")
    return {"id": item_id, "deleted": True}
