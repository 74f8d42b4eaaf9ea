"""What a runtime may be made of and what each choice costs: forms show these choices."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from envmgr.api.deps import current_user, get_ctx
from envmgr.context import Context
from envmgr.core.models import User
from envmgr.costs.catalog import DISK_SIZE_RANGE
from envmgr.runtimes.service import MAX_AUTOPAUSE_MINUTES

router = APIRouter(tags=["catalog"])


@router.get("/catalog")
async def catalog(user: User = Depends(current_user),
                  ctx: Context = Depends(get_ctx)) -> dict[str, Any]:
    cat, st = ctx.catalog, ctx.settings
    return {
        "currency": cat.currency, "as_of": cat.as_of, "source": cat.source,
        "machine_types": cat.machine_types, "disk_types": cat.disk_types,
        "defaults": {"machine_type": cat.default_machine_type,
                     "disk_type": cat.default_disk_type,
                     "disk_size_gb": cat.default_disk_size_gb,
                     "autopause_minutes": st.autopause_default_minutes},
        "limits": {"disk_size_gb": list(DISK_SIZE_RANGE),
                   "autopause_minutes": [st.autopause_min_minutes, MAX_AUTOPAUSE_MINUTES]},
    }
