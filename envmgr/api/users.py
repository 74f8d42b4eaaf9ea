"""Users, tokens and the caller."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from envmgr.access import require_admin
from envmgr.api.deps import current_user, get_ctx
from envmgr.auth import issue_token
from envmgr.context import Context
from envmgr.db import write_session
from envmgr.errors import APIError, forbidden, not_found
from envmgr.ids import new_id
from envmgr.models import User
from envmgr.schemas import MeOut, TokenCreate, TokenOut, UserCreate, UserOut
from envmgr.timeutil import iso

router = APIRouter(tags=["users"])


@router.post("/users", status_code=201, response_model=UserOut)
def create_user(body: UserCreate, user: User = Depends(current_user),
                ctx: Context = Depends(get_ctx)) -> UserOut:
    require_admin(user)
    try:
        with write_session(ctx.engine) as s:
            if s.exec(select(User).where(User.email == body.email)).first():
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
    with write_session(ctx.engine) as s:
        target = s.exec(select(User).where(User.email == body.email)).first()
        if target is None:
            raise not_found("user", body.email)
        token = issue_token(s, target)
    return TokenOut(token=token, email=target.email)


@router.get("/me", response_model=MeOut)
def me(user: User = Depends(current_user)) -> MeOut:
    return MeOut(email=user.email, admin=user.admin)
