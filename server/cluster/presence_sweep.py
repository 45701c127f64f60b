"""The sweep of Redis presence (docs/protocol.md#57): entries whose node stopped refreshing them
are removed and announced as gone (`expired`), by one node per interval.

`Sweep` is a mixin of `RedisPresence` (server/cluster/presence_redis.py), which owns the clients, the
keys and the relay it uses. Redis errors propagate to the caller (its loop counts them).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import structlog
from pydantic import ValidationError

from server.cluster.presence import Batch, Window
from server.cluster.redis_calls import REDIS_ERRORS, keep_cancellation
from server.wire import protocol as p

if TYPE_CHECKING:
    from server.cluster.presence_redis import RedisPresence

    _Base = RedisPresence
else:
    _Base = object

log = structlog.get_logger("tandem.presence")

# Removes, atomically per workspace, the entries whose alive key has expired; returns them.
# KEYS[1] is the members hash, KEYS[i + 1] the alive key of ARGV[i].
SWEEP_LUA = """
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


class Sweep(_Base):
    """The sweep loop and one sweep; needs the `RedisPresence` it is mixed into."""

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
            if gone:
                removed += await self._expired(tenant_id, workspace_id, gone)
        return removed

    async def _expired(self, tenant_id: uuid.UUID, workspace_id: uuid.UUID, gone: list[str]) -> int:
        """Announce a workspace's swept entries, here and on the other nodes, as one batch."""
        window = Window()
        for raw in gone:
            try:
                m = p.PresenceMember.model_validate_json(raw)
            except ValidationError:
                continue
            event = p.PresenceLeft(workspace_id=workspace_id, agent_id=m.agent_id, conn_id=m.conn_id, reason="expired")
            window.latest[str(m.conn_id)] = p.PresenceGone(conn_id=m.conn_id, agent_id=m.agent_id, reason="expired")
            window.events.append((str(m.conn_id), p.encode(event)))
            log.info("presence.expired", tenant_id=str(tenant_id), workspace_id=str(workspace_id), conn_id=str(m.conn_id), node=m.node_id)
        if not window.latest:
            return 0
        self.metrics.presence_expired.inc(len(window.latest))
        batch = Batch.of(tenant_id, workspace_id, window)
        self.local.deliver_batch(tenant_id, workspace_id, batch.frames, batch.events)
        await self.redis.publish(self.channel, self._envelope(batch))
        return len(window.latest)

