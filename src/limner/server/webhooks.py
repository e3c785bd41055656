"""Job webhooks: signed with HMAC-SHA256 and retried with exponential backoff.

Each delivery is a POST of the job (as ``GET /v1/jobs/{id}`` shows it) with the headers
``Limner-Event`` (``job.succeeded``, ``job.failed``, ...), ``Limner-Delivery`` (the job id) and
``Limner-Signature: t=<unix time>,v1=<hex>``, where ``v1`` is HMAC-SHA256 over
``"<t>.<body>"`` with the server's webhook secret. Receivers check the signature and refuse old
``t`` values. Webhook URLs pass the same SSRF checks as image URLs (loopback and private
addresses only when the operator allows them); redirects are not followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import httpx

from limner import errors
from limner.fetch import SafeFetcher
from limner.server.settings import ServerSettings

__all__ = ["check_webhook_url", "deliver", "sign", "verify"]

log = logging.getLogger("limner.server.webhooks")
MAX_BACKOFF_S = 300.0


def _fetcher(settings: ServerSettings) -> SafeFetcher:
    private = settings.webhook_allow_private
    return SafeFetcher(
        allow_loopback=private, allow_http=private,
        allowed_ports=None if private else frozenset({80, 443}), timeout=15.0,
    )  # fmt: skip


def check_webhook_url(settings: ServerSettings, url: str) -> None:
    """Refuse a webhook the server could not or must not call, before the job is queued."""
    if not settings.webhook_secret:
        raise errors.InvalidRequestError(
            "This server sends no webhooks.",
            param="webhook_url",
            hint="The operator sets LIMNER_SERVER_WEBHOOK_SECRET to enable them; poll the job or use its events instead.",
        )
    try:
        _fetcher(settings).check(url)
    except errors.LimnerError as exc:
        raise errors.InvalidRequestError(
            f"webhook_url: {exc.message}", param="webhook_url"
        ) from exc


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def verify(secret: str, body: bytes, header: str, tolerance_s: float = 300.0) -> bool:
    """Check a ``Limner-Signature`` header (for receivers, and the tests)."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        ts = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - ts) > tolerance_s:
        return False
    expected = sign(secret, body, ts).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


async def deliver(
    settings: ServerSettings, client: httpx.AsyncClient, url: str, job: dict[str, Any]
) -> str:
    """POST the job to ``url`` until a 2xx answer or the attempts run out; return the outcome."""
    assert settings.webhook_secret
    body = json.dumps(job, separators=(",", ":")).encode()
    fetcher = _fetcher(settings)
    delay = settings.webhook_backoff_s
    for attempt in range(1, settings.webhook_attempts + 1):
        try:
            await asyncio.to_thread(fetcher.check, url)  # re-resolved and re-checked each time
            target, headers, extensions = fetcher.pinned(url, {
                "content-type": "application/json", "limner-event": f"job.{job['status']}",
                "limner-delivery": job["id"], "limner-signature": sign(settings.webhook_secret, body),
            })  # fmt: skip
            response = await client.post(
                target, content=body, headers=headers, extensions=extensions,
                timeout=15.0, follow_redirects=False,
            )  # fmt: skip
            if 200 <= response.status_code < 300:
                return "delivered"
            reason = f"HTTP {response.status_code}"
        except errors.LimnerError as exc:
            return f"refused: {exc.message}"[:64]
        except httpx.HTTPError as exc:
            reason = type(exc).__name__
        log.info("webhook for job %s: attempt %d failed (%s)", job["id"], attempt, reason)
        if attempt < settings.webhook_attempts:
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
    return f"failed after {settings.webhook_attempts} attempts"
