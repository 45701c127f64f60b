"""Shared by the workspace tests (tests/test_workspace_*.py): an application-role pool, and
workspaces made and joined through server/workspaces/directory.py as the server does.
"""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from server.core.errors import TandemError
from server.db import store
from server.workspaces import directory as ws
from tests.conftest import TENANT_A

LIMIT = 1000



def tx(pool: asyncpg.Pool, agent_id: str, tenant_id: uuid.UUID = TENANT_A):
    return store.tenant_transaction(pool, tenant_id, agent_id)


async def make_workspace(
    pool: asyncpg.Pool, owner: str = "owner", tenant_id: uuid.UUID = TENANT_A, **kwargs
) -> ws.Workspace:
    async with tx(pool, owner, tenant_id) as conn:
        return await ws.create_workspace(conn, tenant_id, owner, kwargs.pop("name", "Design"), **kwargs)


async def join(
    pool: asyncpg.Pool, agent_id: str, workspace_id: uuid.UUID, tenant_id: uuid.UUID = TENANT_A, limit: int = LIMIT
) -> ws.JoinResult:
    async with tx(pool, agent_id, tenant_id) as conn:
        return await ws.join_workspace(conn, agent_id, workspace_id, limit)


async def join_error(
    pool: asyncpg.Pool, agent_id: str, workspace_id: uuid.UUID, tenant_id: uuid.UUID = TENANT_A
) -> TandemError:
    with pytest.raises(TandemError) as info:
        await join(pool, agent_id, workspace_id, tenant_id)
    return info.value
