"""Browser sign-in: a token, checked once, becomes a server-side session whose id travels in
an HttpOnly cookie, so the pages never keep the token in script-readable storage and signing
out ends the session for good."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from envmgr.api.deps import SESSION_COOKIE, caller_from_token, get_ctx
from envmgr.api.schemas import MeOut
from envmgr.auth.signing import SESSION_SECONDS
from envmgr.auth.tokens import end_session, open_session
from envmgr.context import Context
from envmgr.core.errors import APIError

router = APIRouter(tags=["session"])


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=200)


@router.post("/session", response_model=MeOut)
async def sign_in(body: SignIn, response: Response, ctx: Context = Depends(get_ctx)) -> MeOut:
    caller = await caller_from_token(ctx, body.token.strip())
    if caller is None or caller.runtime is not None:
        raise APIError(401, "unauthorized", "unknown, expired or revoked token (or one that "
                       "opens a single runtime's Jupyter); ask an admin for one (the first "
                       "admin's token is in <data dir>/admin-token)")

    def start() -> str:
        with ctx.tx() as s:
            return open_session(s, caller.token_id, ctx.clock.now(), SESSION_SECONDS)
    sid = await asyncio.to_thread(start)
    response.set_cookie(SESSION_COOKIE, ctx.signer.session(sid), max_age=SESSION_SECONDS,
                        httponly=True, samesite="strict", secure=ctx.settings.secure_cookies)
    return MeOut(email=caller.user.email, admin=caller.user.admin)


@router.delete("/session", status_code=204)
async def sign_out(request: Request, ctx: Context = Depends(get_ctx)) -> Response:
    """Ends the session server-side (a copy of the cookie no longer works), then clears it."""
    signed = request.cookies.get(SESSION_COOKIE)
    sid = ctx.signer.check_session(signed) if signed else None
    if sid is not None:
        def end() -> None:
            with ctx.tx() as s:
                end_session(s, sid)
        await asyncio.to_thread(end)
        ctx.user_cache.pop(f"session:{sid}", None)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
    return response
