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
        img = img.resize((round(img.width * factor), round(img.height * factor)), Image.Resampling.LANCZOS)
    return img


def png_bytes(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def superres_dir() -> Path:
    candidates = [os.environ.get("LIMNER_TEST_SUPERRES_DIR"), str(REPO_ROOT.parent / "shared" / "models" / "superres")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "FSRCNN_x2.pb").is_file():
            return Path(candidate)
    pytest.skip(
        "FSRCNN/ESPCN model files not found: set LIMNER_TEST_SUPERRES_DIR or put them in "
        "../shared/models/superres (github.com/Saafke/FSRCNN_Tensorflow, fannymonori/TF-ESPCN)"
    )


def png_bomb(width: int, height: int) -> bytes:
    """A real PNG bomb: a grey image of ``width x height`` zero pixels, compressed (~0.1% size)."""
    import struct

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte + zero pixels
    parts = []
    rows_per_chunk = max(1, 4_000_000 // len(row))
    block = row * rows_per_chunk
    done = 0
    while done < height:
        count = min(rows_per_chunk, height - done)
        parts.append(compressor.compress(block if count == rows_per_chunk else row * count))
        done += count
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
