"""The store's schema and migrations (SQLAlchemy 2 Core; SQLite by default, PostgreSQL by URL).

Migrations are numbered functions applied in order and recorded in ``limner_migrations``, so a
store created by an older limner is brought forward when it is opened. Add a migration; never
edit one that has shipped.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine

from limner import codec

__all__ = [
    "MIGRATIONS",
    "assets",
    "create_engine",
    "generation_images",
    "generations",
    "insert_rows",
    "metadata",
    "migrate",
    "raw_transaction",
]

metadata = sa.MetaData()

generations = sa.Table(
    "generations",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
    sa.Column("operation", sa.String(32), nullable=False),
    sa.Column("provider", sa.String(64), nullable=False, index=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("prompt", sa.Text, nullable=False, default=""),
    sa.Column("negative_prompt", sa.Text),
    sa.Column("params", sa.JSON, nullable=False, default=dict),
    sa.Column("request_hash", sa.String(64), index=True),
    sa.Column("status", sa.String(16), nullable=False),  # ok | error | refused | cached
    sa.Column("error_type", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("cost_usd", sa.Float),
    sa.Column("cache_hit", sa.Boolean, nullable=False, default=False),
    sa.Column("provider_request_id", sa.String(200)),
    sa.Column("usage", sa.JSON),
    sa.Column("timings", sa.JSON),
    sa.Column("warnings", sa.JSON),
    sa.Column("tags", sa.JSON),
    sa.Column("project", sa.String(200), index=True),
    sa.Column("parent_id", sa.String(32), index=True),
)

assets = sa.Table(
    "assets",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("media_type", sa.String(64), nullable=False),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("bytes", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

generation_images = sa.Table(
    "generation_images",
    metadata,
    sa.Column(
        "generation_id",
        sa.String(32),
        sa.ForeignKey("generations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("sha256", sa.String(64), sa.ForeignKey("assets.sha256"), nullable=False, index=True),
    sa.Column("seed", sa.BigInteger),
    sa.Column("revised_prompt", sa.Text),
)

migrations_table = sa.Table(
    "limner_migrations",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("applied_at", sa.Float, nullable=False),
)

Migration = Callable[[Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_initial(conn: Connection) -> None:
    for table in (generations, assets, generation_images):
        table.create(conn, checkfirst=True)


# Modules that add their own tables to ``metadata`` and their migrations to MIGRATIONS.
EXTENSION_SCHEMAS = (
    "limner.store.budget_schema",
    "limner.store.jobs_schema",
    "limner.store.batch_schema",
)


def _load_extensions() -> None:
    import importlib
    import importlib.util

    for name in EXTENSION_SCHEMAS:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def migrate(engine: Engine) -> list[str]:
    """Apply pending migrations; return the names applied.

    Processes opening a new store at once take turns: a file lock beside a SQLite database,
    an advisory lock on PostgreSQL.
    """
    _load_extensions()
    if engine.dialect.name == "sqlite" and engine.url.database:
        import fcntl

        with open(f"{engine.url.database}.migrate-lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return _apply(engine)
    return _apply(engine)


def _apply(engine: Engine) -> list[str]:
    import time

    applied_now: list[str] = []
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7351022)"))
        migrations_table.create(conn, checkfirst=True)
        done = set(conn.scalars(sa.select(migrations_table.c.name)))
        for name, fn in MIGRATIONS:
            if name in done:
                continue
            fn(conn)
            conn.execute(migrations_table.insert().values(name=name, applied_at=time.time()))
            applied_now.append(name)
    return applied_now


def add_missing_column(conn: Connection, table: sa.Table, name: str) -> bool:
    """``ALTER TABLE ... ADD COLUMN`` for a column of ``table``'s definition that the database
    lacks; False when it is there already (a store created after the column was defined gets
    it from the migration that created the table). SQLite and PostgreSQL both accept a
    nullable column added this way."""
    if name in {c["name"] for c in sa.inspect(conn).get_columns(table.name)}:
        return False
    column = table.c[name]
    preparer = conn.dialect.identifier_preparer
    ddl = column.type.compile(dialect=conn.dialect)
    conn.execute(
        sa.text(
            f"ALTER TABLE {preparer.format_table(table)} "
            f"ADD COLUMN {preparer.format_column(column)} {ddl}"
        )
    )
    return True


def _insert_or_ignore(dialect: str, table: sa.Table) -> sa.Insert:
    """An INSERT that skips rows whose primary key exists (SQLite and PostgreSQL)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


@dataclass(frozen=True)
class _DriverInsert:
    """An INSERT compiled for one dialect, with each column's bind processor: what SQLAlchemy
    would send, built once."""

    sql: str
    keys: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]
    positional: bool


_driver_inserts: weakref.WeakKeyDictionary[Dialect, dict[tuple[str, bool], _DriverInsert]] = (
    weakref.WeakKeyDictionary()
)


def _driver_insert(dialect: Dialect, table: sa.Table, ignore: bool) -> _DriverInsert:
    per_dialect = _driver_inserts.setdefault(dialect, {})
    found = per_dialect.get((table.name, ignore))
    if found is None:
        stmt = _insert_or_ignore(dialect.name, table) if ignore else table.insert()
        compiled = stmt.compile(dialect=dialect, column_keys=[c.key for c in table.columns])
        keys = tuple(compiled.positiontup or [c.key for c in table.columns])
        found = _DriverInsert(
            sql=compiled.string,
            keys=keys,
            processors=tuple(table.c[key].type.bind_processor(dialect) for key in keys),
            positional=compiled.positional,
        )
        per_dialect[(table.name, ignore)] = found
    return found


def insert_rows(
    cursor: Any,
    dialect: Dialect,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    *,
    ignore: bool = False,
) -> None:
    """INSERT ``rows`` through the DBAPI ``cursor``, or skip those whose primary key exists
    when ``ignore``. A column a row leaves out is bound as ``None``, as an explicit ``None``
    would be by SQLAlchemy (SQL NULL, or JSON ``null`` in a JSON column).

    The server logs every generation: SQLAlchemy's execution layer around the same three small
    INSERTs cost about as much CPU as the rest of the log write, so the hot path compiles each
    statement once and binds values with the column types' own processors, storing exactly
    what :meth:`Connection.execute` would."""
    if not rows:
        return
    insert = _driver_insert(dialect, table, ignore)
    bound = []
    for row in rows:
        values = [
            process(row.get(key)) if process else row.get(key)
            for key, process in zip(insert.keys, insert.processors, strict=True)
        ]
        bound.append(
            tuple(values) if insert.positional else dict(zip(insert.keys, values, strict=True))
        )
    if len(bound) == 1:
        cursor.execute(insert.sql, bound[0])
    else:
        cursor.executemany(insert.sql, bound)


@contextmanager
def raw_transaction(engine: Engine) -> Iterator[Any]:
    """A DBAPI cursor on a pooled connection, committed when the block ends, rolled back if it
    raises. Driver errors come out as SQLAlchemy's (``sa.exc.IntegrityError``...), as from any
    other write to the store."""
    driver_error = engine.dialect.loaded_dbapi.Error
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        try:
            yield cursor
            raw.commit()
        except BaseException as exc:
            raw.rollback()
            if isinstance(exc, driver_error):
                raise sa.exc.DBAPIError.instance(None, None, exc, driver_error) from exc
            raise
        finally:
            cursor.close()
    finally:
        raw.close()


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    # WAL lets readers run beside the writer; FULL makes each commit durable across power loss.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_engine(home: Path, url: str | None = None) -> Engine:
    """The store's engine: ``url`` or LIMNER_DATABASE_URL if set, else ``<home>/limner.db``."""
    url = url or os.environ.get("LIMNER_DATABASE_URL")
    # orjson for the JSON columns: each log entry writes several, at every generation.
    json_args: dict[str, Any] = {
        "json_serializer": lambda value: codec.json_dumps(value).decode(),
        "json_deserializer": codec.json_loads_exact,
    }
    if url:
        return sa.create_engine(url, pool_pre_ping=True, **json_args)
    home.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{home / 'limner.db'}", **json_args)
    sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine
