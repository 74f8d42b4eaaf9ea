"""Bearer tokens and browser sessions.

Tokens are 256-bit random secrets stored as SHA-256 (a slow hash buys nothing for secrets
this long, and every request checks one); they may expire and are revoked by deleting them.
A browser session is a row naming the token it was made with, so signing out, or revoking
the token, ends it at once."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, or_
from sqlmodel import Session, col, select

from envmgr.core.ids import new_id
from envmgr.core.models import ApiToken, BrowserSession, User

TOKEN_PREFIX = "envmgr_"


@dataclass(frozen=True)
class Caller:
    """Who is calling, and with which token (sessions too name the token they came from)."""

    user: User
    token_id: str
    token_hash: str
    runtime: str | None = None  # a token scoped to this runtime's Jupyter alone


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, user: User, token: str | None = None,
                expires_at: datetime | None = None, note: str | None = None,
                runtime_id: str | None = None) -> tuple[str, str]:
    """A new token for `user`: (the secret, shown once; its id). With `runtime_id`, it opens
    that runtime's Jupyter and nothing else."""
    token = token or TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = new_id("tok")
    session.add(ApiToken(id=token_id, user_id=user.id, token_hash=hash_token(token),
                         expires_at=expires_at, note=note, runtime_id=runtime_id))
    return token, token_id


def _live(now: datetime) -> ColumnElement[bool]:
    return or_(col(ApiToken.expires_at).is_(None), col(ApiToken.expires_at) > now)


def caller_for_token_hash(session: Session, token_hash: str, now: datetime) -> Caller | None:
    row = session.exec(
        select(User, ApiToken).join(ApiToken, col(ApiToken.user_id) == col(User.id))
        .where(col(ApiToken.token_hash) == token_hash, _live(now))
    ).first()
    return Caller(row[0], row[1].id, row[1].token_hash, row[1].runtime_id) if row else None


def open_session(session: Session, token_id: str, now: datetime, seconds: float) -> str:
    sid = secrets.token_urlsafe(32)
    session.add(BrowserSession(id=sid, token_id=token_id, created_at=now,
                               expires_at=now + timedelta(seconds=seconds)))
    return sid


def caller_for_session(session: Session, sid: str, now: datetime) -> Caller | None:
    row = session.exec(
        select(User, ApiToken).join(ApiToken, col(ApiToken.user_id) == col(User.id))
        .join(BrowserSession, col(BrowserSession.token_id) == col(ApiToken.id))
        .where(col(BrowserSession.id) == sid, col(BrowserSession.expires_at) > now, _live(now))
    ).first()
    return Caller(row[0], row[1].id, row[1].token_hash) if row else None


def end_session(session: Session, sid: str) -> None:
    session.exec(delete(BrowserSession).where(col(BrowserSession.id) == sid))


def revoke_token(session: Session, token: ApiToken) -> list[str]:
    """Delete the token and every browser session made with it; returns those sessions' ids
    (so caches can forget them)."""
    sids = list(session.exec(select(col(BrowserSession.id))
                             .where(col(BrowserSession.token_id) == token.id)).all())
    session.exec(delete(BrowserSession).where(col(BrowserSession.token_id) == token.id))
    session.delete(token)
    return sids
