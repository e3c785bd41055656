"""The generation log and the content-addressed asset store.

Images are written under ``<home>/assets/<aa>/<sha256>.<ext>`` atomically (temp file, fsync,
rename) *before* the row that names them is committed, so a crash can leave an unreferenced
file but never a row pointing at a missing one.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from limner.config import atomic_write, limner_home
from limner.store import db

__all__ = ["LogEntry", "Store", "new_id"]

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/svg+xml": "svg"}


def new_id() -> str:
    """A sortable id: milliseconds since the epoch, then randomness."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


@dataclass
class StoredImage:
    sha256: str
    path: Path
    media_type: str
    width: int | None
    height: int | None
    seed: int | None = None
    revised_prompt: str | None = None
    nbytes: int | None = None  # set when the file was just written and its row is still to add


@dataclass
class LogEntry:
    operation: str
    provider: str
    model: str
    prompt: str
    status: str
    id: str = field(default_factory=new_id)
    created_at: float = field(default_factory=time.time)
    negative_prompt: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    request_hash: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    cost_usd: float | None = None
    cache_hit: bool = False
    provider_request_id: str | None = None
    usage: dict[str, Any] | None = None
    timings: dict[str, float] | None = None
    warnings: list[str] | None = None
    tags: list[str] | None = None
    project: str | None = None
    parent_id: str | None = None
    images: list[StoredImage] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "images"}
        data["images"] = [{**img.__dict__, "path": str(img.path)} for img in self.images]
        return data


class Store:
    def __init__(self, home: Path | None = None, *, url: str | None = None) -> None:
        self.home = Path(home) if home else limner_home()
        self.assets_dir = self.home / "assets"
        self.engine = db.create_engine(self.home, url)
        db.migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- assets --------------------------------------------------------------------------------
    def asset_path(self, sha256: str, media_type: str) -> Path:
        return self.assets_dir / sha256[:2] / f"{sha256}.{EXTENSIONS.get(media_type, 'bin')}"

    def put_asset(
        self, data: bytes, media_type: str, width: int | None, height: int | None
    ) -> StoredImage:
        """Write the file and register it; see :meth:`write_asset` to register it with a log
        entry in one transaction instead."""
        item = self.write_asset(data, media_type, width, height)
        with db.raw_transaction(self.engine) as cursor:
            self._register_assets(cursor, [item])
        return item

    def write_asset(
        self, data: bytes, media_type: str, width: int | None, height: int | None
    ) -> StoredImage:
        """Write the file (atomically, once per content); :meth:`record` adds its row."""
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        path = self.asset_path(sha, media_type)
        if not path.exists() or path.stat().st_size != len(data):
            atomic_write(path, data, cold=True)
        return StoredImage(sha, path, media_type, width, height, nbytes=len(data))

    def _register_assets(self, cursor: Any, items: list[StoredImage]) -> None:
        rows = [
            {
                "sha256": item.sha256, "path": str(item.path.relative_to(self.home)),
                "media_type": item.media_type, "width": item.width, "height": item.height,
                "bytes": item.nbytes, "created_at": time.time(),
            }
            for item in items
            if item.nbytes is not None
        ]  # fmt: skip
        db.insert_rows(cursor, self.engine.dialect, db.assets, rows, ignore=True)

    def read_asset(self, sha256: str) -> tuple[bytes, str] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(db.assets).where(db.assets.c.sha256 == sha256)).first()
        if row is None:
            return None
        path = self.home / row.path
        return (path.read_bytes(), row.media_type) if path.exists() else None

    # -- log -----------------------------------------------------------------------------------
    def record(self, entry: LogEntry) -> str:
        with db.raw_transaction(self.engine) as cursor:
            self._write_entry(cursor, entry)
        return entry.id

    def insert_entry(self, conn: sa.Connection, entry: LogEntry) -> None:
        """Insert a log entry inside the caller's transaction (batches mark items done with it),
        with the rows of any assets written for it by :meth:`write_asset`."""
        cursor = conn.connection.cursor()
        try:
            self._write_entry(cursor, entry)
        finally:
            cursor.close()

    def _write_entry(self, cursor: Any, entry: LogEntry) -> None:
        dialect = self.engine.dialect
        self._register_assets(cursor, entry.images)
        row = {k: v for k, v in entry.__dict__.items() if k != "images"}
        db.insert_rows(cursor, dialect, db.generations, [row])
        images = [
            {
                "generation_id": entry.id, "idx": idx, "sha256": img.sha256,
                "seed": img.seed, "revised_prompt": img.revised_prompt,
            }
            for idx, img in enumerate(entry.images)
        ]  # fmt: skip
        db.insert_rows(cursor, dialect, db.generation_images, images)

    def _entries(self, conn: sa.Connection, rows: list[Any]) -> list[LogEntry]:
        if not rows:
            return []
        ids = [r.id for r in rows]
        img_rows = conn.execute(
            sa.select(
                db.generation_images,
                db.assets.c.path,
                db.assets.c.media_type,
                db.assets.c.width,
                db.assets.c.height,
            )
            .join(db.assets, db.assets.c.sha256 == db.generation_images.c.sha256)
            .where(db.generation_images.c.generation_id.in_(ids))
            .order_by(db.generation_images.c.idx)
        ).all()
        by_id: dict[str, list[StoredImage]] = {}
        for r in img_rows:
            by_id.setdefault(r.generation_id, []).append(
                StoredImage(
                    r.sha256,
                    self.home / r.path,
                    r.media_type,
                    r.width,
                    r.height,
                    r.seed,
                    r.revised_prompt,
                )
            )
        fields = {c.name for c in db.generations.columns}
        return [
            LogEntry(**{k: getattr(r, k) for k in fields}, images=by_id.get(r.id, [])) for r in rows
        ]

    def get(self, generation_id: str) -> LogEntry | None:
        with self.engine.connect() as conn:
            table = db.generations
            row = conn.execute(sa.select(table).where(table.c.id == generation_id)).first()
            if row is None:
                rows = conn.execute(
                    sa.select(table).where(table.c.id.startswith(generation_id)).limit(2)
                ).all()
                row = rows[0] if len(rows) == 1 else None
            return self._entries(conn, [row])[0] if row else None

    def search(
        self,
        query: str | None = None,
        *,
        limit: int | None = 20,
        model: str | None = None,
        provider: str | None = None,
        project: str | None = None,
        status: str | None = None,
        since: float | None = None,
    ) -> list[LogEntry]:
        """Newest first. ``query`` matches words in the prompt, model or tags (all must match)."""
        table = db.generations
        stmt = sa.select(table).order_by(table.c.created_at.desc(), table.c.id.desc())
        for word in (query or "").split():
            like = f"%{word}%"
            stmt = stmt.where(
                sa.or_(
                    table.c.prompt.ilike(like),
                    table.c.model.ilike(like),
                    sa.cast(table.c.tags, sa.String).ilike(like),
                )
            )
        for column, value in (
            (table.c.model, model),
            (table.c.provider, provider),
            (table.c.project, project),
            (table.c.status, status),
        ):
            if value:
                stmt = stmt.where(column == value)
        if since:
            stmt = stmt.where(table.c.created_at >= since)
        if limit:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            return self._entries(conn, list(conn.execute(stmt).all()))

    def find_cached(self, request_hash: str) -> LogEntry | None:
        table = db.generations
        stmt = (
            sa.select(table)
            .where(table.c.request_hash == request_hash, table.c.status == "ok")
            .order_by(table.c.created_at.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
            if row is None:
                return None
            entry = self._entries(conn, [row])[0]
        return entry if entry.images and all(img.path.exists() for img in entry.images) else None
