"""Shared request dependencies: the service context, the caller, list paging."""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Sequence
from typing import Any

from fastapi import Depends, Query, Request

from envmgr.auth import hash_token, user_for_token_hash
from envmgr.context import Context
from envmgr.db import read_session
from envmgr.errors import APIError, invalid
from envmgr.models import User

_MARK = "c1:"
SESSION_COOKIE = "envmgr_session"
# Pages send this header on every call that changes something. A cross-site form cannot set
# it (and no CORS is configured for a script to), so a session cookie alone never acts.
SESSION_HEADER = "x-requested-by"
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


async def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


async def user_from_token(ctx: Context, token: str) -> User | None:
    return await user_from_token_hash(ctx, hash_token(token))


async def user_from_token_hash(ctx: Context, key: str) -> User | None:
    """Cached for a few seconds: every request authenticates, and a token's user changes
    rarely."""
    user = ctx.user_cache.get(key)
    if user is None:
        def lookup() -> User | None:
            with read_session(ctx.engine) as s:
                return user_for_token_hash(s, key)
        user = await asyncio.to_thread(lookup)
        if user is not None:
            ctx.user_cache[key] = user
    return user


async def user_by_id(ctx: Context, user_id: str) -> User | None:
    user = ctx.user_cache.get(user_id)
    if user is None:
        def lookup() -> User | None:
            with read_session(ctx.engine) as s:
                return s.get(User, user_id)
        user = await asyncio.to_thread(lookup)
        if user is not None:
            ctx.user_cache[user_id] = user
    return user


def bearer(headers: Any) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def session_user(ctx: Context, request: Request) -> User | None:
    """The user a page's session cookie stands for, if any."""
    signed = request.cookies.get(SESSION_COOKIE)
    token_hash = ctx.signer.check_session(signed) if signed else None
    return await user_from_token_hash(ctx, token_hash) if token_hash else None


async def current_user(request: Request, ctx: Context = Depends(get_ctx)) -> User:
    token = bearer(request.headers)
    if token is None and SESSION_COOKIE in request.cookies:
        if request.method not in _SAFE_METHODS and \
                request.headers.get(SESSION_HEADER) != "envmgr":
            raise APIError(403, "forbidden", "a signed-in page must send the header "
                           "'X-Requested-By: envmgr' with every change; API clients send "
                           "'Authorization: Bearer <token>'")
        user = await session_user(ctx, request)
        if user is None:
            raise APIError(401, "unauthorized", "your session has expired or its token was "
                           "revoked; sign in again", headers=_UNAUTHORIZED)
        return user
    if token is None:
        raise APIError(401, "unauthorized", "send the header 'Authorization: Bearer <token>'",
                       headers=_UNAUTHORIZED)
    user = await user_from_token(ctx, token)
    if user is None:
        raise APIError(401, "unauthorized", "unknown or revoked token",
                       headers=_UNAUTHORIZED)
    return user


class Paging:
    def __init__(self, limit: int = Query(100, ge=1, le=1000),
                 cursor: str | None = Query(None)) -> None:
        self.limit = limit
        self.after: str | None = None
        if cursor:
            try:
                raw = base64.b64decode(cursor.encode(), altchars=b"-_", validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raw = ""
            if not raw.startswith(_MARK):
                raise invalid("cursor", "not a cursor this service gave out; pass "
                              "next_cursor from the previous page")
            self.after = raw.removeprefix(_MARK)

    def page(self, rows: Sequence[Any], key: str = "id") -> tuple[list[Any], str | None]:
        """rows were fetched with limit+1; return this page and the next cursor."""
        items = list(rows[: self.limit])
        more = len(rows) > self.limit
        nxt = base64.urlsafe_b64encode(f"{_MARK}{getattr(items[-1], key)}".encode()).decode() \
            if more and items else None
        return items, nxt
