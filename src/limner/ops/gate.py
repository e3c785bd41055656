"""A quality gate around generation: check each result, retry until one passes.

A failed attempt is retried with a new seed when the model takes seeds; otherwise (or when
``alternatives`` are given) with the next recommended model. Every attempt is logged as usual,
and attempts after the first name the first one as their ``parent_id`` so the log links them.
When no attempt passes, :class:`QualityGateError` carries the reasons of each.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from limner import errors
from limner.ops.checks import Checks, ImageReport, check_images

if TYPE_CHECKING:
    from limner.catalog import ModelSpec
    from limner.client import Limner
    from limner.types import ImageRequest, Operation, Result

__all__ = [
    "Attempt",
    "GateResult",
    "QualityGateError",
    "recommended_alternatives",
    "requested_checks",
    "run_with_gate",
]


@dataclass
class Attempt:
    model: str
    seed: int | None
    generation_id: str | None
    reports: list[ImageReport]

    @property
    def passed(self) -> bool:
        return bool(self.reports) and all(r.passed for r in self.reports)

    @property
    def reasons(self) -> list[str]:
        return [reason for r in self.reports for reason in r.reasons]


@dataclass
class GateResult:
    result: Result
    attempts: list[Attempt] = field(default_factory=list)


class QualityGateError(errors.LimnerError):
    """No attempt passed the quality checks; exit code 1."""

    code = "quality_gate_failed"
    http_status = 422

    def __init__(self, attempts: list[Attempt]):
        lines = [
            f"attempt {i} ({a.model}, seed {a.seed}): {'; '.join(a.reasons) or 'no image'}"
            for i, a in enumerate(attempts, 1)
        ]
        super().__init__(
            f"No image passed the quality checks in {len(attempts)} attempt(s): "
            + " | ".join(lines),
            hint="Raise --max-attempts, relax the checks, or pick a model that renders text better.",
        )
        self.attempts = attempts


def requested_checks(
    require_text: str | None = None, min_size: str | None = None, aspect: str | None = None
) -> Checks | None:
    """Only the checks a user asked for (``limner generate --require-text/--min-size``), or None."""
    from limner.ops.checks import parse_size

    if not (require_text or min_size or aspect):
        return None
    return Checks(
        expect_text=require_text, min_size=parse_size(min_size) if min_size else None, aspect=aspect,
        min_sharpness=None, max_clipped=None, duplicate_distance=None,
    )  # fmt: skip


def recommended_alternatives(
    client: Limner, spec: ModelSpec, op: Operation, needs_text: bool, prompt: str = ""
) -> list[str]:
    """Other cloud models for ``op`` whose provider has a key, in the order ``limner recommend``
    ranks them for ``prompt`` (for the ``text`` use case when text is required).

    Keyless providers (the local engine, ComfyUI) are left out: whether their weights or server
    are there is not known without trying. Name them in ``alternatives`` to use them."""
    from limner.providers import get_provider_class
    from limner.recommend import recommend

    use_cases = ["text"] if needs_text else None
    ranked = recommend(prompt, use_cases=use_cases, needs=[op], limit=0, catalog=client.catalog)
    order = [r.model for r in ranked]
    order += [
        s.ref
        for s in client.catalog.filter(capability=op, include_retired=False)
        if s.ref not in order
    ]
    usable = []
    for ref in order:
        other = client.catalog.resolve(ref)
        if other.ref == spec.ref:
            continue
        try:
            cls = get_provider_class(other.provider)
        except errors.LimnerError:
            continue
        if cls.needs_key and (other.provider in client.keys or client._has_key_for(other.provider)):
            usable.append(other.ref)
    return usable


def _next_request(
    client: Limner, request: ImageRequest, spec: ModelSpec, queue: list[str], rng: random.Random
) -> ImageRequest:
    if spec.seed and not queue:
        return request.model_copy(update={"seed": rng.randrange(2**31)})
    if queue:
        return request.model_copy(update={"model": queue.pop(0), "seed": None})
    return request


def run_with_gate(
    client: Limner,
    op: Operation,
    request: ImageRequest,
    checks: Checks,
    max_attempts: int = 3,
    *,
    alternatives: list[str] | None = None,
    seed: int | None = None,
) -> GateResult:
    """Run ``request`` until every image passes ``checks``, at most ``max_attempts`` times."""
    from limner.ops._common import read_image

    if max_attempts < 1:
        raise errors.InvalidRequestError("max_attempts must be at least 1.", param="max_attempts")
    spec = client.resolve(request.model)
    request = request.model_copy(update={"model": spec.ref})
    queue = list(alternatives) if alternatives is not None else []
    if alternatives is None and not spec.seed:
        queue = recommended_alternatives(client, spec, op, bool(checks.expect_text), request.prompt)
    rng = random.Random(seed)
    attempts: list[Attempt] = []
    parent: str | None = None
    for number in range(max_attempts):
        result = client.run(op, request, use_cache=number == 0, parent_id=parent)
        parent = parent or result.generation_id
        named = [(f"image {i + 1}", read_image(img.data)[0]) for i, img in enumerate(result.images)]
        reports = check_images(named, checks)
        attempt = Attempt(result.model, request.seed, result.generation_id, reports)
        attempts.append(attempt)
        if attempt.passed:
            return GateResult(result, attempts)
        spec = client.resolve(request.model)
        request = _next_request(client, request, spec, queue, rng)
    raise QualityGateError(attempts)
