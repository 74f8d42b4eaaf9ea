"""Users, tokens and the caller."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from envmgr.api.deps import current_user, get_ctx
from envmgr.api.schemas import MeOut, TokenCreate, TokenInfo, TokenOut, UserCreate, UserOut, _email
from envmgr.auth.access import require_admin
from envmgr.auth.tokens import issue_token, revoke_token
from envmgr.context import Context
from envmgr.core.clock import iso
from envmgr.core.db import read_session
from envmgr.core.errors import APIError, forbidden, not_found
from envmgr.core.ids import new_id
from envmgr.core.models import ApiToken, User

router = APIRouter(tags=["users"])


@router.post("/users", status_code=201, response_model=UserOut)
def create_user(body: UserCreate, user: User = Depends(current_user),
                ctx: Context = Depends(get_ctx)) -> UserOut:
    require_admin(user)
    try:
        with ctx.tx() as s:
            if s.exec(select(User).where(col(User.email) == body.email)).first():
                raise APIError(409, "user_exists", f"a user {body.email!r} already exists")
            new = User(id=new_id("u"), email=body.email, admin=body.admin)
            s.add(new)
    except IntegrityError:
        raise APIError(409, "user_exists", f"a user {body.email!r} already exists") from None
    return UserOut(id=new.id, email=new.email, admin=new.admin, created_at=iso(new.created_at))


@router.post("/tokens", status_code=201, response_model=TokenOut)
def create_token(body: TokenCreate, user: User = Depends(current_user),
                 ctx: Context = Depends(get_ctx)) -> TokenOut:
    if not user.admin and body.email != user.email:
        raise forbidden("you may create tokens only for yourself")
    expires = ctx.clock.now() + timedelta(days=body.expires_in_days) \
        if body.expires_in_days is not None else None
    with ctx.tx() as s:
        target = s.exec(select(User).where(col(User.email) == body.email)).first()
        if target is None:
            raise not_found("user", body.email)
        token, token_id = issue_token(s, target, expires_at=expires, note=body.note)
    return TokenOut(token=token, id=token_id, email=target.email, expires_at=iso(expires))


@router.get("/tokens")
def list_tokens(email: str | None = Query(None, description="admins: another user's tokens"),
                user: User = Depends(current_user),
                ctx: Context = Depends(get_ctx)) -> dict[str, list[TokenInfo]]:
    """The caller's tokens (admins: anyone's), newest first, never their secrets."""
    who = user.email
    if email is not None:
        try:
            who = _email(email)
        except ValueError as exc:
            raise APIError(422, "validation_error", f"email: {exc}",
                           {"errors": [{"field": "email", "message": str(exc)}]}) from None
        if who != user.email:
            require_admin(user)
    with read_session(ctx.engine) as s:
        rows = s.exec(select(ApiToken, User).join(User, col(User.id) == col(ApiToken.user_id))
                      .where(col(User.email) == who)
                      .order_by(col(ApiToken.created_at).desc(), col(ApiToken.id))).all()
    return {"items": [TokenInfo(id=t.id, email=u.email, created_at=iso(t.created_at) or "",
                                last_used_at=iso(t.last_used_at), expires_at=iso(t.expires_at),
                                note=t.note, runtime=t.runtime_id) for t, u in rows]}


@router.delete("/tokens/{token_id}", status_code=204)
def delete_token(token_id: str, user: User = Depends(current_user),
                 ctx: Context = Depends(get_ctx)) -> Response:
    """Revokes the token and every browser session made with it, at once."""
    with ctx.tx() as s:
        token = s.get(ApiToken, token_id)
        if token is None or not (user.admin or token.user_id == user.id):
            raise not_found("token", token_id)
        token_hash = token.token_hash
        sids = revoke_token(s, token)
    for key in (token_hash, *(f"session:{sid}" for sid in sids)):
        ctx.user_cache.pop(key, None)
    return Response(status_code=204)


@router.get("/me", response_model=MeOut)
def me(user: User = Depends(current_user)) -> MeOut:
    return MeOut(email=user.email, admin=user.admin)
