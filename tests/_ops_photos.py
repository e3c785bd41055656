"""Real photos for the image-operation tests (they ship inside scikit-image), and the
super-resolution model folder, found through LIMNER_TEST_SUPERRES_DIR or ../shared/models/superres."""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def photo(name: str, size: int | None = None) -> Any:
    """A scikit-image sample photo (astronaut, coffee, chelsea, rocket) as a PIL RGB image."""
    data = pytest.importorskip("skimage.data", reason="the test photos ship with scikit-image")
    from PIL import Image

    img = Image.fromarray(getattr(data, name)()).convert("RGB")
    if size:
        factor = size / max(img.size)
        img = img.resize(
            (round(img.width * factor), round(img.height * factor)), Image.Resampling.LANCZOS
        )
    return img


def png_bytes(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def superres_dir() -> Path:
    candidates = [
        os.environ.get("LIMNER_TEST_SUPERRES_DIR"),
        str(REPO_ROOT.parent / "shared" / "models" / "superres"),
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "FSRCNN_x2.pb").is_file():
            return Path(candidate)
    pytest.skip(
        "FSRCNN/ESPCN model files not found: set LIMNER_TEST_SUPERRES_DIR or put them in "
        "../shared/models/superres (github.com/Saafke/FSRCNN_Tensorflow, fannymonori/TF-ESPCN)"
    )


def png_bomb(width: int, height: int) -> bytes:
    """A real PNG bomb: ``width x height`` grey zero pixels in a valid, tiny zlib stream.

    Rows are compressed once per block with a full flush, which makes every block's deflate
    output identical, so the stream is built by repetition in milliseconds.
    """
    import struct

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    row = bytes(width + 1)  # filter byte + zero pixels
    rows_per_block = max(1, 4_000_000 // len(row))
    blocks, rest = divmod(height, rows_per_block)
    block = row * rows_per_block
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(blocks):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(row * rest, adler)
    tail = compressor.compress(row * rest) + compressor.flush(zlib.Z_FINISH)
    stream = b"\x78\xda" + segment * blocks + tail + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")
    )
