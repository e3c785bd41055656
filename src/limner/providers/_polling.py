"""Shared pieces of the submit -> poll -> fetch flows of the queue-based providers.

Poll timing comes from provider options (constructor keyword arguments, overridden per request
by ``request.provider_options``):

    poll_interval      first wait between polls, seconds (default 1.0)
    poll_max_interval  cap of the growing wait (default 5.0)
    poll_backoff       factor the wait grows by after each poll (default 1.5)
    deadline_s         give up (and cancel the remote job where the provider allows it) after
                       this many seconds; the client-wide deadline of ``Limner`` still applies

These keys are limner's own and never reach the provider's wire body.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import httpx

from limner import codec, errors
from limner.flows import DeadlineExceeded, Progress, Send, Sleep, Step
from limner.types import ImageInput, ImageRequest

__all__ = [
    "POLL_OPTION_KEYS",
    "PollSettings",
    "data_url",
    "error_detail",
    "poll",
    "wire_options",
]

POLL_OPTION_KEYS = frozenset({"poll_interval", "poll_max_interval", "poll_backoff", "deadline_s"})


@dataclass(frozen=True)
class PollSettings:
    interval: float = 1.0
    max_interval: float = 5.0
    backoff: float = 1.5
    deadline_s: float | None = None

    @classmethod
    def from_options(cls, defaults: dict[str, Any], request: ImageRequest) -> PollSettings:
        merged = {**defaults, **request.provider_options}
        try:
            interval = float(merged.get("poll_interval", cls.interval))
            deadline = merged.get("deadline_s")
            return cls(
                interval=interval,
                max_interval=max(
                    float(merged.get("poll_max_interval", cls.max_interval)), interval
                ),
                backoff=max(float(merged.get("poll_backoff", cls.backoff)), 1.0),
                deadline_s=float(deadline) if deadline is not None else None,
            )
        except (TypeError, ValueError) as exc:
            raise errors.InvalidRequestError(
                f"Poll options must be numbers ({exc}).", param="provider_options"
            ) from exc

    def delays(self) -> Generator[float, None, None]:
        wait = self.interval
        while True:
            yield wait
            wait = min(wait * self.backoff, self.max_interval)


def wire_options(request: ImageRequest, reserved: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Provider options meant for the wire body: all but limner's poll keys and ``reserved``."""
    skip = POLL_OPTION_KEYS | reserved
    return {k: v for k, v in request.provider_options.items() if k not in skip}


def poll(
    settings: PollSettings,
    make_request: Callable[[], httpx.Request],
    check: Callable[[httpx.Response], bool],
    progress: Callable[[httpx.Response], Progress | None] | None = None,
) -> Generator[Step, Any, httpx.Response]:
    """Sleep and poll until ``check(response)`` is true; return that response.

    ``check`` raises for failed jobs and error statuses. Past ``settings.deadline_s`` this raises
    :class:`DeadlineExceeded`, the same signal the driver throws at the client-wide deadline, so
    one ``except DeadlineExceeded`` in the flow cancels the remote job in both cases.
    """
    started = time.monotonic()
    for delay in settings.delays():
        if settings.deadline_s is not None:
            left = settings.deadline_s - (time.monotonic() - started)
            if left <= 0:
                raise DeadlineExceeded()
            delay = min(delay, left)
        yield Sleep(delay)
        response: httpx.Response = yield Send(make_request())
        if check(response):
            return response
        step = progress(response) if progress else None
        if step is not None:
            yield step
    raise AssertionError("unreachable")  # pragma: no cover


def job_failure(
    provider: str, job: str, job_id: str, reason: str, policy_hints: tuple[str, ...]
) -> errors.LimnerError:
    """The error for a remote job that failed: a content-policy refusal when ``reason`` names one
    of ``policy_hints``, else :class:`errors.JobFailedError`."""
    unsafe = any(hint in reason.lower() for hint in policy_hints)
    cls = errors.ContentPolicyError if unsafe else errors.JobFailedError
    return cls(f"{provider}: {job} {job_id} failed: {reason}", provider=provider, request_id=job_id)


def data_url(image: ImageInput | bytes, media_type: str = "image/png") -> str:
    """An image as a ``data:`` URL, the form Replicate and fal take inline."""
    data = image.data if isinstance(image, ImageInput) else image
    media = image.media_type if isinstance(image, ImageInput) else media_type
    return f"data:{media};base64,{codec.b64encode(data)}"


def b64(image: ImageInput | bytes) -> str:
    data = image.data if isinstance(image, ImageInput) else image
    return codec.b64encode(data)


def error_detail(response: httpx.Response) -> str | None:
    """The human message of a JSON error body: ``detail`` (str or validation list), ``message``,
    ``error``, ``errors`` or ``title``."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:300] or None
    if not isinstance(body, dict):
        return str(body)[:300]
    detail = body.get("detail")
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if detail:
        return str(detail)
    for key in ("message", "error"):
        if isinstance(body.get(key), str) and body[key]:
            return str(body[key])
    if isinstance(body.get("errors"), list) and body["errors"]:
        return "; ".join(str(e) for e in body["errors"])
    title = body.get("title")
    return str(title) if title else None


def size_for_aspect(aspect: str, megapixels: float = 1.0, multiple: int = 16) -> tuple[int, int]:
    """Width and height near ``megapixels`` for ``aspect`` ("W:H"), rounded to ``multiple``."""
    a, _, b = aspect.partition(":")
    ratio = float(a) / float(b)
    height = (megapixels * 1_000_000 / ratio) ** 0.5
    width = height * ratio

    def snap(v: float) -> int:
        return max(round(v / multiple) * multiple, multiple)

    return snap(width), snap(height)


def padding_to(
    image: ImageInput,
    size: str | None,
    options: dict[str, Any],
    names: tuple[str, str, str, str],
    expand: dict[str, int] | None = None,
) -> dict[str, int]:
    """Outpaint padding (left, right, top, bottom under ``names``) from the request's ``expand``,
    the provider's own options, or a target size (the image centred in it), in that order."""
    left, right, top, bottom = names
    if expand:
        canonical = ("left", "right", "top", "bottom")
        return {name: int(expand.get(side, 0)) for name, side in zip(names, canonical, strict=True)}
    given = {k: int(options[k]) for k in names if k in options}
    if given:
        return {k: given.get(k, 0) for k in names}
    if not size or "x" not in size:
        raise errors.InvalidRequestError(
            "Outpainting needs a target size larger than the image.",
            param="size",
            hint=f"Pass --size WxH, or provider options {', '.join(names)} in pixels.",
        )
    w, _, h = size.partition("x")
    extra_w, extra_h = int(w) - image.width, int(h) - image.height
    if extra_w < 0 or extra_h < 0 or extra_w + extra_h == 0:
        raise errors.InvalidRequestError(
            f"Outpaint size {size} must be larger than the image ({image.width}x{image.height}).",
            param="size",
        )
    return {
        left: extra_w // 2,
        right: extra_w - extra_w // 2,
        top: extra_h // 2,
        bottom: extra_h - extra_h // 2,
    }
