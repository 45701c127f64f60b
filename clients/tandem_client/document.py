"""A pycrdt document kept in sync with one Tandem document, both ways, across reconnects.

Local edits: every transaction on `ydoc` that did not come from the server produces a Yjs update
(observed, remote applies are tagged with the `REMOTE` origin and skipped). Updates queue in an
outbox; a sender task merges what has queued (up to `max_update_bytes`) into one `doc.update`,
with at most `max_inflight_updates` unacknowledged. Remote edits: `doc.op` frames are applied in
the reader, in order, tracking `seq` (docs/protocol.md section 6.2); a gap triggers a resync.

Resync (a reconnect, a gap, a refused update): `doc.open` with the local state vector, apply the
reply, then send `ydoc.get_update(server_state_vector)`: everything the server lacks, which covers
edits made offline and edits in flight when the connection dropped. Yjs updates are idempotent,
so resending is safe; an edit the server already has is not in that diff, so nothing is stored
twice. The outbox and the unacknowledged set only decide what `flushed()` waits for.

Locks (docs/protocol.md section 12.1): while this client holds the document's lock, each edit is
queued with the lock's fence and sent with it (edits of different fences are never merged), so
an edit the server refuses with `stale_fence` fails the document instead of landing. An update
refused with `locked` (another agent holds the lock) is kept: `flushed()` raises `Locked` and
the edits are sent again when the lock is released (or at its expiry).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pycrdt import Doc, Text, TransactionEvent, merge_updates

from tandem_client import wire
from tandem_client.coordination import Lock
from tandem_client.errors import ClientClosed, ClientError, ConnectionLost, TandemError, error_from_frame

if TYPE_CHECKING:
    from tandem_client.client import Client
    from tandem_client.workspace import Workspace

log = logging.getLogger("tandem_client")

T = TypeVar("T")
CONTENT = "content"  # the root text every Tandem content type is stored as (crdt/document.py)
EMPTY_UPDATE = b"\x00\x00"
FRAME_OVERHEAD_BYTES = 256  # a doc.update frame without its update: type, id, doc_id
# Codes after which an update will never be accepted as it is; resending would be refused again.
# `stale_fence`: the edit was made under a lease that is gone; it must not land later.
FATAL_UPDATE_CODES = {"forbidden", "invalid_update", "frame_too_large", "too_many_invalid_updates", "stale_fence"}
MAX_LOCKED_RETRY_S = 60.0  # a document refused with `locked` tries again at the lock's expiry, at the latest after this
Outgoing = tuple[bytes, int | None]  # an update and the fence it was made under


class _RemoteOrigin:
    """The origin of transactions that apply what the server sent (pycrdt UndoManager can exclude it)."""

    def __repr__(self) -> str:
        return "tandem_client.REMOTE"


REMOTE = _RemoteOrigin()


class Document:
    """An open document. `ydoc` is the pycrdt `Doc`; edit it (or `text`) like any pycrdt document.

    Get one from `Workspace.open`. Edits are sent as they are made; `await flushed()` waits until
    the server has acknowledged every one of them.
    """

    def __init__(self, client: Client, workspace: Workspace, info: wire.DocumentInfo, ydoc: Doc | None = None) -> None:
        self.client = client
        self.workspace = workspace
        self.info = info
        self.ydoc: Doc = ydoc if ydoc is not None else Doc()
        self.seq: int | None = None  # the last seq of this document seen in the current subscription
        self.failure: ClientError | None = None
        self.closed = False
        self._conn = client._conn
        self._options = client.options
        self._outbox: list[Outgoing] = []
        self._unacked: dict[int, Outgoing] = {}
        self._lock: Lock | None = None  # this client holds the document's lock (Lock sets it)
        self.blocked: ClientError | None = None  # `Locked`: edits wait for another agent's lock
        self._synced_gen: int | None = None  # the session on which the subscription is caught up
        self._applying_remote = False
        self._wake = asyncio.Event()
        self._resync_task: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._text: Text | None = None
        self._subscription = self.ydoc.observe(self._on_transaction)

    # --- public ------------------------------------------------------------------------------

    @property
    def doc_id(self) -> str:
        return self.info.doc_id

    @property
    def text(self) -> Text:
        """The `content` text, where Tandem keeps every content type (text, markdown, code, ...)."""
        if self._text is None:
            self._text = self.ydoc.get(CONTENT, type=Text)
        return self._text

    def get(self, key: str, *, type: type[T]) -> T:
        """`ydoc.get(key, type=...)`: another root type of the document."""
        return self.ydoc.get(key, type=type)  # type: ignore[type-var,return-value]

    @property
    def pending(self) -> int:
        """Edits not yet acknowledged (queued updates plus updates in flight)."""
        return len(self._outbox) + len(self._unacked)

    @property
    def in_flight(self) -> int:
        """Updates sent and not yet acknowledged."""
        return len(self._unacked)

    @property
    def synced(self) -> bool:
        """Caught up on the current session, with nothing left to send."""
        return self._synced_gen == self._conn.gen and self._conn.ready and not self._outbox and not self._unacked

    async def flushed(self, timeout_s: float | None = None) -> None:
        """Wait until the server has acknowledged every local edit made so far (and any made
        while waiting). Raises the error that made an edit impossible to deliver (e.g. `Forbidden`
        for a viewer), `ReconnectFailed` if the connection is gone for good, or TimeoutError."""
        await self._conn.changed.wait_for(
            lambda: self.synced or self.failure or self.blocked or self._conn.failed or self.closed, timeout_s
        )
        self._raise_failure()
        if self.blocked is not None and not self.synced:
            raise self.blocked

    async def wait_for(self, predicate: Callable[[Document], object], timeout_s: float | None = None) -> None:
        """Wait until `predicate(self)` is true; it is checked after every local or remote change."""
        await self._conn.changed.wait_for(lambda: predicate(self) or self.failure or self.closed, timeout_s)
        self._raise_failure()

    def lock(self, ttl: float = 30.0, *, wait: bool = False, timeout: float | None = None, renew: bool = True) -> Lock:
        """`async with doc.lock(ttl=30) as lock:` the document's lock for `ttl` seconds, renewed
        every ttl/3 while the block runs (unless `renew=False`), every edit sent with its fence.
        Raises `Locked` (`details["holder"]`) if another agent holds it; with `wait=True` retries
        with backoff for up to `timeout` seconds (default `lock_wait_timeout_s`). See `Lock`."""
        return Lock(self.workspace, document=self, ttl_s=ttl, wait=wait, timeout_s=timeout, renew=renew)

    @property
    def fence(self) -> int | None:
        """The fence edits are sent with now: the held lock's, or None."""
        return self._lock.fence if self._lock is not None else None

    async def set_awareness(self, state: dict[str, Any] | None) -> None:
        """Publish this session's awareness state about this document (see Workspace.set_awareness)."""
        await self.workspace.set_awareness(state, self.doc_id)

    async def close(self) -> None:
        """Wait (up to `flush_on_close_s`) for unacknowledged edits, then close the subscription."""
        if self.closed:
            return
        if self.failure is None and self._conn.failed is None:
            try:
                await self.flushed(self._options.flush_on_close_s)
            except TimeoutError:
                log.warning("tandem_client.close_unflushed", extra={"doc_id": self.doc_id, "pending": self.pending})
            except ClientError:
                pass
        self._shutdown()
        if self._conn.ready:
            try:
                await self._conn.request("doc.close", {"doc_id": self.doc_id})
            except (ClientError, TimeoutError):
                pass  # the session ends the subscription anyway

    def __repr__(self) -> str:
        return f"<Document {self.info.title!r} {self.doc_id} seq={self.seq} pending={self.pending}>"

    # --- subscription ------------------------------------------------------------------------

    async def _sync(self, restore: bool = False) -> None:
        """`doc.open` with the local state vector: catch up, then send what the server lacks.
        `restore` is true while a new session is being restored (no waiting for readiness)."""
        self._synced_gen = None  # the sender pauses until the reply is applied
        self.seq = None
        await self._conn.request(
            "doc.open",
            {"doc_id": self.doc_id, "state_vector": wire.b64(self.ydoc.get_state())},
            on_reply=self._on_synced,
            restore=restore,
        )
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_loop(), name=f"tandem-client-doc-{self.doc_id}")

    def _on_synced(self, frame: wire.Frame) -> None:
        """The `doc.open.ok` reply, applied in the reader before any later frame."""
        if self.closed:
            return
        self._apply_remote(wire.unb64(frame["update"]))
        self.seq = frame.get("seq")
        self._synced_gen = self._conn.gen
        diff = self.ydoc.get_update(wire.unb64(frame["state_vector"]))
        # The diff holds every local edit the server lacks: queued, in flight or made offline.
        # Under a held lock it goes with the fence (it may hold edits made under the lock).
        self._outbox = [(diff, self.fence)] if diff != EMPTY_UPDATE else []
        self._unacked.clear()
        self.blocked = None
        self.client._docs[self.doc_id] = self
        self._kick()

    def _schedule_resync(self, delay_s: float = 0.0) -> None:
        if self.closed or (self._resync_task is not None and not self._resync_task.done()):
            return
        self._synced_gen = None
        self._resync_task = asyncio.create_task(self._resync(delay_s), name=f"tandem-client-resync-{self.doc_id}")

    async def _resync(self, delay_s: float) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)  # retry_after_ms or a lock's expiry, not a wait for a condition
        self.blocked = None  # trying again: flushed() waits for the outcome
        try:
            await self._sync()
        except ConnectionLost:
            pass  # the reconnect reopens the document
        except TandemError as exc:
            self._fail(exc)
        except (ClientError, TimeoutError) as exc:
            log.warning("tandem_client.resync_failed", extra={"doc_id": self.doc_id, "error": repr(exc)})

    async def _restore(self) -> None:
        """Reopen on a new session (called by the client's restore step)."""
        if self._resync_task is not None and not self._resync_task.done():
            self._resync_task.cancel()
        try:
            await self._sync(restore=True)
        except TandemError as exc:  # deleted meanwhile, access revoked: this document is done
            self._fail(exc)

    # --- remote changes ----------------------------------------------------------------------

    def _on_op(self, frame: wire.Frame) -> None:
        if self.closed or not self._accept_seq(frame.get("seq")):
            return
        self._apply_remote(wire.unb64(frame["update"]))

    def _accept_seq(self, seq: Any) -> bool:
        """Track the per-document stream (section 6.2); False: already applied, skip it."""
        if seq is None or self.seq is None:
            return True  # not in the stream, or not caught up yet (applying again is harmless)
        if seq <= self.seq:
            return False
        if seq > self.seq + 1:
            log.info("tandem_client.gap", extra={"doc_id": self.doc_id, "seq": self.seq, "got": seq})
            self.seq = None
            self._schedule_resync()
            return True
        self.seq = seq
        return True

    def _apply_remote(self, update: bytes) -> None:
        self._applying_remote = True
        try:
            with self.ydoc.transaction(origin=REMOTE):
                self.ydoc.apply_update(update)
        except RuntimeError:  # inside a local transaction held across an await: catch up later
            self._schedule_resync()
        finally:
            self._applying_remote = False
        self._conn.changed.notify()

    # --- local changes -----------------------------------------------------------------------

    def _on_transaction(self, event: TransactionEvent) -> None:
        if self._applying_remote or self.closed:
            return
        update = event.update
        if update != EMPTY_UPDATE:
            self._outbox.append((update, self.fence))
            self._kick()

    def _kick(self) -> None:
        self._wake.set()
        self._conn.changed.notify()

    def _can_send(self) -> bool:
        return (
            bool(self._outbox)
            and self.failure is None
            and self._synced_gen == self._conn.gen
            and self._conn.alive
            and len(self._unacked) < self._options.max_inflight_updates
        )

    def _batch_budget(self) -> int:
        """Bytes of updates merged into one frame: `max_update_bytes`, and small enough for the
        server's `max_frame_bytes` once base64 (4/3) and the JSON around it are added."""
        budget = self._options.max_update_bytes
        hello = self._conn.hello
        max_frame = hello.limits.get("max_frame_bytes") if hello and hello.limits else None
        if isinstance(max_frame, int) and max_frame > FRAME_OVERHEAD_BYTES:
            budget = min(budget, (max_frame - FRAME_OVERHEAD_BYTES) * 3 // 4)
        return budget

    def _take_batch(self) -> Outgoing:
        """Queued updates of one fence, merged up to the batch budget."""
        budget, size, count = self._batch_budget(), 0, 0
        fence = self._outbox[0][1]
        for update, update_fence in self._outbox:
            if count and (size + len(update) > budget or update_fence != fence):
                break
            size += len(update)
            count += 1
        batch, self._outbox = [u for u, _ in self._outbox[:count]], self._outbox[count:]
        return (batch[0] if count == 1 else merge_updates(*batch)), fence

    async def _send_loop(self) -> None:
        """Sends queued edits while the subscription is caught up; lives as long as the document."""
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            while self._can_send():
                gen = self._conn.gen
                batch, fence = self._take_batch()
                rid = self._conn.next_id()
                self._unacked[rid] = (batch, fence)
                try:
                    await self._conn.send(
                        "doc.update",
                        {"doc_id": self.doc_id, "update": wire.b64(batch), **wire.given(fence=fence)},
                        lambda result, rid=rid: self._on_update_reply(rid, result),
                        rid=rid,
                        gen=gen,
                    )
                except ClientError:
                    self._unacked.pop(rid, None)
                    break  # the client is closed or gave up: flushed() reports it
                self._conn.changed.notify()

    def _on_update_reply(self, rid: int, result: wire.Frame | ClientError) -> None:
        _, fence = self._unacked.pop(rid, (b"", None))
        if isinstance(result, ClientError):
            pass  # the session ended: the resync on the next one sends this edit again if needed
        elif result["type"] == "doc.update.ok":
            self.blocked = None
            self._accept_seq(result.get("seq"))
        else:
            error = error_from_frame(result)
            if error.code == "rate_limited":
                retry_ms = (error.details or {}).get("retry_after_ms", 100)
                self._schedule_resync(float(retry_ms) / 1000.0)
            elif error.code == "locked":  # another agent's lock: keep the edits, try again once it is gone
                self.blocked = error
                self._schedule_resync(self._locked_retry_s(error))
            elif error.code in FATAL_UPDATE_CODES:
                if error.code == "stale_fence" and self._lock is not None and self._lock.fence == fence:
                    self._lock._mark_lost(error)
                self._fail(error)
            else:  # doc_not_open (closed behind our back), internal_error, unavailable, update_ahead: open again, send the diff
                self._schedule_resync()
        self._kick()

    def _locked_retry_s(self, error: TandemError) -> float:
        """Seconds until the refusing lock expires (a `lock.released` event comes sooner)."""
        expires_at = (error.details or {}).get("expires_at")
        if not isinstance(expires_at, str):
            return MAX_LOCKED_RETRY_S
        try:
            remaining_s = (datetime.fromisoformat(expires_at) - datetime.now(UTC)).total_seconds()
        except ValueError:
            return MAX_LOCKED_RETRY_S
        return min(MAX_LOCKED_RETRY_S, max(0.05, remaining_s))

    def _on_lock_released(self) -> None:
        """The lock that refused our edits is gone (a `lock.released` event), or is ours now:
        edits refused with `locked` go out again at once."""
        if self.blocked is not None and not self.closed:
            self.blocked = None
            if self._resync_task is not None and not self._resync_task.done():
                self._resync_task.cancel()  # it was waiting for the lock's expiry
                self._resync_task = None
            self._schedule_resync()

    # --- ending ------------------------------------------------------------------------------

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure
        if self._conn.failed is not None:
            raise self._conn.failed
        if self.closed:
            raise ClientClosed(f"document {self.doc_id} is closed")

    def _fail(self, error: ClientError) -> None:
        log.warning("tandem_client.document_failed", extra={"doc_id": self.doc_id, "error": repr(error)})
        self.failure = error
        self._conn.changed.notify()

    def _shutdown(self) -> None:
        self.closed = True
        self.client._docs.pop(self.doc_id, None)
        self.workspace._forget_document(self.doc_id)
        try:
            self.ydoc.unobserve(self._subscription)
        except ValueError:
            pass
        for task in (self._sender, self._resync_task):
            if task is not None and not task.done():
                task.cancel()
        self._wake.set()
        self._conn.changed.notify()
