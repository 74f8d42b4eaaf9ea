"""First start: the admin user and its token, written to <data dir>/admin-token (0600)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from envmgr.auth.tokens import hash_token, issue_token
from envmgr.core.db import write_session
from envmgr.core.ids import new_id
from envmgr.core.models import ApiToken, User
from envmgr.settings import Settings

ADMIN_EMAIL = "admin@localhost"


def token_file(settings: Settings) -> Path:
    return settings.data_dir / "admin-token"


def ensure_admin(engine: Engine, settings: Settings) -> str | None:
    """Make sure the admin exists and holds the configured token. Returns a token that was
    newly made (to print once), else None."""
    path = token_file(settings)
    wanted = settings.admin_token.get_secret_value() if settings.admin_token else None
    if wanted is None and path.exists():
        wanted = path.read_text().strip() or None
    made = None
    with contextlib.suppress(IntegrityError), write_session(engine) as s:
        admin = s.exec(select(User).where(col(User.email) == ADMIN_EMAIL)).first()
        if admin is None:
            admin = User(id=new_id("u"), email=ADMIN_EMAIL, admin=True)
            s.add(admin)
            s.flush()
        if wanted is None:
            made = wanted = issue_token(s, admin, note="first admin")[0]
        elif not s.exec(select(ApiToken)
                        .where(col(ApiToken.token_hash) == hash_token(wanted))).first():
            issue_token(s, admin, wanted, note="ENVMGR_ADMIN_TOKEN")
    if wanted is None:  # another replica made the first admin at the same moment
        return made
    if not path.exists() or path.read_text().strip() != wanted:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(wanted + "\n")
    os.chmod(path, 0o600)
    return made
