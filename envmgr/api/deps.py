"""Shared request dependencies: the service context, the caller, list paging."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from fastapi import Depends, Query, Request
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from envmgr.auth.tokens import Caller, caller_for_session, caller_for_token_hash, hash_token
from envmgr.context import Context
from envmgr.core.db import read_session
from envmgr.core.errors import APIError, invalid
from envmgr.core.models import ApiToken, UsedTicket, User

log = logging.getLogger("envmgr.auth.tokens")

_MARK = "c1:"
SESSION_COOKIE = "envmgr_session"
# Pages send this header on every call that changes something. A cross-site form cannot set
# it (and no CORS is configured for a script to), so a session cookie alone never acts.
SESSION_HEADER = "x-requested-by"
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


async def get_ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}
TOKEN_USE_WRITE_SECONDS = 60.0


async def _cached(ctx: Context, key: str, lookup: Callable[[Session, datetime], Caller | None]
                  ) -> Caller | None:
    """Callers are cached for a few seconds (every request authenticates); revoking a token
    or ending a session drops its entries here at once, and on other replicas within the
    cache's lifetime."""
    caller = ctx.user_cache.get(key)
    if caller is None:
        def find() -> Caller | None:
            with read_session(ctx.engine) as s:
                return lookup(s, ctx.clock.now())
        caller = await asyncio.to_thread(find)
        if caller is not None:
            ctx.user_cache[key] = caller
    return caller


async def caller_from_token(ctx: Context, token: str) -> Caller | None:
    token_hash = hash_token(token)
    return await _cached(ctx, token_hash,
                         lambda s, now: caller_for_token_hash(s, token_hash, now))


async def user_by_id(ctx: Context, user_id: str) -> User | None:
    caller = ctx.user_cache.get(f"user:{user_id}")
    if caller is None:
        def lookup() -> User | None:
            with read_session(ctx.engine) as s:
                return s.get(User, user_id)
        user = await asyncio.to_thread(lookup)
        if user is None:
            return None
        caller = ctx.user_cache[f"user:{user_id}"] = Caller(user, "", "")
    return caller.user


def bearer(headers: Any) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def session_caller(ctx: Context, request: Request) -> Caller | None:
    """The caller a page's session cookie stands for, if any."""
    signed = request.cookies.get(SESSION_COOKIE)
    sid = ctx.signer.check_session(signed) if signed else None
    if sid is None:
        return None
    return await _cached(ctx, f"session:{sid}", lambda s, now: caller_for_session(s, sid, now))


async def session_user(ctx: Context, request: Request) -> User | None:
    caller = await session_caller(ctx, request)
    return caller.user if caller else None


def write_behind(ctx: Context, written: dict[str, float], key: str, every: float,
                 statement: Any, what: str) -> None:
    """Run an UPDATE in a thread, at most once per `every` seconds per key: bookkeeping
    (last use, last activity) that must never cost a write per request."""
    now = time.monotonic()
    if now - written.get(key, -every) < every:
        return
    written[key] = now

    def write() -> None:
        with ctx.tx() as s:
            s.execute(statement)
    task = asyncio.get_running_loop().run_in_executor(None, write)
    def report(t: asyncio.Future[None]) -> None:
        if t.exception() is not None:
            log.warning(f"could not record {what}", extra={"key": key})
    task.add_done_callback(report)


def _note_use(ctx: Context, caller: Caller) -> None:
    write_behind(ctx, ctx.token_used, caller.token_id, TOKEN_USE_WRITE_SECONDS,
                 update(ApiToken).where(col(ApiToken.id) == caller.token_id)
                 .values(last_used_at=ctx.clock.now()), "token use")


async def current_caller(request: Request, ctx: Context = Depends(get_ctx)) -> Caller:
    token = bearer(request.headers)
    if token is None and SESSION_COOKIE in request.cookies:
        if request.method not in _SAFE_METHODS and \
                request.headers.get(SESSION_HEADER) != "envmgr":
            raise APIError(403, "forbidden", "a signed-in page must send the header "
                           "'X-Requested-By: envmgr' with every change; API clients send "
                           "'Authorization: Bearer <token>'")
        caller = await session_caller(ctx, request)
        if caller is None:
            raise APIError(401, "unauthorized", "your session has ended (signed out, expired "
                           "or its token was revoked); sign in again", headers=_UNAUTHORIZED)
    elif token is None:
        raise APIError(401, "unauthorized", "send the header 'Authorization: Bearer <token>'",
                       headers=_UNAUTHORIZED)
    else:
        found = await caller_from_token(ctx, token)
        if found is None:
            raise APIError(401, "unauthorized", "unknown, expired or revoked token",
                           headers=_UNAUTHORIZED)
        if found.runtime is not None:
            raise APIError(403, "forbidden", f"this token opens runtime {found.runtime}'s "
                           f"Jupyter only (/proxy/{found.runtime}/), nothing else of the API")
        caller = found
    _note_use(ctx, caller)
    return caller


async def current_user(caller: Caller = Depends(current_caller)) -> User:
    return caller.user


async def read_limited(request: Request, limit: int, what: str) -> bytes:
    """The body, read as it streams in and refused as soon as it passes `limit` (a huge
    upload never sits in memory whole)."""
    too_large = APIError(413, "too_large", f"{what} may be at most {limit} bytes",
                         {"limit": limit})
    length = request.headers.get("content-length", "")
    if re.fullmatch(r"[0-9]{1,20}", length) and int(length) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


class Paging:
    def __init__(self, limit: int = Query(100, ge=1, le=1000),
                 cursor: str | None = Query(None, max_length=200)) -> None:
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
        return items, cursor_after(getattr(items[-1], key)) if more and items else None


def cursor_after(value: object) -> str:
    """The cursor for the page after the row keyed `value`."""
    return base64.urlsafe_b64encode(f"{_MARK}{value}".encode()).decode()


async def redeem(ctx: Context, seconds: float, nonce: str) -> bool:
    """True the first time a single-use nonce (a sign-in or boot ticket's) is seen, on any
    replica (a primary key); remembered a little longer than its ticket lives."""
    now = ctx.clock.now()

    def insert() -> bool:
        try:
            with ctx.tx() as s:
                s.exec(delete(UsedTicket).where(col(UsedTicket.expires_at) < now))
                s.add(UsedTicket(nonce=nonce, expires_at=now + timedelta(seconds=seconds + 60)))
            return True
        except IntegrityError:
            return False
    return await asyncio.to_thread(insert)
