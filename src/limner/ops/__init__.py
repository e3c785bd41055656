"""Local image operations that work on any image, generated or not: upscaling, background
removal, masks, outpaint canvases, quality checks and gates, and provenance.

Each submodule imports its heavy libraries (OpenCV, onnxruntime, Tesseract, c2pa) only when an
operation runs, so importing :mod:`limner.ops` is cheap.
"""

from __future__ import annotations

from limner.ops._common import OpResult, read_image

__all__ = ["OpResult", "read_image"]
