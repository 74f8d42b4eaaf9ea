"""Signed, expiring browser credentials. Proxy: a ticket (minutes, in a URL the owner opens)
is exchanged for a cookie (hours, HttpOnly, scoped to one runtime's proxy path). Pages: a
session cookie names the hash of the token the user signed in with, so revoking the token
ends the session too."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer

from envmgr.settings import Settings

TICKET_SECONDS = 300
COOKIE_SECONDS = 12 * 3600
SESSION_SECONDS = 12 * 3600


def secret_key(settings: Settings) -> str:
    if settings.secret_key:
        return settings.secret_key
    path = Path(settings.data_dir) / "secret-key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


class Signer:
    def __init__(self, key: str) -> None:
        self._ticket = URLSafeTimedSerializer(key, salt="envmgr-proxy-ticket")
        self._cookie = URLSafeTimedSerializer(key, salt="envmgr-proxy-cookie")
        self._session = URLSafeTimedSerializer(key, salt="envmgr-session")

    def ticket(self, user_id: str, runtime_id: str) -> str:
        return self._ticket.dumps([user_id, runtime_id])

    def cookie(self, user_id: str, runtime_id: str) -> str:
        return self._cookie.dumps([user_id, runtime_id])

    @staticmethod
    def _check(s: URLSafeTimedSerializer, value: str, runtime_id: str, age: int) -> str | None:
        try:
            user_id, rid = s.loads(value, max_age=age)
        except (BadSignature, ValueError, TypeError):
            return None
        return user_id if rid == runtime_id else None

    def check_ticket(self, value: str, runtime_id: str) -> str | None:
        return self._check(self._ticket, value, runtime_id, TICKET_SECONDS)

    def check_cookie(self, value: str, runtime_id: str) -> str | None:
        return self._check(self._cookie, value, runtime_id, COOKIE_SECONDS)

    def session(self, token_hash: str) -> str:
        return self._session.dumps(token_hash)

    def check_session(self, value: str) -> str | None:
        """The token hash a session cookie carries, if it is genuine and fresh."""
        try:
            token_hash = self._session.loads(value, max_age=SESSION_SECONDS)
        except (BadSignature, ValueError, TypeError):
            return None
        return token_hash if isinstance(token_hash, str) else None
