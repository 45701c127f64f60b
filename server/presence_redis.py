"""Presence shared by every node through Redis (docs/protocol.md#57): TTL entries, a pub/sub
relay, a sweep of vanished nodes' sessions.

`RedisPresence` is `MemoryPresence` (server/presence.py: this node's sessions and their local
delivery) plus Redis. Redis failing degrades presence only: calls are bounded, counted and never
raise into a session; when Redis is back the node writes its live sessions again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import structlog
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential, wait_random

from server import protocol as p
from server.metrics import Metrics
from server.presence import Background, Change, Entry, Listing, MemoryPresence

log = structlog.get_logger("tandem.presence")

# What a failing Redis raises: connection refused or reset, timeouts, protocol errors.
REDIS_ERRORS = (RedisError, OSError, TimeoutError)
RECONNECT_MAX_S = 2.0  # backoff cap of the relay's reconnect (tenacity, with jitter)


@contextlib.contextmanager
def keep_cancellation() -> Iterator[None]:
    """Re-raise a cancellation requested during the block that did not end it.

    On Python 3.11, `asyncio.wait_for` (which redis-py uses to send commands) can return its
    result and drop a cancellation that arrived as the call completed (CPython gh-86296, fixed in
    3.12). A periodic loop would then run forever and a shutdown would hang. Exceptions leaving
    the block pass unchanged; only a normal exit is checked.
    """
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    yield
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError

# Removes, atomically per workspace, the entries whose alive key has expired; returns them.
# KEYS[1] is the members hash, KEYS[i + 1] the alive key of ARGV[i].
_SWEEP_LUA = """
local removed = {}
for i, conn in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    local member = redis.call('HGET', KEYS[1], conn)
    if member then
      redis.call('HDEL', KEYS[1], conn)
      table.insert(removed, member)
    end
  end
end
return removed
"""


class RedisPresence(MemoryPresence):
    """Presence shared by every node through Redis. Keys (all under `prefix`):

    - `{tenant}:{ws}:members`: hash, conn_id -> the member object (JSON);
    - `{tenant}:{ws}:alive:{conn_id}`: the owning node id, expiring after `ttl_s` unless the
      heartbeat (every ttl/3) refreshes it: a listing skips members without one;
    - `index`: set of `{tenant}:{ws}` that may hold entries (what the sweep walks);
    - `sweep`: a lock, so one node per interval sweeps;
    - channel `events`: `{"n": node_id, "t": tenant, "w": ws, "f": frame}`; a node drops its own.

    While Redis is unreachable, calls skip it (counted) and work on this node's sessions only.
    When the relay subscribes again, the node writes all its live sessions back, announces them,
    and tells its own sessions that their presence view may be stale (`presence.stale`).
    """

    configured = True

    def __init__(
        self, url: str, node_id: str, metrics: Metrics, *, ttl_s: float = 15.0, sweep_interval_s: float | None = None,
        timeout_s: float = 1.0, max_list_items: int = 1000, prefix: str = "tandem:presence",
    ) -> None:
        super().__init__(node_id, metrics, max_list_items)
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
        self._sweep_script = self.redis.register_script(_SWEEP_LUA)
        self.subscribed = False  # the relay listens: other nodes' events reach this node
        self.healthy = True  # the last call to Redis worked (a failure waits for a heartbeat)
        self.dirty: set[tuple[str, uuid.UUID]] = set()  # entries whose last write failed
        self.subscriptions = 0

    # --- keys and writes ----------------------------------------------------------------------

    def _ws_key(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID) -> str:
        return f"{self.prefix}:{tenant_id}:{workspace_id}"

    def _envelope(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID, frame: str) -> str:
        return json.dumps({"n": self.node_id, "t": str(tenant_id), "w": str(workspace_id), "f": frame}, separators=(",", ":"))

    def _write(self, pipe: Any, change: Change, frames: list[str]) -> None:
        ws = self._ws_key(change.tenant_id, change.workspace_id)
        if change.member is None:
            pipe.hdel(f"{ws}:members", change.conn_id)
            pipe.delete(f"{ws}:alive:{change.conn_id}")
        else:
            pipe.hset(f"{ws}:members", change.conn_id, change.member.model_dump_json())
            pipe.set(f"{ws}:alive:{change.conn_id}", self.node_id, px=self.ttl_ms)
            pipe.sadd(self.index_key, f"{change.tenant_id}:{change.workspace_id}")
        for frame in frames:
            pipe.publish(self.channel, self._envelope(change.tenant_id, change.workspace_id, frame))

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

    async def _relay(self, op: str, changes: list[Change]) -> None:
        """Write and publish `changes` in one transaction, bounded by `timeout_s`; never raises."""
        self.dirty.update((c.conn_id, c.workspace_id) for c in changes if c.member is not None)
        if not self.connected:
            self._failed(op, None)  # skipped: the re-registration after reconnecting covers it
            return
        try:
            with keep_cancellation():
                async with asyncio.timeout(self.timeout_s):
                    async with self.redis.pipeline(transaction=True) as pipe:
                        for change in changes:
                            self._write(pipe, change, [change.frame])
                        await pipe.execute()
        except REDIS_ERRORS as exc:
            self._failed(op, exc)  # the entries stay dirty: the next heartbeat writes them again
            return
        self.dirty.difference_update((c.conn_id, c.workspace_id) for c in changes)
        self.metrics.presence_events.labels("published").inc(len(changes))

    async def _rewrite(self, entries: list[Entry]) -> None:
        """Write `entries` again and announce them (they were lost or a write of theirs failed).
        Entries that left meanwhile are skipped: they were removed locally before Redis."""
        self.dirty.intersection_update(self.local.entries)  # entries that left need nothing
        live = [e for e in entries if self.local.entries.get((e.subscriber.conn_id, e.workspace_id)) is e]
        if not live:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for e in live:
                change = Change(e.tenant_id, e.workspace_id, e.subscriber.conn_id, e.member, "")
                self._write(pipe, change, self.local.announce(e))
            await pipe.execute()
        self.dirty.difference_update((e.subscriber.conn_id, e.workspace_id) for e in live)

    # --- reads ------------------------------------------------------------------------------

    async def list_members(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID) -> Listing:
        """Live members from Redis, oldest first; this node's own (`partial`) when Redis fails."""
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
                    found[conn_id] = p.PresenceMember.model_validate_json(batch[conn_id])
                except ValidationError:
                    log.warning("presence.bad_entry", tenant_id=str(tenant_id), workspace_id=str(workspace_id))
            if cursor == 0 or len(found) > self.max_list_items:
                break
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
        return [("presence.relay", self._listen), ("presence.heartbeat", self._heartbeat), ("presence.sweep", self._sweep)]

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
                    await _close_quietly(pubsub, self.timeout_s)
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
                await _close_quietly(pubsub, self.timeout_s)

    def _on_message(self, data: str) -> None:
        try:
            envelope = json.loads(data)
            if envelope["n"] == self.node_id:
                return
            tenant_id, workspace_id = uuid.UUID(envelope["t"]), uuid.UUID(envelope["w"])
            frame = envelope["f"]
            if not isinstance(frame, str):
                raise TypeError("frame")
        except (ValueError, KeyError, TypeError):
            log.warning("presence.bad_payload", payload=str(data)[:200])
            return
        if self.local.deliver(tenant_id, workspace_id, frame):
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

    async def heartbeat_once(self) -> None:
        """Refresh every local entry's alive key; write again those Redis lost (it restarted, or
        the sweep took them while this node stalled) and those whose last write failed."""
        entries = list(self.local.entries.values())
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
        redo = [e for e, ok in zip(entries, refreshed) if not ok or (e.subscriber.conn_id, e.workspace_id) in self.dirty]
        await self._rewrite(redo)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_s)  # the period, not a wait for a condition
            if self.connected:
                try:
                    with keep_cancellation():
                        await self.sweep_once()
                except REDIS_ERRORS as exc:
                    self._failed("sweep", exc)

    async def sweep_once(self, force: bool = False) -> int:
        """Remove entries whose alive key expired and announce them (`presence.left`, reason
        `expired`). One node sweeps per interval (a lock); each entry is removed and announced
        once, by whichever sweep deletes it. Each Redis call is bounded by the socket timeout."""
        lock = await self.redis.set(f"{self.prefix}:sweep", self.node_id, nx=True, px=max(1, int(self.sweep_s * 1000)))
        if not lock and not force:
            return 0
        removed = 0
        async for item in self.redis.sscan_iter(self.index_key, count=100):
            tenant_s, _, ws_s = item.partition(":")
            try:
                tenant_id, workspace_id = uuid.UUID(tenant_s), uuid.UUID(ws_s)
            except ValueError:
                await self.redis.srem(self.index_key, item)
                continue
            ws = self._ws_key(tenant_id, workspace_id)
            conns = await self.redis.hkeys(f"{ws}:members")
            if not conns:  # a join puts it back; a live entry's heartbeat re-adds it too
                await self.redis.srem(self.index_key, item)
                continue
            gone = await self._sweep_script(keys=[f"{ws}:members", *(f"{ws}:alive:{c}" for c in conns)], args=conns)
            for raw in gone:
                removed += await self._expired(tenant_id, workspace_id, raw)
        return removed

    async def _expired(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID, raw: str) -> int:
        try:
            m = p.PresenceMember.model_validate_json(raw)
        except ValidationError:
            return 0
        frame = p.encode(p.PresenceLeft(workspace_id=workspace_id, agent_id=m.agent_id, conn_id=m.conn_id, reason="expired"))
        self.metrics.presence_expired.inc()
        log.info("presence.expired", tenant_id=str(tenant_id), workspace_id=str(workspace_id), conn_id=str(m.conn_id), node=m.node_id)
        self.local.deliver(tenant_id, workspace_id, frame)
        await self.redis.publish(self.channel, self._envelope(tenant_id, workspace_id, frame))
        return 1

    async def close(self) -> None:
        """Remove what is left of this node's entries (best effort), then close the clients."""
        if self.connected:
            changes = [c for conn_id in list(self.local.by_conn) for c in self.local.disconnect(conn_id)]
            if changes:
                await self._relay("disconnect", changes)
        self._set_state(subscribed=False)
        for client in (self.redis, self._relay_redis):
            with contextlib.suppress(*REDIS_ERRORS):
                async with asyncio.timeout(self.timeout_s):
                    await client.aclose()


async def _close_quietly(pubsub: PubSub, timeout_s: float) -> None:
    with contextlib.suppress(*REDIS_ERRORS):
        async with asyncio.timeout(timeout_s):  # not wait_for: see keep_cancellation
            await pubsub.aclose()
