"""Per-provider rate limits for batches: a token bucket that also follows the provider's own
signals (``Retry-After`` on a 429, ``x-ratelimit-*`` headers), applied in an httpx transport so
that every request a provider flow sends, retries included, waits its turn.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from limner.http import parse_retry_after

__all__ = ["RateLimitedTransport", "RateLimiter", "TokenBucket", "parse_reset"]

# Pace a little under the limit: a provider counts arrivals, and network jitter can bunch ours.
SAFETY_MARGIN = 0.01
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_reset(value: str | None) -> float | None:
    """Seconds from an ``x-ratelimit-reset-*`` value: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"0.5"``."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    total, matched = 0.0, False
    for number, unit in _DURATION.findall(value):
        matched = True
        total += float(number) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    return total if matched else None


@dataclass
class TokenBucket:
    """A generic cell rate limiter: ``rpm`` requests a minute with bursts of ``burst``.

    ``pause(seconds)`` stops every caller until then (a 429 or an exhausted provider quota).
    ``rpm=None`` means no pacing, only the pauses a provider asks for.
    """

    rpm: float | None = None
    burst: int = 1
    _tat: float = 0.0  # theoretical arrival time of the next request
    _paused_until: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def interval(self) -> float:
        return 0.0 if not self.rpm else 60.0 / (self.rpm * (1 - SAFETY_MARGIN))

    def reserve(self, now: float | None = None) -> float:
        """Take a slot; return how many seconds the caller must wait before using it."""
        with self._lock:
            now = time.monotonic() if now is None else now
            start = max(now, self._paused_until)
            if self.interval:
                start = max(start, self._tat - (self.burst - 1) * self.interval)
                self._tat = max(start, self._tat) + self.interval
            return start - now

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def lower_limit(self, rpm: float) -> None:
        """Adopt the provider's advertised limit when it is below ours (or we had none)."""
        with self._lock:
            if rpm > 0 and (self.rpm is None or rpm < self.rpm):
                self.rpm = rpm


class RateLimiter:
    """Buckets by URL prefix (a provider's base URL), and counts what the providers said."""

    def __init__(self) -> None:
        self._buckets: list[tuple[str, str, TokenBucket]] = []
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, provider: str, base_url: str, rpm: float | None, burst: int = 1) -> TokenBucket:
        bucket = TokenBucket(rpm=rpm, burst=burst)
        with self._lock:
            self._buckets = [b for b in self._buckets if b[0] != provider]
            self._buckets.append((provider, base_url.rstrip("/"), bucket))
            # The longest prefix wins when two providers share a host.
            self._buckets.sort(key=lambda b: len(b[1]), reverse=True)
        return bucket

    def bucket_for(self, url: str) -> tuple[str, TokenBucket] | None:
        for provider, prefix, bucket in self._buckets:
            if url == prefix or url.startswith(prefix + "/") or url.startswith(prefix + "?"):
                return provider, bucket
        return None

    def reserve(self, provider: str) -> float:
        """Take a slot for ``provider``; return the seconds to wait before using it."""
        bucket = self._by_name(provider)
        return bucket.reserve() if bucket else 0.0

    def signal(self, provider: str, status: int, headers: Mapping[str, str]) -> None:
        """Follow what the provider said: its advertised limit, a 429's Retry-After, quota resets."""
        bucket = self._by_name(provider)
        if bucket is None:
            return
        limit = headers.get("x-ratelimit-limit-requests")
        if limit and limit.isdigit():
            bucket.lower_limit(float(limit))
        if status == 429:
            with self._lock:
                self.stats[f"{provider}:429"] += 1
            retry_after = parse_retry_after(httpx.Headers(dict(headers)))
            bucket.pause(retry_after if retry_after is not None else 1.0)
            return
        remaining = headers.get("x-ratelimit-remaining-requests")
        if remaining is not None and remaining.strip() == "0":
            reset = parse_reset(headers.get("x-ratelimit-reset-requests"))
            if reset:
                bucket.pause(reset)

    def _by_name(self, provider: str) -> TokenBucket | None:
        return next((b for name, _, b in self._buckets if name == provider), None)

    def before(self, url: str) -> None:
        found = self.bucket_for(url)
        if found:
            provider = found[0]
            waited = self.reserve(provider)
            if waited > 0:
                time.sleep(waited)
            with self._lock:
                self.stats[f"{provider}:requests"] += 1
                self.stats[f"{provider}:waited_ms"] += int(waited * 1000)

    def observe(self, url: str, response: httpx.Response) -> None:
        found = self.bucket_for(url)
        if found:
            wanted = {
                k: v
                for k, v in response.headers.items()
                if k.startswith(("x-ratelimit-", "retry-after"))
            }
            self.signal(found[0], response.status_code, wanted)

    def count(self, what: str) -> int:
        return sum(v for k, v in self.stats.items() if k.endswith(":" + what))


class RateLimitedTransport(httpx.BaseTransport):
    """Wraps a transport: each request to a limited provider waits for the bucket first."""

    def __init__(
        self,
        limiter: RateLimiter,
        inner: httpx.BaseTransport | None = None,
        on_send: Callable[[], None] | None = None,
    ) -> None:
        self.limiter = limiter
        self.inner = inner or httpx.HTTPTransport()
        self.on_send = on_send

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.limiter.before(url)
        if self.on_send and self.limiter.bucket_for(url):
            self.on_send()
        response = self.inner.handle_request(request)
        self.limiter.observe(url, response)
        return response

    def close(self) -> None:
        self.inner.close()
