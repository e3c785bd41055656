"""The log's hot write path binds values through the DBAPI driver itself: on SQLite and on a real
PostgreSQL server it must store exactly what SQLAlchemy's own INSERT stores, and keep a failed
write all-or-nothing."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from limner.store import LogEntry, Store, StoredImage, db
from test_server_postgres import postgres_url  # noqa: F401


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = None
    if request.param == "postgresql":
        pytest.importorskip("psycopg")
        url = request.getfixturevalue("postgres_url")
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
        engine.dispose()
    opened = Store(tmp_path, url=url)
    yield opened
    opened.close()


def _entry(store: Store, sha: str) -> LogEntry:
    image = StoredImage(
        sha, store.home / "assets" / sha[:2] / f"{sha}.png", "image/png", 64, 48,
        seed=2**40 + 1, revised_prompt="a lighthouse, at dawn", nbytes=1234,
    )  # fmt: skip
    return LogEntry(
        operation="generate", provider="openai", model="openai:gpt-image-2",
        prompt="phare à l'aube ☀", status="ok", negative_prompt=None,
        params={"size": "64x48", "n": 1, "provider_meta": {"nested": [1, 2.5, None]}},
        request_hash="ab" * 32, cost_usd=0.011, cache_hit=True, usage=None,
        timings={"total": 0.25}, warnings=["size rounded"], tags=None, project="p",
        images=[image],
    )  # fmt: skip


def _reference_insert(store: Store, entry: LogEntry) -> None:
    """The same entry written by SQLAlchemy's own INSERT statements."""
    row = {k: v for k, v in entry.__dict__.items() if k != "images"}
    image = entry.images[0]
    with store.engine.begin() as conn:
        conn.execute(db.generations.insert(), row)
        conn.execute(
            db.generation_images.insert(),
            {
                "generation_id": entry.id, "idx": 0, "sha256": image.sha256,
                "seed": image.seed, "revised_prompt": image.revised_prompt,
            },
        )  # fmt: skip


def _stored(store: Store, generation_id: str) -> tuple[dict[str, object], dict[str, object]]:
    # Text SQL, so that the values come back as the database holds them (JSON as JSON, NULL as
    # NULL), not through the column types that would hide a difference.
    with store.engine.connect() as conn:
        gen = conn.execute(
            sa.text("SELECT *, usage IS NULL AS usage_null FROM generations WHERE id = :id"),
            {"id": generation_id},
        ).one()
        img = conn.execute(
            sa.text("SELECT * FROM generation_images WHERE generation_id = :id"),
            {"id": generation_id},
        ).one()
    gen_map = {k: v for k, v in gen._mapping.items() if k != "id"}
    img_map = {k: v for k, v in img._mapping.items() if k != "generation_id"}
    return gen_map, img_map


def test_driver_insert_stores_what_sqlalchemy_stores(store: Store) -> None:
    sha = "c0" * 32
    fast = _entry(store, sha)
    store.record(fast)
    reference = dataclasses.replace(fast, id=fast.id[:-1] + "z")
    _reference_insert(store, reference)
    assert _stored(store, fast.id) == _stored(store, reference.id)
    got = store.get(fast.id)
    assert got is not None
    assert got.params == fast.params and got.usage is None and got.cache_hit is True
    assert got.images[0].seed == 2**40 + 1 and got.images[0].width == 64


def test_same_asset_twice_is_one_row(store: Store) -> None:
    sha = "c1" * 32
    store.record(_entry(store, sha))
    store.record(_entry(store, sha))
    with store.engine.connect() as conn:
        assets = conn.execute(sa.select(db.assets).where(db.assets.c.sha256 == sha)).all()
    assert len(assets) == 1 and assets[0].bytes == 1234
    assert assets[0].path == f"assets/c1/{sha}.png"


def test_failed_write_leaves_nothing(store: Store) -> None:
    first = _entry(store, "c2" * 32)
    store.record(first)
    # Same generation id, new asset: the generation insert fails after the asset row went in.
    clash = dataclasses.replace(_entry(store, "c3" * 32), id=first.id, created_at=time.time())
    with pytest.raises(sa.exc.IntegrityError):
        store.record(clash)
    with store.engine.connect() as conn:
        count = conn.scalar(sa.select(sa.func.count()).where(db.assets.c.sha256 == "c3" * 32))
        generations = conn.scalar(sa.select(sa.func.count()).select_from(db.generations))
    assert count == 0 and generations == 1
    # The pool's connection is usable after the rollback.
    store.record(_entry(store, "c4" * 32))
    assert store.get(first.id) is not None
