"""The replay tool's data feeding (`tandem replay`, `history`, `blame`): read a document's snapshots
and operation log and hand the rows to `crdt.replay` (`rebuild`, `verify`, `blame`).

Owns which rows to read (the nearest snapshot for a bound, pages of the log) and how results are
reported; no replay logic of its own. Every command reads as the application role inside one
read-only, repeatable-read transaction with the tenant set: RLS confines it to that tenant and
every page sees the same log. Imports no typer: server/tools/cli.py owns the command line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import yaml
from tqdm import tqdm

from crdt import replay as crdt
from crdt.clock import VectorClock
from crdt.document import CorruptUpdate, Document
from crdt.operations import Operation, Snapshot
from server.db import store
from server.tools.admin import ACTOR, AdminError
from server.tools.replay_output import (
    describe_clock_difference,
    describe_text_difference,
)

T = TypeVar("T")

PAGE_ROWS = 2000
"""Operations fetched per round trip; the replay holds one page plus the document in memory."""
PAGE_TIMEOUT_S = 60.0
"""Bound on one page's query (and on the worker thread's wait for it)."""
PROGRESS_MIN_OPS = 10_000
"""Replays of fewer operations show no progress bar unless asked for (--progress)."""
MAX_CLOCK_SNAPSHOTS = 50
"""Snapshots tried, newest first, for --at-clock; past them the replay starts from seq 1."""
JSON_TYPES = ("json", "yaml")
LOG = "operation log"  # the subject of findings about the rows themselves


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentRow:
    doc_id: uuid.UUID
    content_type: str
    head_seq: int
    content: str | None  # the readable text the server last stored (None: never stored)


@dataclass(frozen=True)
class Replayed:
    doc: DocumentRow
    document: Document
    seq: int  # the bound replayed to (--at-clock: the head, whose operations were filtered)
    snapshot_seq: int  # 0: replayed from the first operation
    operations: int  # rows read after the snapshot


@dataclass(frozen=True)
class Finding:
    subject: str  # "snapshot at seq 2000", "live content", LOG
    ok: bool
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    doc: DocumentRow
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def problems(self) -> int:
        return sum(not f.ok for f in self.findings)

    def lines(self) -> list[str]:
        out = [f"document {self.doc.doc_id}: replaying from seq 1 to the head at seq {self.doc.head_seq}"]
        out += [f"{f.subject}: {'ok' if f.ok else 'DIFFERS'}: {f.detail}" for f in self.findings]
        out.append("verified: no differences" if self.ok else f"verification failed: {self.problems} problem(s)")
        return out


@dataclass(frozen=True)
class HistoryEntry:
    seq: int
    agent_id: str
    op_type: str
    timestamp: datetime | None
    size_bytes: int

    def to_json(self) -> dict[str, Any]:
        when = self.timestamp.isoformat() if self.timestamp is not None else None
        return {"seq": self.seq, "agent_id": self.agent_id, "op_type": self.op_type, "timestamp": when,
                "size_bytes": self.size_bytes}

    def line(self) -> str:
        """Aligned columns (the agent last, as it varies in width); see `HISTORY_HEADER`."""
        when = self.timestamp.isoformat() if self.timestamp is not None else "-"
        return f"{self.seq:>8}  {when:<32}  {self.op_type:<6}  {self.size_bytes:>7}  {self.agent_id}"


HISTORY_HEADER = f"{'seq':>8}  {'time':<32}  {'type':<6}  {'bytes':>7}  agent"


# --- commands --------------------------------------------------------------------------------


async def replay(
    pool: asyncpg.Pool,
    tenant_id: uuid.UUID,
    doc_id: uuid.UUID,
    *,
    at_seq: int | None = None,
    at_time: datetime | None = None,
    at_clock: VectorClock | None = None,
    progress: bool | None = None,
) -> Replayed:
    """The document after operation `at_seq`, after the log prefix up to `at_time`, or with the
    operations `at_clock` dominates (`crdt.replay.rebuild` documents each bound); default: the head.

    Starts from the newest snapshot that lies within the bound. Raises `AdminError` for a document
    the tenant cannot see, a seq past the head, or a log that cannot be replayed.
    """
    async with _reading(pool, tenant_id) as conn:
        doc = await _document(conn, tenant_id, doc_id)
        target = doc.head_seq
        if at_seq is not None:
            if at_seq > doc.head_seq:
                raise AdminError(f"seq {at_seq} is past the head of document {doc_id} (seq {doc.head_seq})")
            target = at_seq
        if at_time is not None:
            # The log prefix up to `at_time` (rebuild's `until_time` rule), resolved to a seq here
            # so that the nearest snapshot can be chosen by seq.
            target = await conn.fetchval(store.Q["replay_seq_at_time"], doc_id, at_time, target)
        if at_clock is None:
            snapshot = await _snapshot_at_or_before(conn, doc_id, target)
        else:
            snapshot = await _snapshot_within(conn, doc_id, at_clock, target)
        start = snapshot.seq if snapshot is not None else 0
        with _progress(target - start, progress, f"replay to seq {target}") as bar:
            rows = _Rows(conn, doc_id, start, target, bar)
            try:
                document = await rows.consume(
                    lambda ops: crdt.rebuild(ops, snapshot, until_seq=target, until_clock=at_clock)
                )
            except CorruptUpdate:
                problem = await _locate_corrupt(conn, doc_id, snapshot, target, at_clock)
                hint = "tandem replay --verify checks the whole log"
                raise AdminError(f"cannot replay document {doc_id}: {problem} ({hint})") from None
            except crdt.ReplayError as exc:
                raise AdminError(f"cannot replay document {doc_id}: {exc}") from None
    return Replayed(doc, document, target, start, rows.count)


async def verify(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, doc_id: uuid.UUID, *, progress: bool | None = None
) -> VerifyReport:
    """Replay from the first operation and compare with every stored snapshot (the latest one
    included) and with the live content. The replay continues from its own state, never from a
    stored snapshot, so each comparison is independent of the others.

    A row that cannot be applied is named by its seq (found by replaying that stretch again one
    operation per transaction) and ends the replay. Raises `AdminError` only for a document the
    tenant cannot see; every difference is a `Finding`.
    """
    async with _reading(pool, tenant_id) as conn:
        doc = await _document(conn, tenant_id, doc_id)
        listed = await conn.fetch(store.Q["replay_snapshot_seqs"], doc_id, doc.head_seq)
        stored = [r["sequence_number"] for r in listed]
        findings: list[Finding] = []
        base: Snapshot | None = None  # the replay's own state at the end of the last stretch
        with _progress(doc.head_seq, progress, "verify") as bar:
            stops = [*stored, doc.head_seq] if not stored or stored[-1] != doc.head_seq else stored
            for stop in stops:
                start = base.seq if base is not None else 0
                rows = _Rows(conn, doc_id, start, stop, bar)
                try:
                    document = await rows.consume(lambda ops, b=base, s=stop: crdt.rebuild(ops, b, until_seq=s))
                except CorruptUpdate:
                    findings.append(Finding(LOG, False, await _locate_corrupt(conn, doc_id, base, stop)))
                    break
                except crdt.ReplayError as exc:
                    findings.append(Finding(LOG, False, str(exc)))
                    break
                if rows.last_seq != stop:
                    missing = f"operations {rows.last_seq + 1}..{stop} are missing (the head is seq {doc.head_seq})"
                    findings.append(Finding(LOG, False, missing))
                    break
                if stop in stored:
                    findings.append(await _check_snapshot(conn, doc_id, stop, document))
                base = Snapshot(doc_id, stop, document.encode_state())
            else:
                findings.append(Finding(LOG, True, f"operations 1..{doc.head_seq} all apply"))
                findings.append(_check_content(doc, document))
    return VerifyReport(doc, tuple(findings))


async def blame(
    pool: asyncpg.Pool,
    tenant_id: uuid.UUID,
    doc_id: uuid.UUID,
    *,
    at_seq: int | None = None,
    progress: bool | None = None,
) -> tuple[DocumentRow, list[crdt.Span]]:
    """The text at the head (or after `at_seq`) in spans, each with the agent that inserted it.
    Attribution needs every operation, so this always reads the log from seq 1."""
    async with _reading(pool, tenant_id) as conn:
        doc = await _document(conn, tenant_id, doc_id)
        target = doc.head_seq if at_seq is None else at_seq
        if target > doc.head_seq:
            raise AdminError(f"seq {target} is past the head of document {doc_id} (seq {doc.head_seq})")
        with _progress(target, progress, "blame") as bar:
            rows = _Rows(conn, doc_id, 0, target, bar)
            try:
                spans = await rows.consume(crdt.blame)
            except CorruptUpdate as exc:  # blame applies one operation at a time: the last one read
                problem = f"operation seq {rows.last_seq} cannot be applied: {exc}"
                raise AdminError(f"cannot blame document {doc_id}: {problem}") from None
            except crdt.ReplayError as exc:
                raise AdminError(f"cannot blame document {doc_id}: {exc}") from None
    return doc, spans


async def history(
    pool: asyncpg.Pool,
    tenant_id: uuid.UUID,
    doc_id: uuid.UUID,
    *,
    agents: Sequence[str] = (),
    from_seq: int = 1,
    to_seq: int | None = None,
    from_time: datetime | None = None,
    to_time: datetime | None = None,
    limit: int | None = None,
) -> AsyncIterator[HistoryEntry]:
    """The operations in seq order (filters combine; seq and time bounds are inclusive), at most
    `limit`, read page by page. Raises `AdminError` for a document the tenant cannot see."""
    async with _reading(pool, tenant_id) as conn:
        doc = await _document(conn, tenant_id, doc_id)
        until = min(doc.head_seq, to_seq if to_seq is not None else doc.head_seq)
        remaining = limit if limit is not None else doc.head_seq
        for low in range(max(from_seq, 1) - 1, until, PAGE_ROWS):  # pages are ranges of seq
            high = min(low + PAGE_ROWS, until)
            page = await conn.fetch(store.Q["replay_history"], doc_id, low, high, list(agents) or None,
                                    from_time, to_time, remaining, timeout=PAGE_TIMEOUT_S)
            for r in page:
                yield HistoryEntry(r["sequence_number"], r["agent_id"], r["operation_type"], r["timestamp"],
                                   r["size_bytes"])
            remaining -= len(page)
            if remaining <= 0:
                return


# --- output (pure) ---------------------------------------------------------------------------


def as_json(doc: DocumentRow, text: str, seq: int) -> str:
    """The text of a json or yaml document, parsed and printed as JSON (indented).
    Raises `AdminError` for another content type or text that does not parse."""
    if doc.content_type not in JSON_TYPES:
        raise AdminError(f"--format json is for json and yaml documents; document {doc.doc_id} is {doc.content_type}")
    where = f"the text of document {doc.doc_id} at seq {seq}"
    if doc.content_type == "json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AdminError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    else:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise AdminError(f"{where} is not valid YAML: {problem}{at}") from None
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


# --- internals -------------------------------------------------------------------------------


def _reading(pool: asyncpg.Pool, tenant_id: uuid.UUID) -> AbstractAsyncContextManager[asyncpg.Connection]:
    """One view of the head, the snapshots and every page of the log, however long the replay
    takes."""
    return store.tenant_transaction(pool, tenant_id, ACTOR, snapshot=True)


async def _document(conn: asyncpg.Connection, tenant_id: uuid.UUID, doc_id: uuid.UUID) -> DocumentRow:
    row = await conn.fetchrow(store.Q["replay_document"], doc_id)
    if row is None:  # another tenant's document is invisible (RLS), exactly like a missing one
        raise AdminError(f"document {doc_id} not found in tenant {tenant_id}")
    return DocumentRow(doc_id, row["content_type"], row["head_seq"], row["content"])


async def _snapshot_at_or_before(conn: asyncpg.Connection, doc_id: uuid.UUID, seq: int) -> Snapshot | None:
    row = await conn.fetchrow(store.Q["replay_snapshot_at_or_before"], doc_id, seq)
    return Snapshot(doc_id, row["sequence_number"], row["state"], row["created_at"]) if row else None


async def _snapshot_within(
    conn: asyncpg.Connection, doc_id: uuid.UUID, clock: VectorClock, head_seq: int
) -> Snapshot | None:
    """The newest snapshot whose state the clock has seen entirely (rebuild refuses others)."""
    seqs = [r["sequence_number"] for r in await conn.fetch(store.Q["replay_snapshot_seqs"], doc_id, head_seq)]
    for seq in reversed(seqs[-MAX_CLOCK_SNAPSHOTS:]):
        snapshot = await _snapshot_at_or_before(conn, doc_id, seq)
        if snapshot is not None and clock.dominates(Document.from_state(snapshot.state).clock()):
            return snapshot
    return None


async def _check_snapshot(conn: asyncpg.Connection, doc_id: uuid.UUID, seq: int, document: Document) -> Finding:
    subject = f"snapshot at seq {seq}"
    snapshot = await _snapshot_at_or_before(conn, doc_id, seq)
    assert snapshot is not None and snapshot.seq == seq  # listed in the same transaction
    try:
        stored = Document.from_state(snapshot.state)
    except CorruptUpdate as exc:
        return Finding(subject, False, f"the stored state cannot be decoded: {exc}")
    outcome = crdt.verify(stored, document)
    if outcome.ok:
        return Finding(subject, True, "same text and state vector")
    problems = []
    if not outcome.text_equal:
        problems.append(describe_text_difference(document.text(), stored.text(), "snapshot"))
    if not outcome.state_vector_equal:
        problems.append(describe_clock_difference(document.clock(), stored.clock(), "snapshot"))
    return Finding(subject, False, "; ".join(problems))


def _check_content(doc: DocumentRow, document: Document) -> Finding:
    subject = "live content"
    if doc.content is None:
        return Finding(subject, True, "none stored yet (nothing to compare)")
    text = document.text()
    if text == doc.content:
        return Finding(subject, True, f"same text as the replay at seq {doc.head_seq}")
    return Finding(subject, False, describe_text_difference(text, doc.content, "live content")
                   + " (the server refreshes it after a pause in editing: re-run if the document is being edited)")


async def _locate_corrupt(
    conn: asyncpg.Connection, doc_id: uuid.UUID, base: Snapshot | None, stop: int, clock: VectorClock | None = None
) -> str:
    """After a `CorruptUpdate`, name the row: replay the stretch again with one update per
    pycrdt transaction, so the row being applied when it fails is the last one handed out.
    (Only on failure: batching is about three times faster.)"""
    rows = _Rows(conn, doc_id, base.seq if base is not None else 0, stop)
    try:
        await rows.consume(lambda ops: crdt.rebuild(ops, base, until_seq=stop, until_clock=clock, batch_ops=1))
    except CorruptUpdate as exc:
        return f"operation seq {rows.last_seq} cannot be applied: {exc.__cause__ or exc}"
    return f"an operation in seq {rows.first_seq}..{stop} cannot be applied"


class _Rows:
    """The operations `after_seq + 1 .. until_seq` for a consumer running in a worker thread
    (replay is CPU-bound), fetched page by page on the event loop so memory stays bounded.
    Fetching and consuming alternate: the thread waits, without the GIL, while the loop reads
    a page (overlapping them measured no faster: both need the GIL). Records the last seq
    handed out, so a failing consumer can be told where it stopped."""

    def __init__(self, conn: asyncpg.Connection, doc_id: uuid.UUID, after_seq: int, until_seq: int,
                 bar: tqdm | None = None) -> None:
        self.conn, self.doc_id, self.after_seq, self.until_seq, self.bar = conn, doc_id, after_seq, until_seq, bar
        self.first_seq = after_seq + 1
        self.last_seq = after_seq
        self.count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cancelled = False

    async def consume(self, consumer: Callable[[Iterator[Operation]], T]) -> T:
        """`consumer(rows)` in a worker thread; no query of it is running once this returns."""
        self._loop = asyncio.get_running_loop()
        try:
            return await asyncio.to_thread(consumer, self._pages())
        except asyncio.CancelledError:
            self._cancelled = True  # the thread stops at its next page instead of reading on
            raise

    def _pages(self) -> Iterator[Operation]:
        assert self._loop is not None
        for low in range(self.after_seq, self.until_seq, PAGE_ROWS):  # seqs are contiguous
            if self._cancelled:
                raise asyncio.CancelledError("replay cancelled")
            high = min(low + PAGE_ROWS, self.until_seq)
            query = self.conn.fetch(store.Q["replay_operations"], self.doc_id, low, high, timeout=PAGE_TIMEOUT_S)
            page = asyncio.run_coroutine_threadsafe(query, self._loop).result(PAGE_TIMEOUT_S + 5)
            for r in page:
                self.last_seq = r["sequence_number"]
                self.count += 1
                # The clock stays JSON text: `Operation.clock` decodes it, and only --at-clock asks.
                yield Operation(self.doc_id, r["sequence_number"], r["agent_id"], r["operation_type"],
                                r["vector_clock"], r["update"], r["timestamp"])
            if self.bar is not None:
                self.bar.update(high - low)


def _progress(total: int, show: bool | None, label: str) -> tqdm:
    """A progress bar on stderr: when asked for, or by default when stderr is a terminal and
    the replay reads at least `PROGRESS_MIN_OPS` operations. Never on stdout."""
    if show is None:
        show = total >= PROGRESS_MIN_OPS and sys.stderr.isatty()
    return tqdm(total=total, desc=label, unit="op", unit_scale=True, file=sys.stderr, disable=not show,
                mininterval=0.2, leave=False)
