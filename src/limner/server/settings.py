"""Server settings: where it listens, its limits, and the secret that signs asset URLs.

Every field can be set from the environment (``LIMNER_SERVER_<FIELD>``); ``limner serve``
passes its options on top.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path

from limner import errors
from limner.config import atomic_write, limner_home

__all__ = ["ServerSettings", "is_loopback_host"]

MIB = 1024 * 1024


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _parse(name: str, kind: object, raw: str, default: object) -> object:
    """One setting from the environment, refused with the variable's name when malformed."""
    if kind in ("bool", bool):
        word = raw.strip().lower()
        if word not in _TRUE + _FALSE:
            raise errors.UserError(
                f"{name}={raw!r} is neither on nor off.",
                hint=f"Set {name} to 1 or 0 (true/false, yes/no, on/off), or unset it for the "
                f"default ({'1' if default else '0'}).",
            )
        return word in _TRUE
    if kind in ("Path", Path):
        return Path(raw)
    if kind not in ("int", int, "float", float):
        return raw
    number_type = int if kind in ("int", int) else float
    try:
        number: float | None = number_type(raw)
    except ValueError:
        number = None
    if number is None or number < 0:
        noun = "a whole number" if number_type is int else "a number"
        raise errors.UserError(
            f"{name}={raw!r} is not {noun} of zero or more.",
            hint=f"Set {name} to {noun}, or unset it for the default ({default}).",
        )
    return number


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    home: Path = field(default_factory=limner_home)
    # Address clients use to reach this server (for ``url`` results); defaults to host:port.
    public_url: str | None = None
    max_json_bytes: int = 1 * MIB
    max_upload_bytes: int = 25 * MIB
    max_request_bytes: int = 64 * MIB
    max_images: int = 16
    url_ttl_s: int = 3600
    # Requests in flight across the server before new ones get 429 + Retry-After.
    max_inflight: int = 512
    # Concurrent provider calls per provider (jobs and direct requests alike).
    provider_concurrency: int = 64
    # Provider response bodies received at once; the others wait their turn (0: no limit).
    body_reads: int = 4
    # Seconds a direct request waits for a provider slot before 429.
    slot_wait_s: float = 30.0
    # Queued jobs one API key may hold before 429.
    max_queued_per_key: int = 10_000
    lease_s: float = 30.0
    workers: int = 8
    rate_per_minute: int = 0  # default per-key rate limit; 0 = none
    run_worker: bool = True
    gallery: bool = True
    mcp: bool = True  # MCP tools over streamable HTTP at /mcp/
    # Job webhooks are signed with this secret (HMAC-SHA256); without it jobs take no webhook.
    webhook_secret: str | None = None
    webhook_attempts: int = 6
    webhook_backoff_s: float = 1.0
    # Let webhooks reach loopback and private addresses (a receiver on the same host or LAN).
    webhook_allow_private: bool = False

    @classmethod
    def from_env(cls, **overrides: object) -> ServerSettings:
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f"LIMNER_SERVER_{f.name.upper()}"
            raw = os.environ.get(name)
            if raw is not None:
                values[f.name] = _parse(name, f.type, raw, f.default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def signing_secret(self) -> bytes:
        """A per-home secret kept in ``server-secret`` (0600), so signed URLs survive restarts."""
        path = self.home / "server-secret"
        if path.exists():
            return path.read_bytes()
        secret = secrets.token_bytes(32)
        atomic_write(path, secret, mode=0o600)
        return secret

    def check_bind(self, auth_configured: bool) -> None:
        """Refuse a non-loopback address unless clients must authenticate."""
        if not self.loopback and not auth_configured:
            raise errors.UserError(
                f"Refusing to listen on {self.host} without authentication.",
                hint=(
                    "Create a server key first (`limner server-keys create NAME`), or listen on "
                    "127.0.0.1 (the default)."
                ),
            )
