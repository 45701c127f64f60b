"""Prometheus metrics: one `CollectorRegistry` per app, never the global one.

A registry per app keeps two apps in one process (tests) from sharing counters, and keeps
libraries that register on the global registry out of our output. `HttpMetrics` is a plain
ASGI middleware labelling requests by route template, so the label set stays bounded.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = CONTENT_TYPE_LATEST
UNMATCHED_ROUTE = "<unmatched>"


class Metrics:
    """Every metric the server exports; later modules add theirs here."""

    def __init__(self, redis_configured: bool = False) -> None:
        """`redis_configured`: REDIS_URL is set; only then is `tandem_redis_up` exported."""
        self.registry = CollectorRegistry(auto_describe=True)
        process_collector.ProcessCollector(registry=self.registry)
        platform_collector.PlatformCollector(registry=self.registry)
        gc_collector.GCCollector(registry=self.registry)

        self.node = Info("tandem_node", "This server node.", registry=self.registry)
        self.http_requests = Counter(
            "tandem_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "tandem_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["route"],
            registry=self.registry,
        )
        self.db_up = Gauge(
            "tandem_db_up", "1 when the last `SELECT 1` through the pool answered in time.", registry=self.registry
        )
        self.migrations_applied_at_start = Gauge(
            "tandem_migrations_applied_at_start",
            "Migrations this node applied when it started.",
            registry=self.registry,
        )
        self.maintenance_runs = Counter(
            "tandem_db_maintenance_runs",
            "Partition maintenance runs, by outcome.",
            ["outcome"],
            registry=self.registry,
        )

        # The node's long-running tasks (server/core/supervisor.py).
        self.task_up = Gauge(
            "tandem_task_up", "1 while the background task runs (0: waiting to restart, or stopped).", ["task"],
            registry=self.registry,
        )
        self.task_restarts = Counter(
            "tandem_task_restarts", "Background tasks restarted after an unexpected exception.", ["task"],
            registry=self.registry,
        )

        # Realtime sessions (server/transport/agent.py) and the durable path (server/documents/committer.py).
        self.sessions = Gauge("tandem_sessions", "Open WebSocket sessions.", registry=self.registry)
        self.auth_failures = Counter(
            "tandem_auth_failures", "Connections refused at authentication, by code.", ["code"], registry=self.registry
        )
        self.errors = Counter("tandem_protocol_errors", "Error frames sent, by code.", ["code"], registry=self.registry)
        self.invalid_updates = Counter(
            "tandem_invalid_updates", "CRDT updates refused as corrupt.", registry=self.registry
        )
        self.slow_consumers = Counter(
            "tandem_slow_consumers", "Sessions closed because their send queue was full.", registry=self.registry
        )
        self.updates_after_close = Counter(
            "tandem_updates_after_close",
            "Updates settled after their connection stopped reading, by outcome (committed, unchanged, an error code).",
            ["outcome"],
            registry=self.registry,
        )
        self.commit_batches = Counter(
            "tandem_commit_batches", "Transactions the group committer ran.", registry=self.registry
        )
        self.committed_operations = Counter(
            "tandem_committed_operations", "Document operations committed.", registry=self.registry
        )
        self.commit_seconds = Histogram(
            "tandem_commit_seconds",
            "One group-commit append as the node waits for it: the statement, its commit (WAL flush included) "
            "and the round trip to PostgreSQL.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0), registry=self.registry,
        )
        self.commit_wait_seconds = Histogram(
            "tandem_commit_wait_seconds",
            "How long each operation waited in its shard's queue before the append carrying it started: "
            "the append in flight ahead of it (a shard runs one at a time) and any batching wait.",
            buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0), registry=self.registry,
        )
        self.commit_unavailable = Counter(
            "tandem_commit_unavailable",
            "Operations refused with `unavailable`, by cause: lost (the connection failed under the batch), "
            "timeout (the append took over commit_timeout_s), waited (no database for commit_unavailable_after_s), "
            "stopped (still queued at shutdown).",
            ["cause"],
            registry=self.registry,
        )
        self.commit_reconnects = Counter(
            "tandem_commit_reconnects", "Committer connections taken again after the database failed.",
            registry=self.registry,
        )
        self.commit_shard_up = Gauge(
            "tandem_commit_shard_up", "1 while a committer shard can commit (it is not waiting for the database).",
            ["shard"], registry=self.registry,
        )
        self.commit_queued = Gauge(
            "tandem_commit_queued_operations", "Operations waiting in a committer shard.", ["shard"],
            registry=self.registry,
        )
        self.catch_up_reads = Counter(
            "tandem_catch_up_reads", "Reads of the log to fill a gap or follow another node.", registry=self.registry
        )
        self.notifications = Counter(
            "tandem_fanout_notifications", "Hints received from other nodes, by kind.", ["kind"], registry=self.registry
        )
        self.fanout_lag = Histogram(
            "tandem_fanout_lag_seconds", "From another node's commit to this node reading its hint.",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0), registry=self.registry,
        )
        self.listen_up = Gauge("tandem_listen_up", "1 while the LISTEN connection is up.", registry=self.registry)
        self.rooms = Gauge("tandem_rooms", "Documents loaded in memory on this node.", registry=self.registry)

        # Presence (server/cluster/presence.py): ephemeral, in Redis when REDIS_URL is set. Without
        # it there is no Redis to be down: `tandem_redis_up` is absent (kept unregistered, so the
        # code setting it need not ask) and `tandem_redis_configured` says why.
        self.redis_configured = Gauge(
            "tandem_redis_configured",
            "1 when REDIS_URL is set; 0: presence stays in process and tandem_redis_up is not exported.",
            registry=self.registry,
        )
        self.redis_configured.set(1 if redis_configured else 0)
        self.redis_up = Gauge(
            "tandem_redis_up",
            "1 while the presence relay is subscribed and Redis answers (exported only with REDIS_URL).",
            registry=self.registry if redis_configured else None,
        )
        self.presence_entries = Gauge(
            "tandem_presence_entries", "Workspace presence entries of this node's sessions.", registry=self.registry
        )
        self.presence_events = Counter(
            "tandem_presence_events",
            "Presence and awareness events: `published` to other nodes, `relayed` from them.",
            ["direction"],
            registry=self.registry,
        )
        self.presence_errors = Counter(
            "tandem_presence_errors",
            "Presence calls that failed or were skipped because Redis was unreachable, by operation.",
            ["op"],
            registry=self.registry,
        )
        self.presence_expired = Counter(
            "tandem_presence_expired", "Entries of vanished sessions removed by this node's sweep.", registry=self.registry
        )
        self.webhook_attempts = Counter(
            "tandem_webhook_attempts",
            "Webhook posts this node made, by outcome: `delivered`, `failed` (retried later), `dead` (given up).",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_endpoints_disabled = Counter(
            "tandem_webhook_endpoints_disabled", "Webhook endpoints this node disabled after their run of failures.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HttpMetrics:
    """Count and time HTTP requests. WebSocket and lifespan scopes pass through untouched."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client sees if the app raises before starting a response
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # The router stores the matched route in the scope; its template bounds the labels.
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            self.metrics.http_requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.http_duration.labels(route).observe(time.perf_counter() - started)
