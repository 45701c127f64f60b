"""The NOTIFY hint formats (server/cluster/hints.py): the SQL that builds "ops" hints (`tandem_ops_hint`,
migration 0022) is pinned against the Python decoder, cut-offs included; events round-trip."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg

from server.cluster import hints
from server.core.revocations import Revocation
from server.db import store
from server.db.database import create_pool
from tests.conftest import TENANT_A

NODE = "node-1"
DOC = uuid.UUID("00000000-0000-0000-0000-0000000000d1")


async def _sql_hint(conn: asyncpg.Connection, seq: int, ops: list[tuple[str, bytes, str]]) -> str:
    return await conn.fetchval(
        "SELECT tandem_ops_hint($1, $2, $3, $4, $5, $6)",
        DOC, seq, NODE, [a for a, _, _ in ops], [u for _, u, _ in ops], [t for _, _, t in ops],
    )  # fmt: skip


def _decoded(payload: str) -> hints.OpsHint:
    hint = hints.decode(payload, "another-node")
    assert isinstance(hint, hints.OpsHint)
    return hint


async def test_sql_ops_hint_decodes_with_the_operations_carried(app_conn) -> None:
    ops = [("alice", b"\x01\x02\x03", "insert"), ("bob", bytes(range(256)) * 3, "delete")]
    before = time.time()
    hint = _decoded(await _sql_hint(app_conn, 7, ops))
    assert (hint.node_id, hint.doc_id, hint.seq) == (NODE, DOC, 7)
    assert hint.carried == tuple(hints.CarriedOperation(a, u, t) for a, u, t in ops)
    assert hint.at is not None and before - 1 <= hint.at <= time.time() + 1


async def test_sql_ops_hint_carries_updates_up_to_the_byte_limit_and_none_beyond(app_conn) -> None:
    limit = hints.MAX_CARRIED_UPDATE_BYTES
    at_limit = [("a", b"x" * (limit - 1000), "insert"), ("a", b"y" * 1000, "insert")]
    assert len(_decoded(await _sql_hint(app_conn, 2, at_limit)).carried) == 2
    beyond = [("a", b"x" * (limit - 1000), "insert"), ("a", b"y" * 1001, "insert")]
    hint = _decoded(await _sql_hint(app_conn, 2, beyond))
    assert (hint.seq, hint.carried) == (2, ())
    assert hint.at is not None


async def test_sql_ops_hint_leaves_operations_out_when_the_payload_would_exceed_notify(app_conn) -> None:
    # Small updates, but agent ids long enough that the payload with them passes the limit.
    ops = [("agent-" + "z" * 1000, b"u", "insert")] * 8
    fits = await _sql_hint(app_conn, 8, ops[:6])
    assert len(fits.encode()) <= hints.MAX_NOTIFY_BYTES and len(_decoded(fits).carried) == 6
    too_big = await _sql_hint(app_conn, 8, ops)
    assert len(too_big.encode()) <= hints.MAX_NOTIFY_BYTES
    assert _decoded(too_big).carried == ()


async def test_sql_ops_hint_of_this_node_is_dropped(app_conn) -> None:
    payload = await _sql_hint(app_conn, 1, [("a", b"u", "insert")])
    assert hints.decode(payload, NODE) is None
    bare = await _sql_hint(app_conn, 1, [("a", b"u" * 5000, "insert")])
    assert hints.decode(bare, NODE) is None


async def test_append_batch_notifies_the_hint_tandem_ops_hint_builds(db) -> None:
    pool = await create_pool(db.app_url, min_size=1, max_size=2)
    listener = await asyncpg.connect(db.app_url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener(hints.CHANNEL, lambda _c, _p, _ch, payload: heard.put_nowait(payload))
        async with store.tenant_transaction(pool, TENANT_A, "setup") as conn:
            ws = await conn.fetchval(
                "INSERT INTO workspaces (tenant_id, name, owner_id) VALUES ($1, 'h', 'setup') RETURNING id", TENANT_A
            )
            doc_id = await conn.fetchval(
                "INSERT INTO shared_documents (workspace_id, tenant_id, title, created_by)"
                " VALUES ($1, $2, 'doc', 'setup') RETURNING id",
                ws, TENANT_A,
            )  # fmt: skip
        async with store.tenant_transaction(pool, TENANT_A, "alice") as conn:
            rows = await conn.fetch(
                store.Q["append_batch"], [TENANT_A] * 2, [doc_id] * 2, ["alice", "bob"], [None, None],
                ["insert", "delete"], ["{}", "{}"], [b"one", b"two"], "writer-node",
            )  # fmt: skip
        assert [r["seq"] for r in rows] == [1, 2]
        async with asyncio.timeout(10):
            hint = hints.decode(await heard.get(), "reader-node")
        assert isinstance(hint, hints.OpsHint)
        assert (hint.node_id, hint.doc_id, hint.seq) == ("writer-node", doc_id, 2)
        assert hint.carried == (
            hints.CarriedOperation("alice", b"one", "insert"), hints.CarriedOperation("bob", b"two", "delete")
        )  # fmt: skip
    finally:
        await listener.close()
        await pool.close()


def test_each_key_has_one_meaning() -> None:
    keys = [hints.KIND, hints.NODE, hints.DOC, hints.SEQ, hints.AT, hints.OPS, hints.TENANT, hints.WORKSPACE,
            hints.AGENTS, hints.EVENT, hints.REF, hints.AGENT, hints.JTI, hints.REVOKED_BEFORE,
            hints.EXPIRES]  # fmt: skip
    assert len(set(keys)) == len(keys)


def test_event_round_trips_and_a_large_one_travels_as_a_reference() -> None:
    tenant, workspace = uuid.uuid4(), uuid.uuid4()
    # The message may hold the node key too: only the sender's own node drops the event.
    message = {"type": "state.changed", "version": 3, "value": {"n": "reader"}}
    small = hints.encode_event(NODE, tenant, workspace, frozenset({"b", "a"}), message, ("state", "w", "value"))
    assert hints.decode(small, NODE) is None
    assert hints.decode(small, "reader") == hints.EventHint(NODE, tenant, workspace, frozenset({"a", "b"}), message, None)

    large = {**message, "value": {"blob": "x" * hints.MAX_NOTIFY_BYTES}}
    payload = hints.encode_event(NODE, tenant, workspace, frozenset(), large, ("state", "w", "value"))
    assert len(payload.encode()) <= hints.MAX_NOTIFY_BYTES
    hint = hints.decode(payload, "other")
    assert isinstance(hint, hints.EventHint)
    assert hint.message == {"type": "state.changed", "version": 3}
    assert hint.ref == ("state", "w", "value")


def test_revocations_round_trip() -> None:
    tenant, jti = uuid.uuid4(), uuid.uuid4()
    for revocation in (
        Revocation(tenant, "writer", jti, None, 1_800_000_000.0),
        Revocation(tenant, None, jti),
        Revocation(tenant, "writer", None, 1_700_000_001.0),
    ):
        payload = hints.encode_revoked(NODE, revocation)
        assert hints.decode(payload, NODE) is None
        assert hints.decode(payload, "reader") == hints.RevokedHint(NODE, revocation)


def test_malformed_or_unknown_payloads_are_bad_hints() -> None:
    for payload in (
        "not json", '{"k":"ops","n":"x"}', '{"k":"zz","n":"x"}', '{"k":"ev","n":"x","tn":"nope"}',
        '{"k":"rev","n":"x","tn":"nope"}', f'{{"k":"rev","n":"x","tn":"{uuid.uuid4()}","j":"nope"}}',
    ):  # fmt: skip
        try:
            hints.decode(payload, NODE)
        except hints.BadHint:
            continue
        raise AssertionError(f"decoded {payload!r}")
