from __future__ import annotations

import mmap
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from limner.store import LogEntry, Store
from limner.store.db import MIGRATIONS


def test_pragmas_and_migrations_once(tmp_path) -> None:
    store = Store(tmp_path)
    with store.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()
    db = sqlite3.connect(tmp_path / "limner.db")
    names = [r[0] for r in db.execute("select name from limner_migrations")]
    assert names == [name for name, _ in MIGRATIONS]
    Store(tmp_path).close()  # reopening applies nothing twice
    assert len(list(db.execute("select name from limner_migrations"))) == len(names)


def test_assets_are_content_addressed(tmp_path) -> None:
    store = Store(tmp_path)
    a = store.put_asset(b"\x89PNG fake", "image/png", 1, 1)
    b = store.put_asset(b"\x89PNG fake", "image/png", 1, 1)
    assert a.path == b.path and a.sha256 == b.sha256
    assert a.path.name.startswith(a.sha256) and a.path.read_bytes() == b"\x89PNG fake"
    assert store.read_asset(a.sha256) == (b"\x89PNG fake", "image/png")


def test_search_by_words_model_and_prefix_id(tmp_path) -> None:
    store = Store(tmp_path)
    img = store.put_asset(b"data", "image/png", 1, 1)
    first = LogEntry(
        operation="generate",
        provider="openai",
        model="openai:gpt-image-2",
        prompt="a blue logo",
        status="ok",
        images=[img],
        tags=["brand"],
    )
    second = LogEntry(
        operation="generate",
        provider="openai",
        model="openai:dall-e-3",
        prompt="a red fox",
        status="ok",
    )
    store.record(first)
    store.record(second)
    assert [e.id for e in store.search("logo")] == [first.id]
    assert [e.id for e in store.search("brand")] == [first.id]
    assert [e.id for e in store.search(model="openai:dall-e-3")] == [second.id]
    assert (
        store.get(first.id[:14]) is not None and store.get(first.id).images[0].sha256 == img.sha256
    )


def test_sigkill_mid_write_never_leaves_a_row_without_its_file(tmp_path) -> None:
    """Kill a writer at random moments; every row must point at a complete file."""
    import hashlib
    import random
    import signal
    import time

    script = textwrap.dedent(
        f"""
        import os
        from limner.store import Store, LogEntry
        store = Store({str(tmp_path)!r})
        i = 0
        while True:
            data = os.urandom(200_000) + str(i).encode()
            img = store.put_asset(data, "image/png", 1, 1)
            store.record(LogEntry(operation="generate", provider="p", model="p:m", prompt=str(i), status="ok", images=[img]))
            i += 1
        """
    )

    def rows() -> int:
        try:
            with sqlite3.connect(tmp_path / "limner.db") as db:
                return int(db.execute("select count(*) from generations").fetchone()[0])
        except sqlite3.OperationalError:
            return 0

    for _ in range(3):
        before = rows()
        proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
        deadline = time.monotonic() + 60
        while rows() == before and time.monotonic() < deadline:  # wait until it is writing
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = Store(tmp_path)
    entries = store.search(limit=None)
    assert entries, "the writer made no progress before being killed"
    for entry in entries:
        for img in entry.images:
            assert img.path.exists()
            assert hashlib.sha256(img.path.read_bytes()).hexdigest() == img.sha256


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path) -> None:
    script = f"from limner.store import Store; Store({str(tmp_path / 'shared')!r}).close()"
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE) for _ in range(4)
    ]
    results = [(p.wait(), p.stderr.read().decode() if p.stderr else "") for p in procs]
    assert all(code == 0 for code, _ in results), results
    from limner.store.db import _load_extensions

    _load_extensions()
    db = sqlite3.connect(tmp_path / "shared" / "limner.db")
    assert len(list(db.execute("select name from limner_migrations"))) == len(MIGRATIONS)


def test_provider_meta_is_json_safe_and_bounded() -> None:
    """What a provider reports beyond images goes into the log as plain JSON: dates as text,
    keys as strings, integers over 64 bits kept whole; an oversized report is left out."""
    import datetime
    from types import SimpleNamespace

    from limner.client import _provider_meta

    def meta(*raws: dict[object, object]) -> object:
        return _provider_meta([SimpleNamespace(raw=raw) for raw in raws])  # type: ignore[arg-type]

    assert meta({"when": datetime.date(2026, 1, 2), 7: "seven"}, {"seed": 3}) == {
        "when": "2026-01-02", "7": "seven", "seed": 3,
    }  # fmt: skip
    assert meta({"seed": 2**70}) == {"seed": 2**70}
    assert meta({"blob": "x" * 20_000}) is None
    assert meta({}) is None


def resident_pages(path) -> tuple[int, int]:
    """(pages of ``path`` in the page cache, pages in all), from mincore(2) on a mapping that
    touches none of them."""
    import ctypes

    mincore = ctypes.CDLL(None, use_errno=True).mincore
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    vector = (ctypes.c_ubyte * pages)()
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        start = ctypes.c_char.from_buffer(mapped)
        try:
            if mincore(ctypes.byref(start), ctypes.c_size_t(size), vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del start  # the mapping cannot close while ctypes holds it
    return sum(flag & 1 for flag in vector), pages


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise is POSIX-only")
def test_stored_images_leave_the_page_cache(tmp_path) -> None:
    store = Store(tmp_path)
    kept = tmp_path / "kept.bin"
    kept.write_bytes(os.urandom(1 << 20))
    if resident_pages(kept)[0] == 0:
        pytest.skip("this filesystem keeps no written pages in the page cache")
    item = store.put_asset(os.urandom(1 << 20), "image/png", 1, 1)
    resident, pages = resident_pages(item.path)
    assert pages == (1 << 20) // mmap.PAGESIZE and resident <= 2, resident
    assert store.read_asset(item.sha256)[0] == item.path.read_bytes()


def test_a_logged_integer_wider_than_64_bits_reads_back_whole(tmp_path) -> None:
    store = Store(tmp_path)
    entry = LogEntry(
        operation="generate", provider="openai", model="openai:gpt-image-2", prompt="a kite",
        status="ok", params={"seed": 7, "provider_options": {"nonce": 2**70 + 1}},
    )  # fmt: skip
    store.record(entry)
    stored = store.get(entry.id)
    assert stored is not None
    assert stored.params["provider_options"]["nonce"] == 2**70 + 1
