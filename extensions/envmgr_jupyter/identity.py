"""Jupyter's XSRF check, kept on for browsers.

Every request reaches a runtime's Jupyter with the runtime's token (added by the control
plane's proxy), and Jupyter skips its XSRF check for token-authenticated requests. For a
browser's request (the runtime's own origin, where JupyterLab runs) the proxy says so with
a header of its own (`X-Envmgr-Browser`, which it never lets a client send): such a request
counts as signed in by cookie, not by token, so Jupyter checks its `_xsrf` cookie against
the `X-XSRFToken` header JupyterLab sends, as for any browser signed in to Jupyter. API
clients (`/proxy/<id>/`) stay token clients."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.identity import PasswordIdentityProvider

BROWSER_HEADER = "X-Envmgr-Browser"


class ProxiedIdentityProvider(PasswordIdentityProvider):
    def is_token_authenticated(self, handler: Any) -> bool:
        token = bool(super().is_token_authenticated(handler))
        return token and handler.request.headers.get(BROWSER_HEADER) != "1"
