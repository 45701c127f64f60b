"""Presence shared by every node through Redis (docs/protocol.md#57): TTL entries, a pub/sub
relay of flushed windows, and (server/cluster/presence_sweep.py) a sweep of vanished nodes' sessions.

`RedisPresence` is `MemoryPresence` (server/cluster/presence.py: this node's sessions and their local
delivery) plus Redis. Redis failing degrades presence only: calls are bounded, counted and never
raise into a session; when Redis is back the node writes its live sessions again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import structlog
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
)

from server.cluster.presence import Background, Batch, Entry, Listing, MemoryPresence
from server.cluster.presence_sweep import SWEEP_LUA, Sweep
from server.cluster.redis_calls import REDIS_ERRORS, close_quietly, keep_cancellation
from server.core.metrics import Metrics
from server.wire import protocol as p

log = structlog.get_logger("tandem.presence")
RECONNECT_MAX_S = 2.0  # backoff cap of the relay's reconnect (tenacity, with jitter)


class RedisPresence(Sweep, MemoryPresence):
    """Presence shared by every node through Redis. Keys (all under `prefix`):

    - `{tenant}:{ws}:members`: hash, conn_id -> the member object (JSON);
    - `{tenant}:{ws}:alive:{conn_id}`: the owning node id, expiring after `ttl_s` unless the
      heartbeat (every ttl/3) refreshes it: a listing skips members without one;
    - `index`: set of `{tenant}:{ws}` that may hold entries (what the sweep walks);
    - `sweep`: a lock, so one node per interval sweeps;
    - channel `events`: one message per flushed window of a workspace, `{"n": node_id, "t":
      tenant, "w": ws, "b": [presence.batch frames], "e": [event frames]}`; a node drops its own.

    A window's writes and its message go in one transaction at the flush, so a member is in
    Redis before any node announces it; a listing takes this node's own members from memory.

    While Redis is unreachable, calls skip it (counted) and work on this node's sessions only.
    When the relay subscribes again, the node writes all its live sessions back, announces them,
    and tells its own sessions that their presence view may be stale (`presence.stale`).
    """

    configured = True

    def __init__(
        self, url: str, node_id: str, metrics: Metrics, *, ttl_s: float = 15.0, sweep_interval_s: float | None = None,
        timeout_s: float = 1.0, max_list_items: int = 1000, prefix: str = "tandem:presence",
        batch_window_s: float = 0.05,
    ) -> None:
        super().__init__(node_id, metrics, max_list_items, batch_window_s)
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.heartbeat_s = ttl_s / 3
        self.sweep_s = sweep_interval_s if sweep_interval_s is not None else ttl_s / 3
        self.timeout_s = timeout_s
        self.prefix = prefix
        self.channel = f"{prefix}:events"
        self.index_key = f"{prefix}:index"
        common: dict[str, Any] = dict(socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True)
        # Commands retry once, quickly; the relay's connection never retries on its own, so a
        # lost subscription surfaces and is redone (with the re-registration) by `_listen`.
        self.redis = Redis.from_url(url, retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), 1), **common)
        self._relay_redis = Redis.from_url(url, retry=Retry(NoBackoff(), 0), **common)
        self._sweep_script = self.redis.register_script(SWEEP_LUA)
        self.subscribed = False  # the relay listens: other nodes' events reach this node
        self.healthy = True  # the last call to Redis worked (a failure waits for a heartbeat)
        self.dirty: set[tuple[str, uuid.UUID]] = set()  # entries whose last write failed
        self.writing: set[tuple[str, uuid.UUID]] = set()  # entries a flush is writing right now
        self.joining: set[tuple[str, uuid.UUID]] = set()  # those of them it writes with their join
        self.subscriptions = 0

    # --- keys and writes ----------------------------------------------------------------------

    def _ws_key(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID) -> str:
        return f"{self.prefix}:{tenant_id}:{workspace_id}"

    def _envelope(self, batch: Batch) -> str:
        body = {"n": self.node_id, "t": str(batch.tenant_id), "w": str(batch.workspace_id), "b": batch.frames,
                "e": [frame for _, frame in batch.events]}  # fmt: skip
        return json.dumps(body, separators=(",", ":"))

    def _write(self, pipe: Any, batch: Batch) -> None:
        ws = self._ws_key(batch.tenant_id, batch.workspace_id)
        present = {c: m.model_dump_json() for c, m in batch.latest.items() if isinstance(m, p.PresenceMember)}
        gone = [c for c, m in batch.latest.items() if not isinstance(m, p.PresenceMember)]
        if present:
            pipe.hset(f"{ws}:members", mapping=present)
            for conn_id in present:
                pipe.set(f"{ws}:alive:{conn_id}", self.node_id, px=self.ttl_ms)
            pipe.sadd(self.index_key, f"{batch.tenant_id}:{batch.workspace_id}")
        if gone:
            pipe.hdel(f"{ws}:members", *gone)
            pipe.delete(*(f"{ws}:alive:{c}" for c in gone))
        pipe.publish(self.channel, self._envelope(batch))

    @property
    def connected(self) -> bool:
        """Calls go to Redis only while this holds; otherwise they are skipped (and counted), so a
        Redis that hangs costs one `timeout_s` per heartbeat period, not one per call."""
        return self.subscribed and self.healthy

    def _set_state(self, *, subscribed: bool | None = None, healthy: bool | None = None) -> None:
        self.subscribed = self.subscribed if subscribed is None else subscribed
        self.healthy = self.healthy if healthy is None else healthy
        self.metrics.redis_up.set(1 if self.connected else 0)

    def _failed(self, op: str, exc: BaseException | None) -> None:
        self.metrics.presence_errors.labels(op).inc()
        if exc is not None:
            log.warning("presence.redis_failed", op=op, error=f"{type(exc).__name__}: {exc}")
            self._set_state(healthy=False)

    async def _relay(self, op: str, batches: list[Batch]) -> None:
        """Write and publish flushed windows in one transaction, bounded by `timeout_s`; never raises."""
        keys = [(c, b.workspace_id) for b in batches for c in b.latest]
        self.dirty.update((c, b.workspace_id) for b in batches for c, m in b.latest.items() if isinstance(m, p.PresenceMember))
        if not self.connected:
            self._failed(op, None)  # skipped: the re-registration after reconnecting covers it
            return
        # Marked for the heartbeat; a concurrent flush of the same entry keeps its own marks.
        writing = set(keys) - self.writing
        joining = {(c, b.workspace_id) for b in batches for c in b.joined} - self.joining
        self.writing.update(writing)
        self.joining.update(joining)
        try:
            with keep_cancellation():
                async with asyncio.timeout(self.timeout_s):
                    async with self.redis.pipeline(transaction=True) as pipe:
                        for batch in batches:
                            self._write(pipe, batch)
                        await pipe.execute()
        except REDIS_ERRORS as exc:
            self._failed(op, exc)  # the entries stay dirty: the next heartbeat writes them again
            return
        finally:
            self.writing.difference_update(writing)
            self.joining.difference_update(joining)
        self.dirty.difference_update(keys)
        self.metrics.presence_events.labels("published").inc(len(batches))

    async def _rewrite(self, entries: list[Entry]) -> None:
        """Write `entries` again and announce them (they were lost or a write of theirs failed).
        Entries that left meanwhile are skipped: they were removed locally before Redis."""
        self.dirty.intersection_update(self.local.entries)  # entries that left need nothing
        live = [e for e in entries if self.local.entries.get((e.subscriber.conn_id, e.workspace_id)) is e]
        if not live:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch in self.local.snapshot(live):
                self._write(pipe, batch)
            await pipe.execute()
        self.dirty.difference_update((e.subscriber.conn_id, e.workspace_id) for e in live)

    # --- reads ------------------------------------------------------------------------------

    async def list_members(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID) -> Listing:
        """Live members, oldest first: other nodes' from Redis, this node's from memory (so a change
        not flushed yet is listed already); only this node's (`partial`) when Redis fails."""
        if self.connected:
            try:
                with keep_cancellation():
                    async with asyncio.timeout(self.timeout_s):
                        return await self._scan(tenant_id, workspace_id)
            except REDIS_ERRORS as exc:
                self._failed("list", exc)
        else:
            self._failed("list", None)
        return self.local.listing(tenant_id, workspace_id, self.max_list_items, partial=True)

    async def _scan(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID) -> Listing:
        ws = self._ws_key(tenant_id, workspace_id)
        found: dict[str, p.PresenceMember] = {}
        cursor = 0
        while True:  # HSCAN ends when the cursor returns to 0; stops early past the limit
            cursor, batch = await self.redis.hscan(f"{ws}:members", cursor, count=200)
            conns = list(batch)
            alive = await self.redis.mget([f"{ws}:alive:{c}" for c in conns]) if conns else []
            for conn_id, node in zip(conns, alive):
                if node is None:
                    continue  # expired: the sweep removes it
                try:
                    member = p.PresenceMember.model_validate_json(batch[conn_id])
                except ValidationError:
                    log.warning("presence.bad_entry", tenant_id=str(tenant_id), workspace_id=str(workspace_id))
                    continue
                if member.node_id != self.node_id:
                    found[conn_id] = member
            if cursor == 0 or len(found) > self.max_list_items:
                break
        found.update((str(m.conn_id), m) for m in self.local.members(tenant_id, workspace_id))
        members = sorted(found.values(), key=lambda m: (m.since, str(m.conn_id)))
        return Listing(members[: self.max_list_items], len(members) > self.max_list_items)

    async def health(self) -> dict[str, bool | None]:
        up = False
        if self.connected:
            try:
                with keep_cancellation():
                    async with asyncio.timeout(self.timeout_s):
                        up = bool(await self.redis.ping())
            except REDIS_ERRORS:
                up = False
        self.metrics.redis_up.set(1 if up else 0)
        return {"configured": True, "up": up}

    # --- background: relay, heartbeat, sweep ----------------------------------------------------

    def background(self) -> Background:
        return [
            *super().background(), ("presence.relay", self._listen), ("presence.heartbeat", self._heartbeat),
            ("presence.sweep", self._sweep),
        ]  # fmt: skip

    async def _subscribe(self) -> PubSub:
        async for attempt in AsyncRetrying(
            wait=wait_exponential(multiplier=0.05, max=RECONNECT_MAX_S) + wait_random(0, 0.1),
            retry=retry_if_exception_type(REDIS_ERRORS),
        ):
            with attempt:
                pubsub = self._relay_redis.pubsub(ignore_subscribe_messages=True)
                try:
                    with keep_cancellation():
                        async with asyncio.timeout(self.timeout_s):
                            await pubsub.subscribe(self.channel)
                except BaseException:
                    await close_quietly(pubsub, self.timeout_s)
                    raise
                return pubsub
        raise AssertionError("unreachable")  # AsyncRetrying retries forever

    async def _listen(self) -> None:
        """Relay other nodes' events to this node's sessions, until cancelled; on every (re)subscribe,
        write this node's sessions back and mark its sessions' presence views stale."""
        while True:
            pubsub = await self._subscribe()
            try:
                self._set_state(subscribed=True, healthy=True)
                self.subscriptions += 1
                with keep_cancellation():
                    async with asyncio.timeout(self.timeout_s * 10):
                        await self._rewrite(list(self.local.entries.values()))
                self._stale()
                log.info("presence.subscribed", subscriptions=self.subscriptions, entries=len(self.local.entries))
                while True:
                    with keep_cancellation():
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_message(message["data"])
            except REDIS_ERRORS as exc:
                self._failed("relay", exc)
            finally:
                self._set_state(subscribed=False)
                await close_quietly(pubsub, self.timeout_s)

    def _on_message(self, data: str) -> None:
        try:
            envelope = json.loads(data)
            if envelope["n"] == self.node_id:
                return
            tenant_id, workspace_id = uuid.UUID(envelope["t"]), uuid.UUID(envelope["w"])
            if "f" in envelope:  # one event, from a node that does not batch: everyone gets it
                frames = events = [envelope["f"]]
            else:
                frames, events = envelope["b"], envelope["e"]
            if not all(isinstance(f, str) for f in (*frames, *events)):
                raise TypeError("frame")
        except (ValueError, KeyError, TypeError):
            log.warning("presence.bad_payload", payload=str(data)[:200])
            return
        # Another node's events are never about this node's sessions: no one is left out.
        if self.local.deliver_batch(tenant_id, workspace_id, frames, [("", f) for f in events]):
            self.metrics.presence_events.labels("relayed").inc()

    def _stale(self) -> None:
        for tenant_id, workspace_id in list(self.local.by_workspace):
            self.local.deliver(tenant_id, workspace_id, p.encode(p.PresenceStale(workspace_id=workspace_id)))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)  # the period, not a wait for a condition
            if self.subscribed:  # also when a call failed: a heartbeat that works ends that
                try:
                    with keep_cancellation():
                        async with asyncio.timeout(self.timeout_s * 10):
                            await self.heartbeat_once()
                except REDIS_ERRORS as exc:
                    self._failed("heartbeat", exc)

    def _unannounced(self) -> set[tuple[str, uuid.UUID]]:
        """Entries whose join is in a window not flushed yet or being written: Redis never had
        them, and that flush writes and announces them."""
        pending = {(c, ws) for (_, ws), w in self.local.windows.items() for c in w.joined}
        return pending | self.joining

    async def heartbeat_once(self) -> None:
        """Refresh every local entry's alive key; write again those Redis lost (it restarted, or
        the sweep took them while this node stalled) and those whose last write failed. Not those
        whose join a flush is about to write or writing (before, during or after this call's round
        trip): Redis lacks them for that reason; nor dirty ones a flush is writing: they would be
        announced twice."""
        entries = list(self.local.entries.values())
        unannounced = self._unannounced()
        if not entries:
            await self.redis.ping()
            self._set_state(healthy=True)
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for e in entries:
                ws = self._ws_key(e.tenant_id, e.workspace_id)
                pipe.set(f"{ws}:alive:{e.subscriber.conn_id}", self.node_id, px=self.ttl_ms, xx=True)
            # Also undoes a sweep's SREM that raced a join (the index only guides the sweep).
            pipe.sadd(self.index_key, *{f"{e.tenant_id}:{e.workspace_id}" for e in entries})
            refreshed = (await pipe.execute())[: len(entries)]
        self._set_state(healthy=True)
        unannounced |= self._unannounced()
        redo = [
            e for e, ok in zip(entries, refreshed)
            if (key := (e.subscriber.conn_id, e.workspace_id)) not in unannounced
            and (not ok or (key in self.dirty and key not in self.writing))
        ]  # fmt: skip
        await self._rewrite(redo)

    async def close(self) -> None:
        """Remove what is left of this node's entries (best effort), then close the clients."""
        for conn_id in list(self.local.by_conn):
            self.local.disconnect(conn_id)
        await self.flush()
        self._set_state(subscribed=False)
        for client in (self.redis, self._relay_redis):
            with contextlib.suppress(*REDIS_ERRORS):
                async with asyncio.timeout(self.timeout_s):
                    await client.aclose()
