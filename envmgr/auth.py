"""Bearer tokens: 256-bit random secrets, stored as SHA-256 (a slow hash buys nothing for
secrets this long, and every request checks one)."""

from __future__ import annotations

import hashlib
import secrets

from sqlmodel import Session, select

from envmgr.ids import new_id
from envmgr.models import ApiToken, User

TOKEN_PREFIX = "envmgr_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, user: User, token: str | None = None) -> str:
    token = token or TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(id=new_id("tok"), user_id=user.id, token_hash=hash_token(token)))
    return token


def user_for_token_hash(session: Session, token_hash: str) -> User | None:
    return session.exec(
        select(User).join(ApiToken, ApiToken.user_id == User.id)
        .where(ApiToken.token_hash == token_hash)
    ).first()
