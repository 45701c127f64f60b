"""Who can read the NOTIFY channel (docs/operations.md, "Threat model"): document hints carry
small updates and workspace events their contents, for every tenant, on one channel. That is
acceptable because only the application role may connect, and it can act for any tenant anyway;
another role of the cluster cannot connect to the database, so it cannot LISTEN.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from server.db.database import app_url_from
from tests.conftest import TENANT_A, TENANT_B, Postgres, TestDatabase

PASSWORD = "outsider-password"


async def test_the_app_role_acts_for_whichever_tenant_it_sets(db: TestDatabase, admin: asyncpg.Connection) -> None:
    # The premise: RLS scopes the app role to the tenant it sets, and it may set any.
    ws = {t: uuid.uuid4() for t in (TENANT_A, TENANT_B)}
    for tenant, ws_id in ws.items():
        await admin.execute(
            "INSERT INTO workspaces (id, tenant_id, name, owner_id) VALUES ($1, $2, 'w', 'o')", ws_id, tenant
        )
    conn = await asyncpg.connect(db.app_url)
    try:
        for tenant, ws_id in ws.items():
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.current_tenant', $1, true)", str(tenant))
                assert await conn.fetchval("SELECT array_agg(id) FROM workspaces") == [ws_id]
    finally:
        await conn.close()


async def test_only_the_app_role_connects_so_only_it_can_listen(postgres: Postgres, empty_db: TestDatabase) -> None:
    outsider = f"tandem_t_outsider_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(empty_db.admin_url)
    try:
        await admin.execute(f"CREATE ROLE {outsider} LOGIN NOSUPERUSER PASSWORD '{PASSWORD}'")
        try:
            # Any other role of the cluster: refused at connect, before it could LISTEN.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await asyncpg.connect(app_url_from(postgres.url(empty_db.name), outsider, PASSWORD))
            # The app role connects and hears the channel.
            app = await asyncpg.connect(empty_db.app_url)
            try:
                heard: asyncio.Queue[str] = asyncio.Queue()
                await app.add_listener("tandem", lambda *args: heard.put_nowait(args[-1]))
                await admin.execute("SELECT pg_notify('tandem', 'hint')")
                assert await asyncio.wait_for(heard.get(), timeout=10) == "hint"
            finally:
                await app.close()
        finally:
            await admin.execute(f"DROP ROLE {outsider}")
    finally:
        await admin.close()
