"""The webhook claim in PostgreSQL itself (server/db/sql/webhooks.sql), as the application role:
two claims at once never take the same delivery, a run is each endpoint's events in order, a
lease holds until it expires, and only the claim holding the lease records an outcome."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from server.db.store import Q
from tests.conftest import TENANT_A, TestDatabase

EVENTS = 30
RUN = 20


@pytest.fixture
async def queued(
    db: TestDatabase,
) -> AsyncIterator[tuple[TestDatabase, list[uuid.UUID]]]:
    """Two endpoints of one workspace and EVENTS state events, each delivered to both."""
    admin = await asyncpg.connect(db.admin_url)
    try:
        ws = await admin.fetchval(
            "INSERT INTO workspaces (tenant_id, name, owner_id) VALUES ($1, 'Hooks', 'alice') RETURNING id",
            TENANT_A,
        )
        endpoints = [
            await admin.fetchval(
                "INSERT INTO webhook_endpoints (tenant_id, workspace_id, url, secret, event_types)"
                " VALUES ($1, $2, $3, 'whsec_eA==', ARRAY['state.changed']) RETURNING id",
                TENANT_A,
                ws,
                f"http://127.0.0.1:9/{i}",
            )
            for i in range(2)
        ]
    finally:
        await admin.close()
    app = await asyncpg.connect(db.app_url)
    try:
        async with app.transaction():
            await app.execute(Q["set_context"], str(TENANT_A), "alice", None)
            for i in range(EVENTS):
                await app.execute(
                    Q["notify_and_emit"], ["{}"], [ws], ["state.changed"], [f'{{"n": {i}}}']
                )
    finally:
        await app.close()
    yield db, endpoints


async def claim(
    conn: asyncpg.Connection, token: uuid.UUID, lease_s: float = 30.0
) -> list[asyncpg.Record]:
    await conn.execute(Q["set_context"], str(TENANT_A), None, None)
    return await conn.fetch(Q["webhook_claim"], 100, lease_s, token, RUN)


async def test_two_claims_at_once_take_disjoint_runs_in_event_order(
    queued: tuple[TestDatabase, list[uuid.UUID]],
) -> None:
    db, endpoints = queued
    first, second = await asyncpg.connect(db.app_url), await asyncpg.connect(db.app_url)
    try:
        tx = first.transaction()
        await tx.start()
        taken = await claim(first, uuid.uuid4())  # not committed: its rows stay locked
        async with second.transaction():
            assert (
                await claim(second, uuid.uuid4()) == []
            )  # each run starts at a locked row
        await tx.commit()
        async with second.transaction():
            assert await claim(second, uuid.uuid4()) == []  # now leased
        for endpoint in endpoints:
            events = [r["event_id"] for r in taken if r["endpoint_id"] == endpoint]
            assert events == sorted(events) and len(events) == RUN
            assert events[0] == min(
                r["event_id"] for r in taken
            )  # from the first event
    finally:
        await first.close()
        await second.close()


async def test_an_expired_lease_is_claimed_again_and_only_the_new_claim_records(
    queued: tuple[TestDatabase, list[uuid.UUID]],
) -> None:
    db, _endpoints = queued
    conn = await asyncpg.connect(db.app_url)
    try:
        old, new = uuid.uuid4(), uuid.uuid4()
        async with conn.transaction():
            taken = await claim(
                conn, old, lease_s=0.0
            )  # expires at once: a node gone mid-post
        async with conn.transaction():
            again = await claim(conn, new)
        assert sorted(r["id"] for r in again) == sorted(r["id"] for r in taken)
        row = taken[0]
        await record(conn, row["id"], old)  # the first claim's outcome comes too late
        assert await state(db, row["id"]) == ("pending", 0)
        await record(conn, row["id"], new)
        assert await state(db, row["id"]) == ("delivered", 1)
    finally:
        await conn.close()


async def record(conn: asyncpg.Connection, delivery: int, token: uuid.UUID) -> None:
    async with conn.transaction():
        await conn.execute(Q["set_context"], str(TENANT_A), None, None)
        await conn.execute(Q["webhook_delivered"], delivery, token, 200)


async def state(db: TestDatabase, delivery: int) -> tuple[str, int]:
    admin = await asyncpg.connect(db.admin_url)
    try:
        row = await admin.fetchrow(
            "SELECT status, attempt FROM webhook_deliveries WHERE id = $1", delivery
        )
    finally:
        await admin.close()
    return row["status"], row["attempt"]


async def test_retention_deletes_old_events_every_endpoint_had_and_keeps_the_rest(
    queued: tuple[TestDatabase, list[uuid.UUID]],
) -> None:
    # The first 10 events are old: 0-4 delivered to both endpoints, 5 delivered to one only, 6
    # dead for both; 7-9 still pending. The newer ones stay whatever their state.
    db, endpoints = queued
    admin = await asyncpg.connect(db.admin_url)
    try:
        events = [r["id"] for r in await admin.fetch("SELECT id FROM webhook_outbox ORDER BY id")]
        await admin.execute(
            "UPDATE webhook_outbox SET created_at = now() - interval '8 days' WHERE id = ANY($1::bigint[])", events[:10]
        )
        await admin.execute(
            "UPDATE webhook_deliveries SET status = 'delivered' WHERE event_id = ANY($1::bigint[])", events[:5]
        )
        await admin.execute(
            "UPDATE webhook_deliveries SET status = 'delivered' WHERE event_id = $1 AND endpoint_id = $2",
            events[5], endpoints[0],
        )  # fmt: skip
        await admin.execute("UPDATE webhook_deliveries SET status = 'dead' WHERE event_id = $1", events[6])
        await admin.execute("UPDATE webhook_deliveries SET status = 'delivered' WHERE event_id = $1", events[20])
        app = await asyncpg.connect(db.app_url)  # the node's role: no tenant needed, a count back
        try:
            week_ago = await app.fetchval("SELECT now() - interval '7 days'")
            assert await app.fetchval(Q["webhook_sweep"], week_ago, 4) == 4  # at most max_rows
            assert await app.fetchval(Q["webhook_sweep"], week_ago, 100) == 2
            assert await app.fetchval(Q["webhook_sweep"], week_ago, 100) == 0
        finally:
            await app.close()
        left = [r["id"] for r in await admin.fetch("SELECT id FROM webhook_outbox ORDER BY id")]
        assert left == [events[5], *events[7:]]
        assert await admin.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE event_id = ANY($1::bigint[])", events[:5] + [events[6]]
        ) == 0  # fmt: skip
    finally:
        await admin.close()
