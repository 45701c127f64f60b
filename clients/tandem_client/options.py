"""Every limit and timeout of the SDK, in one frozen dataclass with safe defaults.

Pass them as keyword arguments to `tandem_client.connect(...)`. Units are in the names.
"""

from __future__ import annotations

from dataclasses import dataclass

from tandem_client import __version__


@dataclass(frozen=True)
class Options:
    # Requests.
    request_timeout_s: float = 30.0  # a reply, including waiting for a reconnect in progress
    idempotent_attempts: int = 3  # join/list/open/ping are resent after a reconnect, this many times in all
    # Connecting (one attempt: TCP + WebSocket handshake + `hello`).
    open_timeout_s: float = 10.0
    connect_timeout_s: float = 30.0  # the first connection, retried like a reconnect
    close_timeout_s: float = 5.0
    ping_interval_s: float | None = 20.0  # WebSocket keepalive; detects half-open connections
    ping_timeout_s: float | None = 20.0
    max_frame_bytes: int | None = 64 * 1024 * 1024  # largest frame accepted from the server (a big doc.open.ok)
    # Reconnecting: exponential backoff with jitter, rotating through the URLs.
    reconnect_initial_s: float = 0.05
    reconnect_max_s: float = 5.0
    reconnect_jitter_s: float = 0.5
    reconnect_timeout_s: float = 120.0  # give up (ReconnectFailed) after this long without a session
    # Sending document updates.
    max_inflight_updates: int = 16  # unacknowledged doc.update per document; more edits are merged
    max_update_bytes: int = 256 * 1024  # merge queued edits up to this size (before base64)
    rate_fraction: float = 0.9  # of the server's announced max_messages_per_s, to stay under it
    flush_on_close_s: float = 10.0  # close() waits this long for unacknowledged edits
    client_name: str = f"tandem-client/{__version__}"
    # Coordination (docs/protocol.md section 12).
    lock_wait_timeout_s: float = 60.0  # `lock(wait=True)` gives up (raising Locked) after this, unless `timeout` is given
    lock_retry_initial_s: float = 0.05  # backoff between acquisition attempts; a `lock.released` event wakes it early
    lock_retry_max_s: float = 2.0
    lock_retry_jitter_s: float = 0.1
    state_retry_initial_s: float = 0.1  # `state.update(fn)` backoff after a `Conflict` (random exponential); short
    state_retry_max_s: float = 2.0  # waits favour whoever writes next, so a loser would rarely win a race again
    max_event_queue: int = 1024  # unread events one stream (state changes, task events) holds; then the oldest is dropped
