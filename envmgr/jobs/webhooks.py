"""Webhooks: when a job reaches a stable status, POST {"event": "job.finished", "job"} to
its URL, signed with the job's secret (HMAC-SHA256 of "<timestamp>.<body>"), retried with
backoff, every attempt recorded.

A webhook must not be a way into the service's own network (SSRF). Its host name is put in
IDNA 2008 form once (the form HTTP clients use), resolved once per attempt, and refused
unless every address is globally routable: no loopback, private, link-local, site-local,
multicast, reserved or shared address, and none of the IPv6 forms that carry an IPv4
address (mapped, compatible, SIIT, NAT64, 6to4, Teredo). The delivery then connects to the
address that was checked, with the host name only in `Host` and TLS SNI, so neither a
second resolution (DNS rebinding) nor another reading of the name can move it. The same rule
holds at submit and at every attempt; ENVMGR_WEBHOOK_ALLOW_PRIVATE only widens the set of
addresses. Redirects are not followed."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import idna

# Seconds to wait after each failed attempt: 6 attempts over about 62 minutes.
BACKOFF = (30, 120, 600, 1200, 1800)
MAX_ATTEMPTS = len(BACKOFF) + 1


class BadWebhook(ValueError):
    pass


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def headers(delivery_id: str, secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": "envmgr-webhook/1",
            "X-Envmgr-Delivery": delivery_id, "X-Envmgr-Timestamp": str(timestamp),
            "X-Envmgr-Signature": signature(secret, timestamp, body)}


# IPv6 ranges that carry or translate to an IPv4 address, and the deprecated site-local
# range: never a webhook's address, whatever the IPv4 inside (Python's is_global misses most).
_V6_REFUSED = [ipaddress.ip_network(n) for n in (
    "::/96",  # IPv4-compatible (::a.b.c.d), and :: itself
    "::ffff:0:0/96",  # IPv4-mapped
    "::ffff:0:0:0/96",  # SIIT (IPv4-translated)
    "64:ff9b::/96", "64:ff9b:1::/48",  # NAT64
    "2002::/16",  # 6to4
    "2001::/32",  # Teredo
    "fec0::/10",  # site-local (deprecated, still routed inside some networks)
)]

# The resolver (socket.getaddrinfo's signature): a test stands in a resolver here.
resolve = socket.getaddrinfo


def refused_address(addr: str) -> str | None:
    """Why a webhook may not connect to `addr`, or None if it may."""
    try:
        ip = ipaddress.ip_address(addr.split("%")[0])
    except ValueError:
        return "not an address"
    if isinstance(ip, ipaddress.IPv6Address) and any(ip in net for net in _V6_REFUSED):
        return "an IPv6 form of an IPv4 or site-local address"
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return "not a public address"
    return None


@dataclass(frozen=True)
class Target:
    """Where a delivery goes: the address that was checked, and the name it was checked
    for (for `Host` and TLS SNI)."""

    url: str  # the URL with the address in place of the name
    host: str  # the name, IDNA 2008 (A-labels)
    host_header: str

    def request_args(self) -> dict[str, Any]:
        ext = {"sni_hostname": self.host} if self.url.startswith("https:") else {}
        return {"headers": {"Host": self.host_header}, "extensions": ext}


def _ascii_host(host: str) -> str:
    if host.isascii():
        return host.lower()
    try:
        return str(idna.encode(host, uts46=True).decode("ascii"))
    except idna.IDNAError as exc:
        raise BadWebhook(f"its host {host!r} is not a valid internationalised name: "
                         f"{exc}") from None


def _parts(url: str) -> tuple[Any, int | None]:
    try:
        parts = urlsplit(url)
        return parts, parts.port
    except ValueError as exc:
        raise BadWebhook(f"not a URL: {exc}") from None


def check_url(url: str, allow_private: bool) -> str:
    """The URL if a webhook may be sent there now, else BadWebhook saying why."""
    pin(url, allow_private)
    return url


def pin(url: str, allow_private: bool) -> Target:
    """Resolve the URL's host once, check every address, and say where to connect."""
    parts, port = _parts(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadWebhook("must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise BadWebhook("must not carry a user name or password")
    if len(url) > 2000:
        raise BadWebhook("may be at most 2000 characters")
    host = _ascii_host(parts.hostname)
    default = 443 if parts.scheme == "https" else 80
    try:
        infos = resolve(host, port or default, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, ValueError):  # ValueError: a NUL in the name
        raise BadWebhook(f"its host {host!r} does not resolve") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise BadWebhook(f"its host {host!r} does not resolve")
    bad = [f"{a} ({why})" for a in addresses if (why := refused_address(a))]
    if bad and not allow_private:
        raise BadWebhook(f"its host {host!r} resolves to a loopback, private or reserved "
                         f"address: {', '.join(bad)}; webhooks go to public addresses only "
                         "(ENVMGR_WEBHOOK_ALLOW_PRIVATE=true allows others)")
    addr = addresses[0]
    literal = f"[{addr}]" if ":" in addr else addr
    netloc = f"{literal}:{port}" if port else literal
    named = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    host_header = f"{named}:{port}" if port else named
    return Target(urlunsplit(parts._replace(netloc=netloc)), host, host_header)
