"""Quality checks from the generation checklist, each a pass/fail with a reason.

* resolution (``min_size``) and aspect ratio (``aspect``, within a tolerance);
* sharpness: the variance of the Laplacian of the grey image at a fixed working size (low means
  blurry);
* exposure: the share of nearly black or nearly white pixels;
* text: Tesseract OCR and a fuzzy match score of the expected text against what was read;
* near-duplicates across a set: perceptual hashes closer than a Hamming distance.
"""

from __future__ import annotations

import difflib
import re
import shutil
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from limner import errors

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "CheckResult",
    "Checks",
    "ImageReport",
    "check_image",
    "check_images",
    "find_text",
    "ocr_text",
    "parse_size",
    "sharpness",
    "text_match_score",
]

WORK_SIDE = 512  # sharpness is measured at this long edge, so it does not depend on resolution


@dataclass
class Checks:
    """Which checks to run and their thresholds."""

    min_size: tuple[int, int] | None = None
    aspect: str | None = None
    aspect_tolerance: float = 0.02
    expect_text: str | None = None
    text_threshold: float = 0.8
    min_sharpness: float | None = 100.0
    max_clipped: float | None = 0.25
    duplicate_distance: int | None = 6


@dataclass
class CheckResult:
    name: str
    passed: bool
    value: Any = None
    detail: str = ""


@dataclass
class ImageReport:
    name: str
    width: int
    height: int
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "width": self.width, "height": self.height, "passed": self.passed,
            "reasons": self.reasons, "checks": [asdict(c) for c in self.checks],
        }  # fmt: skip


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", text or "")
    if not match:
        raise errors.InvalidRequestError(
            f"Size {text!r} is not WIDTHxHEIGHT.", param="min_size", hint="E.g. 1024x1024."
        )
    return int(match.group(1)), int(match.group(2))


def _aspect_value(text: str) -> float:
    a, sep, b = text.partition(":")
    try:
        if not sep:
            raise ValueError(text)
        return float(a) / float(b)
    except (ValueError, ZeroDivisionError) as exc:
        raise errors.InvalidRequestError(
            f"Aspect {text!r} is not W:H.", param="aspect", hint="E.g. 16:9."
        ) from exc


# -- individual checks -------------------------------------------------------------------------
def sharpness(img: Image) -> float:
    """Variance of the Laplacian of the grey image scaled to a 512-pixel long edge."""
    import cv2
    import numpy as np

    grey = img.convert("L")
    factor = WORK_SIDE / max(grey.size)
    if factor < 1:
        grey = grey.resize(
            (max(round(grey.width * factor), 1), max(round(grey.height * factor), 1))
        )
    return float(cv2.Laplacian(np.asarray(grey), cv2.CV_64F).var())


def clipped_shares(img: Image) -> tuple[float, float]:
    """Shares of pixels that are nearly black (<= 5) and nearly white (>= 250)."""
    import numpy as np

    grey = np.asarray(img.convert("L"))
    return float((grey <= 5).mean()), float((grey >= 250).mean())


def _normalise(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", text.lower())


def text_match_score(expected: str, found: str) -> float:
    """How well ``expected`` appears in ``found``: the best similarity over windows of ``found``
    of about the expected length, ignoring case, spacing and punctuation (1.0 = exact)."""
    want, have = _normalise(expected), _normalise(found)
    if not want:
        return 1.0
    if not have:
        return 0.0
    if want in have:
        return 1.0
    best = 0.0
    for length in {max(len(want) - 1, 1), len(want), len(want) + 1}:
        for start in range(max(len(have) - length + 1, 1)):
            best = max(
                best, difflib.SequenceMatcher(None, want, have[start : start + length]).ratio()
            )
    return round(best, 3)


def tesseract_available() -> bool:
    if shutil.which("tesseract") is None:
        return False
    try:
        import pytesseract  # noqa: F401
    except ImportError:
        return False
    return True


def ocr_text(img: Image, *, sparse: bool = False) -> str:
    """Text read by Tesseract; small images are enlarged first, as Tesseract needs ~30 px glyphs.

    ``sparse`` reads scattered text anywhere in the picture (page segmentation mode 11) instead
    of laying the image out as a page of text, which finds captions and signs in busy images.
    """
    if not tesseract_available():
        raise errors.UserError(
            "Text checks need Tesseract OCR, which is not installed.",
            hint="Install it (apt-get install tesseract-ocr, brew install tesseract) and pip install pytesseract.",
        )
    import pytesseract
    from PIL import Image as PILImage

    grey = img.convert("L")
    if max(grey.size) < 1000:
        factor = 1000 / max(grey.size)
        grey = grey.resize(
            (round(grey.width * factor), round(grey.height * factor)), PILImage.Resampling.LANCZOS
        )
    text: str = pytesseract.image_to_string(grey, config="--psm 11" if sparse else "")
    return text.strip()


def find_text(img: Image, expected: str) -> tuple[float, str]:
    """The best match score of ``expected`` and the text read: page layout first, then sparse."""
    found = ocr_text(img)
    score = text_match_score(expected, found)
    if score < 1.0:
        sparse = ocr_text(img, sparse=True)
        sparse_score = text_match_score(expected, sparse)
        if sparse_score > score:
            return sparse_score, sparse
    return score, found


def _size_checks(img: Image, checks: Checks) -> list[CheckResult]:
    out = []
    if checks.min_size:
        mw, mh = checks.min_size
        ok = img.width >= mw and img.height >= mh
        out.append(
            CheckResult(
                "resolution",
                ok,
                f"{img.width}x{img.height}",
                "" if ok else f"{img.width}x{img.height} is below {mw}x{mh}",
            )
        )
    if checks.aspect:
        want, have = _aspect_value(checks.aspect), img.width / img.height
        ok = abs(have - want) / want <= checks.aspect_tolerance
        out.append(
            CheckResult(
                "aspect",
                ok,
                round(have, 4),
                "" if ok else f"aspect {have:.3f} is not {checks.aspect} ({want:.3f})",
            )
        )
    return out


def _pixel_checks(img: Image, checks: Checks) -> list[CheckResult]:
    out = []
    if checks.min_sharpness is not None:
        value = sharpness(img)
        ok = value >= checks.min_sharpness
        out.append(
            CheckResult(
                "sharpness",
                ok,
                round(value, 2),
                "" if ok else f"blurry: Laplacian variance {value:.1f} < {checks.min_sharpness:g}",
            )
        )
    if checks.max_clipped is not None:
        dark, bright = clipped_shares(img)
        ok = dark <= checks.max_clipped and bright <= checks.max_clipped
        detail = ""
        if dark > checks.max_clipped:
            detail = f"under-exposed: {dark:.0%} of pixels are black"
        elif bright > checks.max_clipped:
            detail = f"over-exposed: {bright:.0%} of pixels are white"
        out.append(
            CheckResult(
                "exposure", ok, {"black": round(dark, 4), "white": round(bright, 4)}, detail
            )
        )
    if checks.expect_text:
        score, found = find_text(img, checks.expect_text)
        ok = score >= checks.text_threshold
        out.append(
            CheckResult(
                "text",
                ok,
                {"score": score, "found": found[:200]},
                "" if ok else f"expected text {checks.expect_text!r} not found (score {score:.2f})",
            )
        )
    return out


def check_image(img: Image, checks: Checks, name: str = "image") -> ImageReport:
    report = ImageReport(name=name, width=img.width, height=img.height)
    report.checks.extend(_size_checks(img, checks))
    report.checks.extend(_pixel_checks(img, checks))
    return report


def check_images(images: list[tuple[str, Image]], checks: Checks) -> list[ImageReport]:
    """Check each image, then mark near-duplicates within the set (a later one fails)."""
    reports = [check_image(img, checks, name) for name, img in images]
    if checks.duplicate_distance is None or len(images) < 2:
        return reports
    import imagehash

    hashes = [imagehash.phash(img.convert("RGB")) for _, img in images]
    for i, report in enumerate(reports):
        twins = [
            (images[j][0], hashes[i] - hashes[j])
            for j in range(i)
            if hashes[i] - hashes[j] <= checks.duplicate_distance
        ]
        detail = "; ".join(f"near-duplicate of {n} (distance {d})" for n, d in twins)
        report.checks.append(CheckResult("duplicate", not twins, str(hashes[i]), detail))
    return reports
