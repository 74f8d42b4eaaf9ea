"""Where user content lives: every runtime on an origin of its own.

Embedded: `http://<runtime id>.localhost:<port>` (browsers resolve `*.localhost` to the
loopback, and host-only cookies stay with that one subdomain); deployments:
`https://<runtime id>.<ENVMGR_RUNTIMES_DOMAIN>`. One listener serves the control plane and
every runtime origin; the Host header says which a request is for."""

from __future__ import annotations

import re
from urllib.parse import quote

from envmgr.backends.base import base_path
from envmgr.settings import Settings

RUNTIME_LABEL = re.compile(r"rt-[0-9a-z]{21}")


def runtime_origin(settings: Settings, runtime_id: str) -> str:
    scheme = "https" if settings.secure_cookies else "http"
    return f"{scheme}://{runtime_id}.{settings.runtimes_host}"


def runtime_for_host(settings: Settings, host: str) -> str | None:
    """The runtime id a request's Host header names, or None (the control plane's own)."""
    hostname = host.strip().lower().rsplit(":", 1)[0] if not host.startswith("[") else ""
    domain = settings.runtimes_host.lower().rsplit(":", 1)[0]
    label, dot, rest = hostname.partition(".")
    if dot and rest == domain and RUNTIME_LABEL.fullmatch(label):
        return label
    return None


def login_url(settings: Settings, runtime_id: str, ticket: str, page: str = "lab") -> str:
    """The runtime's `url`: its own origin's sign-in page, with the ticket in the fragment
    (never sent to a server, so never in an access log, a proxy's log or a Referer)."""
    target = quote(f"{base_path(runtime_id)}/{page}", safe="/")
    return f"{runtime_origin(settings, runtime_id)}/_envmgr/login?next={target}#{ticket}"
