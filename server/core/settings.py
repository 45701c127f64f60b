"""Settings, read once from the environment and passed down.

`DATABASE_URL` and `REDIS_URL` keep their conventional names; everything else is `TANDEM_*`.
Every limit the server enforces lives here, so the whole configuration is one object.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]
# A data folder Tandem creates: nobody else may list or read it; others may only pass through,
# which the embedded PostgreSQL needs when it runs as its own OS user (started as root).
DATA_DIR_MODE = 0o711


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TANDEM_", extra="ignore")

    # Connection with the rights to run migrations and create the roles. Unset: embedded PostgreSQL.
    database_url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL"))
    # Unset: presence stays in process (single node).
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL"))

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path(".tandem")
    node_id: str | None = None
    log_level: str = "info"
    log_json: bool = True

    # The role the server connects as: owns nothing, is not superuser, RLS applies to it.
    app_role: str = "tandem_app"
    # Its password where the server authenticates by password (an external DATABASE_URL).
    app_password: str | None = None
    # Full URL for the application role; derived from DATABASE_URL when unset.
    app_database_url: str | None = None
    # The role that owns every table; migrations run as it.
    owner_role: str = "tandem_owner"

    migrations_dir: Path = REPO_ROOT / "migrations"
    db_pool_min: int = 1
    db_pool_max: int = 10
    # How often partition maintenance runs (it also runs at start).
    maintenance_interval_s: float = 24 * 3600.0
    shutdown_timeout_s: float = 10.0
    # Bound on the /healthz database probe (`SELECT 1` through the pool).
    health_timeout_s: float = 2.0

    # Wire protocol limits (docs/protocol.md#7-limits; per-session ones are announced in hello).
    max_frame_bytes: int = 1_048_576  # larger: frame_too_large, session stays open
    frame_hard_limit_bytes: int = 4_194_304  # larger: refused by the WebSocket layer (1009)
    # permessage-deflate when a client offers it. Off, as in the y-websocket and Hocuspocus
    # servers: a compressing client sends its messages one zlib round trip at a time.
    ws_compression: bool = False
    # With it, a message shorter than this is sent uncompressed (server/transport/websocket.py):
    # compressing every small update, once per receiving peer, doubled the server's CPU per update.
    ws_compression_min_bytes: int = Field(default=1024, ge=0)
    max_messages_per_s: float = 100.0
    max_message_burst: int = 200
    # What one connection's send queue may hold, in frames and in bytes (a text frame counts its
    # characters; one frame larger than the byte bound is still sent alone). Either full:
    # slow_consumer close, the queue dropped at once.
    send_queue_len: int = 1024
    max_send_queue_bytes: int = 16_777_216
    max_invalid_updates: int = 10
    max_open_docs: int = 100
    max_joined_workspaces: int = 20
    max_list_items: int = 1000
    # Tokens (docs/protocol.md#2-connecting-and-authentication). No secret: kept in data_dir.
    jwt_secret: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_s: float = 5.0
    max_token_bytes: int = 8192
    http_max_body_bytes: int = 1_048_576  # one /v1 request body; larger: limit_exceeded (413)
    token_ttl_s: float = 3600.0  # default lifetime of tokens `tandem token issue` makes

    # The durable path (server/documents/committer.py, server/documents/rooms.py).
    # Per connection: bytes read and not yet settled (committed or refused), each message counted
    # with a fixed overhead (server/transport/connection.py); reading pauses beyond it, never before.
    max_received_bytes: int = 1_048_576
    commit_shards: int = 2  # writer loops; a document always maps to the same one
    commit_max_batch_ops: int = 1000
    commit_max_wait_ms: float = 0.0  # extra wait for a batch to fill once the queue is empty
    commit_max_queue_ops: int = 50_000  # per shard; full: submitting waits (backpressure)
    # While the database is away (docs/operations.md, "When the database is away"): bound on one
    # append and on taking a connection; past it the batch is refused with `unavailable`.
    commit_timeout_s: float = 5.0
    # An update not committed this long after it was submitted, while the writer has no working
    # connection (or its room is being rebuilt from the log), is refused with `unavailable`.
    commit_unavailable_after_s: float = 5.0
    snapshot_every_ops: int = 1000
    snapshot_every_s: float = 60.0
    content_debounce_s: float = 2.0  # shared_documents.content for readers that don't speak CRDT
    room_idle_timeout_s: float = 30.0  # a document with no subscribers leaves memory after this
    # Fan-out across nodes (server/cluster/fanout.py): NOTIFY is a hint, the log is checked as well.
    fanout_check_interval_s: float = 5.0
    fanout_probe_interval_s: float = 5.0
    # The update checker (server/documents/checker.py): untrusted updates are decoded first in its
    # worker processes. These keep their names: they are the documented TANDEM_VALIDATE_IN_WORKER
    # and TANDEM_VALIDATION_* variables.
    validate_in_worker: bool = True
    validation_workers: int = 1
    validation_timeout_s: float = 1.0
    validation_memory_bytes: int = 1 << 30
    # Plain updates up to this size (text and deletions) are read in Python on the event loop
    # instead of the worker (crdt.cost.plain_measures); 0: all go to the worker.
    validation_inline_bytes: int = 256
    # What one update may cost the room applying it (server/documents/update_bounds.py, docs/protocol.md#7).
    max_update_clients: int = 64  # distinct client ids whose structs one update carries
    # An update larger than this is timed in the worker against a copy of the room's state, and
    # refused past `max_update_apply_ms` of CPU there.
    update_room_check_bytes: int = 256
    max_update_apply_ms: float = 50.0
    # Presence and awareness (server/cluster/presence.py, docs/protocol.md#57): in Redis with REDIS_URL.
    presence_ttl_s: float = 15.0  # a session not refreshed for this long is gone (heartbeat: ttl/3)
    presence_sweep_interval_s: float | None = None  # expired-entry sweep; None: presence_ttl_s / 3
    presence_timeout_s: float = 1.0  # bound on each Redis call; presence degrades, documents don't
    max_awareness_bytes: int = 8192  # one awareness state, as compact JSON
    presence_batch_ms: float = 50.0  # presence changes are gathered this long (more in a crowd), then sent as one batch
    # Coordination (docs/protocol.md section 12).
    lock_release_grace_s: float = 5.0  # a disconnected holder's locks are released after this
    max_state_bytes: int = 262_144  # workspace state, as compact JSON
    task_sweep_interval_s: float = 1.0  # how often this node looks for tasks past their timeout
    task_sweep_batch: int = 100  # tasks marked per sweep statement
    # A step task's holder not stamped by any node's heartbeat (every presence_ttl_s / 3) for
    # this long is gone: the sweep fails its tasks over to another capable agent.
    agent_failover_grace_s: float = 30.0
    max_workflow_steps: int = 100  # steps in one workflow definition
    max_workflow_bytes: int = 65_536  # one workflow definition, as compact JSON
    max_execution_input_bytes: int = 65_536  # one execution's input (and context), as compact JSON
    # Webhooks (server/workspaces/webhook_delivery.py; docs/http.md, "Webhooks").
    webhook_batch_size: int = 100  # deliveries one node claims per round, in all
    webhook_endpoint_run: int = 20  # of them to one endpoint: its next events, sent in order
    webhook_timeout_s: float = 10.0  # one POST to a receiver
    webhook_lease_s: float = 30.0  # a claim's hold on a delivery; keep above webhook_timeout_s
    webhook_poll_interval_s: float = 0.5  # how often an idle node looks for due deliveries
    webhook_backoff_base_s: float = 5.0  # the first retry's delay; doubled per failed attempt
    webhook_backoff_max_s: float = 3600.0  # longest delay between two attempts
    webhook_max_age_s: float = 86_400.0  # an event not delivered this long after it happened is dead
    webhook_max_failures: int = 20  # failed attempts in a row that disable an endpoint
    webhook_retention_s: float = 7 * 86_400.0  # events sent (or dead) are kept this long, for the log
    webhook_sweep_interval_s: float = 60.0  # how often a node deletes what is past retention

    @model_validator(mode="after")
    def _lease_outlasts_a_post(self) -> Settings:
        # A node posts only while its lease outlasts the post's timeout: a shorter lease sends nothing.
        if self.webhook_lease_s <= self.webhook_timeout_s:
            raise ValueError("TANDEM_WEBHOOK_LEASE_S must be greater than TANDEM_WEBHOOK_TIMEOUT_S")
        return self


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; CLI flags arrive as overrides."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
