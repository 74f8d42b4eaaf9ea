"""Browser sign-in: a token, checked once, becomes an HttpOnly session cookie, so the pages
never keep the token in script-readable storage."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from envmgr.api.deps import SESSION_COOKIE, get_ctx, user_from_token_hash
from envmgr.auth import hash_token
from envmgr.context import Context
from envmgr.errors import APIError
from envmgr.schemas import MeOut
from envmgr.signing import SESSION_SECONDS

router = APIRouter(tags=["session"])


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=200)


@router.post("/session", response_model=MeOut)
async def sign_in(body: SignIn, response: Response, ctx: Context = Depends(get_ctx)) -> MeOut:
    token_hash = hash_token(body.token.strip())
    user = await user_from_token_hash(ctx, token_hash)
    if user is None:
        raise APIError(401, "unauthorized", "unknown or revoked token; ask an admin for one "
                       "(the first admin's token is in <data dir>/admin-token)")
    response.set_cookie(SESSION_COOKIE, ctx.signer.session(token_hash),
                        max_age=SESSION_SECONDS, httponly=True, samesite="strict",
                        secure=ctx.settings.base_url.startswith("https://"))
    return MeOut(email=user.email, admin=user.admin)


@router.delete("/session", status_code=204)
async def sign_out() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
    return response
