"""Signed browser credentials.

- A runtime link carries a *ticket*: signed (user, runtime, nonce), good for TICKET_SECONDS
  and redeemed once (its nonce goes into `used_tickets`), in the URL's fragment so it never
  reaches a server log, a proxy's log or a Referer.
- Redeeming it gives a *runtime cookie*: signed (user, runtime), HttpOnly, host-only on
  that runtime's own origin, so it never reaches the control plane or another runtime.
- A page's *session cookie* carries the id of a server-side session row (signed too, so a
  guessed id is refused before the database is asked)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer

from envmgr.settings import Settings

TICKET_SECONDS = 120
BOOT_SECONDS = 2 * 3600  # a VM's first boot, installs included, within the create deadline
COOKIE_SECONDS = 12 * 3600
SESSION_SECONDS = 12 * 3600


def secret_key(settings: Settings) -> str:
    if settings.secret_key:
        return settings.secret_key.get_secret_value()
    path = Path(settings.data_dir) / "secret-key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


class Signer:
    def __init__(self, key: str) -> None:
        self._key = key.encode()
        self._ticket = URLSafeTimedSerializer(key, salt="envmgr-runtime-ticket")
        self._cookie = URLSafeTimedSerializer(key, salt="envmgr-runtime-cookie")
        self._session = URLSafeTimedSerializer(key, salt="envmgr-session")
        self._boot = URLSafeTimedSerializer(key, salt="envmgr-boot-ticket")

    @staticmethod
    def _loads(s: URLSafeTimedSerializer, value: str, age: int) -> object:
        try:
            return s.loads(value, max_age=age)
        except (BadSignature, ValueError, TypeError):
            return None

    def _derive(self, purpose: str, runtime_id: str) -> str:
        return hmac.new(self._key, f"{purpose}:{runtime_id}".encode(), hashlib.sha256).hexdigest()

    def jupyter_token(self, runtime_id: str) -> str:
        """The token a runtime's Jupyter requires. Derived, never stored: the database holds
        no runtime secret, and only this service (which holds the key) can compute it."""
        return self._derive("jupyter-token", runtime_id)

    def runtime_token(self, runtime_id: str) -> str:
        """The runtime's one credential for the runtime API: bound to the runtime (and so
        to its owner and workspace), refused once the runtime is deleted."""
        return f"{runtime_id}.{self._derive('runtime-api', runtime_id)}"

    def check_runtime_token(self, token: str) -> str | None:
        """The runtime id a runtime token is genuine for, else None."""
        runtime_id, _, _ = token.partition(".")
        ok = hmac.compare_digest(token.encode(), self.runtime_token(runtime_id).encode())
        return runtime_id if runtime_id and ok else None

    def job_token(self, job_id: str) -> str:
        """A job's compute's one credential (the job API): good for that job alone, and only
        while it runs."""
        return f"{job_id}.{self._derive('job-api', job_id)}"

    def check_job_token(self, token: str) -> str | None:
        job_id, _, _ = token.partition(".")
        ok = hmac.compare_digest(token.encode(), self.job_token(job_id).encode())
        return job_id if job_id and ok else None

    def ticket(self, user_id: str, runtime_id: str) -> str:
        return self._ticket.dumps([user_id, runtime_id, secrets.token_urlsafe(16)])

    def check_ticket(self, value: str, runtime_id: str) -> tuple[str, str] | None:
        """(user id, nonce) if the ticket is genuine, fresh and for this runtime; whether it
        was used before is the database's to say."""
        got = self._loads(self._ticket, value, TICKET_SECONDS)
        if isinstance(got, list) and len(got) == 3 and got[1] == runtime_id \
                and all(isinstance(x, str) for x in got):
            return got[0], got[2]
        return None

    def boot_ticket(self, runtime_id: str) -> str:
        """What a VM's metadata carries instead of its tokens: good once (the nonce), for
        BOOT_SECONDS, for this runtime; the VM redeems it at first boot for its tokens."""
        return self._boot.dumps([runtime_id, secrets.token_urlsafe(16)])

    def check_boot_ticket(self, value: str) -> tuple[str, str] | None:
        """(runtime id, nonce) if genuine and fresh; whether it was used is the database's."""
        got = self._loads(self._boot, value, BOOT_SECONDS)
        if isinstance(got, list) and len(got) == 2 and all(isinstance(x, str) for x in got):
            return got[0], got[1]
        return None

    def cookie(self, user_id: str, runtime_id: str) -> str:
        return self._cookie.dumps([user_id, runtime_id])

    def check_cookie(self, value: str, runtime_id: str) -> str | None:
        got = self._loads(self._cookie, value, COOKIE_SECONDS)
        if isinstance(got, list) and len(got) == 2 and got[1] == runtime_id \
                and isinstance(got[0], str):
            return got[0]
        return None

    def session(self, session_id: str) -> str:
        return self._session.dumps(session_id)

    def check_session(self, value: str) -> str | None:
        """The session id a session cookie carries, if it is genuine and fresh."""
        got = self._loads(self._session, value, SESSION_SECONDS)
        return got if isinstance(got, str) else None
