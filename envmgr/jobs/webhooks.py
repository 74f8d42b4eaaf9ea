"""Webhooks: when a job reaches a stable status, POST {"event": "job.finished", "job"} to
its URL, signed with the job's secret (HMAC-SHA256 of "<timestamp>.<body>"), retried with
backoff, every attempt recorded.

A webhook must not be a way into the service's own network (SSRF): its host must resolve to
public addresses only, checked when the job is submitted and again before every attempt (a
name may be re-pointed), unless ENVMGR_WEBHOOK_ALLOW_PRIVATE is set; redirects are not
followed."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from urllib.parse import urlsplit

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


def _public(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: str, allow_private: bool) -> str:
    """The URL if a webhook may be sent there, else BadWebhook saying why."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadWebhook(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadWebhook("must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise BadWebhook("must not carry a user name or password")
    if len(url) > 2000:
        raise BadWebhook("may be at most 2000 characters")
    if allow_private:
        return url
    try:
        infos = socket.getaddrinfo(parts.hostname, port or 443, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise BadWebhook(f"its host {parts.hostname!r} does not resolve") from None
    private = sorted({str(info[4][0]) for info in infos if not _public(str(info[4][0]))})
    if private:
        raise BadWebhook(f"its host {parts.hostname!r} resolves to a loopback, private or "
                         f"reserved address ({', '.join(private)}); webhooks go to public "
                         "addresses only (ENVMGR_WEBHOOK_ALLOW_PRIVATE=true allows others)")
    return url
