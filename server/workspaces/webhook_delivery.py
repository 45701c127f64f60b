"""The node's webhook delivery loop: claims due deliveries, posts them signed, records the outcome.

Each round asks which tenants have a delivery due (the one cross-tenant step, ids only), then per
tenant claims at most `webhook_batch_size` of them in a short transaction of that tenant: for
each enabled endpoint whose first undelivered event is due, a run of its next events (at most
`webhook_endpoint_run`), leased for `webhook_lease_s` under `FOR UPDATE SKIP LOCKED` (so two
nodes never take the same attempt). It posts each run in event order (different endpoints at
once), stopping at a failure or when the lease could end before the next post's timeout, and
records the outcomes in a second transaction, only while the lease is still the claim's; what
it did not send is released. Two commits per round, however many deliveries it holds.

At least once: a node killed while posting leaves its leases to expire, and the next claim, on
any node, sends those events again. Per endpoint, in event order: an event is not claimed while
an earlier one to that endpoint is undelivered (`pending` or `failed`). A failed attempt is
retried after `webhook_backoff_base_s * 2^(attempt-1)` (at most `webhook_backoff_max_s`), until
the event is `webhook_max_age_s` old (then `dead`); `webhook_max_failures` failed attempts in a
row disable the endpoint. Every `webhook_sweep_interval_s` the loop also deletes the events past
`webhook_retention_s` that no endpoint waits for, with their deliveries, at most
`webhook_batch_size` at a time (migration 0030's `sweep_webhook_outbox`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import structlog
from standardwebhooks.webhooks import Webhook

from server.core.metrics import Metrics
from server.core.settings import Settings
from server.db import store
from server.db.store import Q

log = structlog.get_logger("tandem.webhooks")

EXPECTED = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
MAX_ERROR_CHARS = 500  # of a failure's text kept in the delivery log
SWEEP_BATCHES = 10  # retention deletes per sweep, so that delivery waits for no long sweep


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def body(event_id: int, kind: str, payload: Any, happened_at: datetime) -> str:
    """The JSON posted: the Standard Webhooks envelope (`type`, `timestamp`, `data`)."""
    envelope = {
        "id": str(event_id),
        "type": kind,
        "timestamp": happened_at.astimezone(UTC).isoformat(),
        "data": payload,
    }
    return json.dumps(envelope, separators=(",", ":"))


def signed_headers(
    secret: str, event_id: int, data: str, now: datetime
) -> dict[str, str]:
    """`webhook-id` (the event id: receivers de-duplicate by it), `webhook-timestamp` and
    `webhook-signature`, signed by the Standard Webhooks library."""
    signature = Webhook(secret).sign(str(event_id), now, data)
    return {
        "content-type": "application/json",
        "webhook-id": str(event_id),
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }


def retry_delay_s(attempt: int, base_s: float, max_s: float) -> float:
    """The wait after failed attempt number `attempt` (1 for the first)."""
    return min(max_s, base_s * 2 ** min(attempt - 1, 40))


class WebhookDelivery:
    """One node's delivery loop (`run`, under the node's supervisor)."""

    def __init__(
        self, pool: asyncpg.Pool, settings: Settings, metrics: Metrics
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.metrics = metrics

    async def run(self) -> None:
        """Rounds until cancelled: at once after a round that sent something, else after
        `webhook_poll_interval_s`."""
        timeout = httpx.Timeout(self.settings.webhook_timeout_s)
        swept_at = float("-inf")
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            while True:
                try:
                    if time.monotonic() - swept_at >= self.settings.webhook_sweep_interval_s:
                        swept_at = time.monotonic()
                        await self.sweep()
                    sent = await self.deliver_once(client)
                except EXPECTED as exc:
                    log.warning(
                        "webhooks.round_failed", error=f"{type(exc).__name__}: {exc}"
                    )
                    sent = 0
                if not sent:
                    await asyncio.sleep(self.settings.webhook_poll_interval_s)

    async def sweep(self) -> int:
        """Delete what is past retention, a batch at a time; how many events went."""
        before = datetime.now(UTC) - timedelta(seconds=self.settings.webhook_retention_s)
        gone = 0
        async with self.pool.acquire() as conn:
            for _ in range(SWEEP_BATCHES):
                count = await conn.fetchval(Q["webhook_sweep"], before, self.settings.webhook_batch_size)
                gone += count
                if count < self.settings.webhook_batch_size:
                    break
        if gone:
            log.info("webhooks.swept", events=gone)
        return gone

    async def deliver_once(self, client: httpx.AsyncClient) -> int:
        """One round: returns how many attempts it made."""
        budget = self.settings.webhook_batch_size
        async with self.pool.acquire() as conn:
            tenants = [
                row["tenant_id"]
                for row in await conn.fetch(Q["webhook_due_tenants"], budget)
            ]
        made = 0
        for tenant_id in tenants:
            if made >= budget:
                break
            made += await self._tenant_round(client, tenant_id, budget - made)
        return made

    async def _tenant_round(
        self, client: httpx.AsyncClient, tenant_id: uuid.UUID, budget: int
    ) -> int:
        s = self.settings
        token = uuid.uuid4()
        # Measured from before the claim, so this node stops posting before the lease can end.
        lease_ends = time.monotonic() + s.webhook_lease_s
        async with store.tenant_transaction(self.pool, tenant_id) as conn:
            claimed = await conn.fetch(
                Q["webhook_claim"],
                budget,
                s.webhook_lease_s,
                token,
                s.webhook_endpoint_run,
            )
        if not claimed:
            return 0
        runs: dict[uuid.UUID, list[asyncpg.Record]] = defaultdict(list)
        for row in sorted(claimed, key=lambda r: r["event_id"]):
            runs[row["endpoint_id"]].append(row)
        sent = await asyncio.gather(
            *(self._send_run(client, run, lease_ends) for run in runs.values())
        )
        now = datetime.now(UTC)
        done = [pair for pairs in sent for pair in pairs]
        unsent = {row["id"] for row in claimed} - {row["id"] for row, _ in done}
        async with store.tenant_transaction(self.pool, tenant_id) as conn:
            for row, outcome in done:
                await self._record(conn, row, token, outcome, now)
            if unsent:
                await conn.execute(Q["webhook_release"], list(unsent), token)
        return len(done)

    async def _send_run(
        self, client: httpx.AsyncClient, run: list[asyncpg.Record], lease_ends: float
    ) -> list[tuple[asyncpg.Record, Outcome]]:
        """One endpoint's events in order, until one fails or the lease could end mid-post."""
        done = []
        for row in run:
            if time.monotonic() + self.settings.webhook_timeout_s >= lease_ends:
                break
            outcome = await self._post(client, row)
            done.append((row, outcome))
            if not outcome.ok:
                break
        return done

    async def _post(self, client: httpx.AsyncClient, row: asyncpg.Record) -> Outcome:
        data = body(row["event_id"], row["type"], row["payload"], row["created_at"])
        headers = signed_headers(
            row["secret"], row["event_id"], data, datetime.now(UTC)
        )
        try:
            response = await client.post(
                row["url"], content=data.encode(), headers=headers
            )
        except (
            httpx.HTTPError,
            httpx.InvalidURL,
            OSError,
            ValueError,
        ) as exc:  # the receiver's fault: a failed attempt
            return Outcome(None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
        if 200 <= response.status_code < 300:
            return Outcome(response.status_code, None)
        return Outcome(response.status_code, f"HTTP {response.status_code}")

    async def _record(
        self,
        conn: asyncpg.Connection,
        row: asyncpg.Record,
        token: uuid.UUID,
        outcome: Outcome,
        now: datetime,
    ) -> None:
        s = self.settings
        if outcome.ok:
            await conn.execute(
                Q["webhook_delivered"], row["id"], token, outcome.status_code
            )
            self.metrics.webhook_attempts.labels("delivered").inc()
            log.debug(
                "webhooks.delivered",
                delivery=row["id"],
                event_id=row["event_id"],
                attempt=row["attempt"] + 1,
            )
            return
        attempt = row["attempt"] + 1
        next_at = now + timedelta(
            seconds=retry_delay_s(
                attempt, s.webhook_backoff_base_s, s.webhook_backoff_max_s
            )
        )
        dead = (next_at - row["created_at"]).total_seconds() > s.webhook_max_age_s
        endpoint = await conn.fetchrow(
            Q["webhook_failed"], row["id"], token, outcome.status_code, outcome.error, next_at, dead,
            s.webhook_max_failures,
        )  # fmt: skip
        self.metrics.webhook_attempts.labels("dead" if dead else "failed").inc()
        log.info(
            "webhooks.attempt_failed", delivery=row["id"], event_id=row["event_id"], attempt=attempt,
            status_code=outcome.status_code, error=outcome.error, dead=dead,
        )  # fmt: skip
        if endpoint is not None and not endpoint["enabled"]:
            self.metrics.webhook_endpoints_disabled.inc()
            log.warning(
                "webhooks.endpoint_disabled",
                endpoint=str(endpoint["id"]),
                failures=s.webhook_max_failures,
            )
