"""One hardened fetcher for every URL limner downloads (provider results, input images).

https only by default; every hop's host is resolved and refused when any address is loopback,
private, link-local, reserved, multicast or an IPv6 form that embeds one (IPv4-mapped, NAT64,
6to4); redirects are followed by hand, re-checked and capped; bodies are capped in size.
Loopback is allowed only when the fetcher is told so (an emulator or a local server as base URL).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpx

from limner import errors
from limner.flows import Fetched

__all__ = ["SafeFetcher", "check_address", "is_loopback_url"]

MAX_BYTES = 50 * 1024 * 1024
MAX_REDIRECTS = 5
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SIXTOFOUR = ipaddress.ip_network("2002::/16")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# Ranges refused whatever the CPython version's ``ipaddress`` flags say (they changed in 3.11.10,
# 3.12.4 and 3.13): shared address space (Alibaba metadata), IETF protocol assignments (Oracle
# metadata), benchmarking, IPv4-compatible IPv6, local-use NAT64, Teredo, unique-local.
DENIED_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15", "224.0.0.0/4",
        "240.0.0.0/4", "::/96", "64:ff9b:1::/48", "2001::/32", "fc00::/7", "fe80::/10", "ff00::/8",
    )
)  # fmt: skip


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped:
        return addr.ipv4_mapped
    if addr in NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr in SIXTOFOUR:
        return addr.sixtofour
    return None


def check_address(ip: str, *, allow_loopback: bool = False) -> str | None:
    """Why ``ip`` must not be fetched from, or None when it is a public address."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_v4(addr)
        if inner is not None:
            return check_address(str(inner), allow_loopback=allow_loopback)
    if addr.is_loopback:
        return None if allow_loopback else "a loopback address"
    if isinstance(addr, ipaddress.IPv6Address) and addr in IPV4_COMPATIBLE:
        inner = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)  # IPv4-compatible ::a.b.c.d
        return check_address(str(inner), allow_loopback=allow_loopback) or "a reserved address"
    for flag, label in (
        ("is_private", "a private address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_reserved", "a reserved address"),
        ("is_unspecified", "an unspecified address"),
    ):
        if getattr(addr, flag):
            return label
    if any(addr in net for net in DENIED_NETWORKS if net.version == addr.version):
        return "a reserved address"
    return None


@functools.lru_cache(maxsize=256)  # asked on every run, of a handful of base URLs
def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class SafeFetcher:
    allow_loopback: bool = False
    allow_http: bool = False
    max_bytes: int = MAX_BYTES
    max_redirects: int = MAX_REDIRECTS
    timeout: float = 60.0
    resolved: dict[str, list[str]] = field(default_factory=dict)
    # Ports a URL may name (None: any). The server's fetcher for user URLs allows 80 and 443.
    allowed_ports: frozenset[int] | None = None
    # Connect to the address that was checked (Host header and TLS name keep the hostname), so a
    # name that resolves differently the second time (DNS rebinding) cannot slip past the check.
    pin_address: bool = True

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise errors.InputImageError(
                f"Refusing to fetch {url!r}: only http(s) URLs are fetched."
            )
        if parts.username is not None or parts.password is not None:
            raise errors.InputImageError(
                f"Refusing to fetch {url!r}: credentials in URLs are not allowed."
            )
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if self.allowed_ports is not None and port not in self.allowed_ports:
            raise errors.InputImageError(
                f"Refusing to fetch {url!r}: port {port} is not allowed "
                f"(allowed: {', '.join(str(p) for p in sorted(self.allowed_ports))})."
            )
        loopback_host = is_loopback_url(url)
        if parts.scheme == "http" and not (
            self.allow_http or (self.allow_loopback and loopback_host)
        ):
            raise errors.InputImageError(f"Refusing to fetch {url!r}: https is required.")
        try:
            infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise errors.ProviderUnavailableError(
                f"Cannot resolve {parts.hostname!r}: {exc}"
            ) from exc
        addresses = sorted({str(info[4][0]) for info in infos})
        for ip in addresses:
            reason = check_address(ip.split("%")[0], allow_loopback=self.allow_loopback)
            if reason:
                raise errors.InputImageError(
                    f"Refusing to fetch {url!r}: {parts.hostname} resolves to {reason} ({ip})."
                )
        self.resolved[parts.hostname] = addresses

    def _pinned(
        self, url: str, headers: dict[str, str]
    ) -> tuple[str, dict[str, str], dict[str, str]]:
        """The URL with its host replaced by the checked address, the headers and extensions."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        addresses = self.resolved.get(host) or []
        if not self.pin_address or not addresses or addresses[0].split("%")[0] == host:
            return url, headers, {}
        ip = addresses[0].split("%")[0]
        netloc = f"[{ip}]" if ":" in ip else ip
        if parts.port:
            netloc += f":{parts.port}"
        host_header = parts.netloc.rpartition("@")[2]
        pinned = parts._replace(netloc=netloc).geturl()
        return pinned, {**headers, "Host": host_header}, {"sni_hostname": host}

    def check(self, url: str) -> None:
        """Refuse ``url`` (raising ``InputImageError``) unless it may be fetched; remember the
        checked addresses for :meth:`pinned`."""
        self._check_url(url)

    def pinned(
        self, url: str, headers: dict[str, str] | None = None
    ) -> tuple[str, dict[str, str], dict[str, str]]:
        """For a URL passed by :meth:`check`: the URL to send to (the checked address), the
        headers (with Host) and the request extensions (TLS server name)."""
        return self._pinned(url, headers or {})

    def _next(self, url: str, response: httpx.Response) -> str | None:
        if response.status_code in (301, 302, 303, 307, 308) and "location" in response.headers:
            return urljoin(url, response.headers["location"])
        return None

    def _result(self, url: str, response: httpx.Response, body: bytes) -> Fetched:
        if response.status_code >= 400:
            raise errors.ProviderUnavailableError(
                f"Download of {url} failed with HTTP {response.status_code}"
                + (
                    " (the result URL may have expired)."
                    if response.status_code in (403, 404, 410)
                    else "."
                ),
                status=response.status_code,
            )
        media = (
            response.headers.get("content-type", "application/octet-stream").split(";")[0].strip()
        )
        return Fetched(data=body, media_type=media, url=url)

    def _too_big(self, url: str) -> errors.LimnerError:
        return errors.InputImageError(
            f"Download of {url} exceeds {self.max_bytes // (1024 * 1024)} MiB."
        )

    def fetch(
        self, client: httpx.Client, url: str, headers: dict[str, str] | None = None
    ) -> Fetched:
        for _ in range(self.max_redirects + 1):
            self._check_url(url)
            target, sent_headers, extensions = self._pinned(url, headers or {})
            with client.stream(
                "GET",
                target,
                headers=sent_headers,
                follow_redirects=False,
                timeout=self.timeout,
                extensions=extensions,
            ) as response:
                nxt = self._next(url, response)
                if nxt:
                    url, headers = nxt, {}  # credentials never follow a redirect
                    continue
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise self._too_big(url)
                    chunks.append(chunk)
                return self._result(url, response, b"".join(chunks))
        raise errors.ProviderUnavailableError(f"Too many redirects fetching {url}.")

    async def afetch(
        self, client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
    ) -> Fetched:
        for _ in range(self.max_redirects + 1):
            await asyncio.to_thread(self._check_url, url)
            target, sent_headers, extensions = self._pinned(url, headers or {})
            async with client.stream(
                "GET",
                target,
                headers=sent_headers,
                follow_redirects=False,
                timeout=self.timeout,
                extensions=extensions,
            ) as response:
                nxt = self._next(url, response)
                if nxt:
                    url, headers = nxt, {}
                    continue
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise self._too_big(url)
                    chunks.append(chunk)
                return self._result(url, response, b"".join(chunks))
        raise errors.ProviderUnavailableError(f"Too many redirects fetching {url}.")
