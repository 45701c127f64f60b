"""Fan-out across nodes: NOTIFY hints out of the writer's transaction, LISTEN on a dedicated
connection, and catch-up from the log.

The committer's batch call (`tandem_append_batch`, its hint built by `tandem_ops_hint`, migration
0022) issues `pg_notify` inside the transaction that appends the operations, so a hint is
delivered only if the commit happens, in commit order. The payload (server/cluster/hints.py owns its
format) names the document, its last seq, the sending node and its clock at commit, which
measures the lag; small operations ride along, so a follower that is up to date applies them
without reading the log, but nothing relies on it. A node ignores its own hints; for another
node's, the room reads what it lacks from `document_operations` (`seq > head_seq`) and delivers
it in order. NOTIFY is only a hint, the log is the truth: at start, after every reconnect of the
LISTEN connection (with backoff), and every `fanout_check_interval_s`, each open room compares
its head with the document's `head_seq` and catches up. Workspace events (locks, state, tasks,
members) share the channel (server/cluster/events.py), and so do token revocations (read
back in full at every (re)connect, before the rooms' check).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import asyncpg
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from server.cluster import hints
from server.cluster.events import Events
from server.core.metrics import Metrics
from server.core.revocations import Revocation
from server.db import store

log = structlog.get_logger("tandem.fanout")


class Followers(Protocol):
    """The documents this node holds open (its room registry), as the fan-out sees them."""

    pool: asyncpg.Pool

    def open_documents(self) -> Iterable[tuple[uuid.UUID, uuid.UUID]]:
        """`(tenant_id, doc_id)` of every open document."""
        ...

    def on_remote(self, doc_id: uuid.UUID, last_seq: int, rows: Sequence[store.LoggedOperation] = ()) -> None:
        """Another node committed document `doc_id` up to `last_seq` (`rows`: what the hint carried)."""
        ...


class RevocationFollower(Protocol):
    """The node's revocations (server/transport/node.py), as the fan-out feeds them."""

    def on_revoked(self, revocation: Revocation) -> None:
        """Another node (or `tandem token revoke`) committed `revocation`."""
        ...

    async def reload(self) -> None:
        """Read every revocation in force: hints sent while nobody listened are lost."""
        ...


class Fanout:
    """Owns the LISTEN connection and the periodic check. `run()` until cancelled."""

    def __init__(
        self, app_url: str, node_id: str, rooms: Followers, metrics: Metrics,
        check_interval_s: float = 5.0, probe_interval_s: float = 5.0,
    ) -> None:
        self.app_url = app_url
        self.node_id = node_id
        self.rooms = rooms
        self.metrics = metrics
        self.check_interval_s = check_interval_s
        self.probe_interval_s = probe_interval_s
        self.connected = False
        self.reconnects = 0
        self.events: Events | None = None  # workspace events (server/cluster/events.py), set by the app
        self.revocations: RevocationFollower | None = None  # token revocations, set by the app

    # --- hints -------------------------------------------------------------------------------

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            hint = hints.decode(payload, self.node_id)
            if isinstance(hint, hints.OpsHint):
                self.metrics.notifications.labels(hints.KIND_OPS).inc()
                if hint.at is not None:
                    self.metrics.fanout_lag.observe(max(0.0, time.time() - hint.at))
                first = hint.seq - len(hint.carried) + 1
                rows = [
                    store.LoggedOperation(first + i, op.agent_id, op.op_type, op.update)
                    for i, op in enumerate(hint.carried)
                ]  # fmt: skip
                self.rooms.on_remote(hint.doc_id, hint.seq, rows)
            elif isinstance(hint, hints.EventHint):
                self.metrics.notifications.labels(hints.KIND_EVENT).inc()
                if self.events is not None:
                    self.events.on_remote(hint)
            elif isinstance(hint, hints.RevokedHint):
                self.metrics.notifications.labels(hints.KIND_REVOKED).inc()
                if self.revocations is not None:
                    self.revocations.on_revoked(hint.revocation)
        except (ValueError, KeyError, TypeError):  # hints.BadHint among them
            log.warning("fanout.bad_payload", payload=payload[:200])

    # --- the LISTEN connection ------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            lost = asyncio.Event()
            conn = await self._connect()
            try:
                conn.add_termination_listener(lambda _c: lost.set())
                await conn.add_listener(hints.CHANNEL, self._on_notify)
                self.connected = True
                self.metrics.listen_up.set(1)
                log.info("fanout.listening", reconnects=self.reconnects)
                # Hints sent while nobody listened are lost: the log is read instead.
                if self.revocations is not None:
                    await self.revocations.reload()
                await self.check_all()
                await self._watch(conn, lost)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("fanout.listen_lost", error=f"{type(exc).__name__}: {exc}")
            finally:
                self.connected = False
                self.metrics.listen_up.set(0)
                if not conn.is_closed():
                    conn.terminate()
            self.reconnects += 1

    async def _connect(self) -> asyncpg.Connection:
        """A dedicated (never pooled: a pool's reset runs UNLISTEN *) connection, with backoff."""
        async for attempt in AsyncRetrying(
            wait=wait_exponential_jitter(multiplier=0.05, max=5.0),
            retry=retry_if_exception_type((OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)),
        ):
            with attempt:
                return await asyncpg.connect(
                    self.app_url, timeout=10, server_settings={"application_name": f"tandem {self.node_id} listen"}
                )
        raise AssertionError("unreachable")  # AsyncRetrying retries forever

    async def _watch(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Until the connection is lost: probe it, and run the periodic check."""
        since_check = 0.0
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), self.probe_interval_s)
                return
            except TimeoutError:
                pass
            await asyncio.wait_for(store.ping(conn), self.probe_interval_s)
            since_check += self.probe_interval_s
            if since_check >= self.check_interval_s:
                since_check = 0.0
                await self.check_all()

    # --- the periodic check ---------------------------------------------------------------------

    async def check_all(self) -> None:
        """Compare every open room's head with the log's; rooms behind catch up."""
        by_tenant: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
        for tenant_id, doc_id in self.rooms.open_documents():
            by_tenant[tenant_id].append(doc_id)
        for tenant_id, doc_ids in by_tenant.items():
            try:
                async with store.tenant_transaction(self.rooms.pool, tenant_id) as conn:
                    heads = await store.document_heads(conn, doc_ids)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("fanout.check_failed", tenant_id=str(tenant_id), error=str(exc))
                continue
            for doc_id, head in heads:
                self.rooms.on_remote(doc_id, head)
