"""The replay tool (`tandem replay`, `history`, `blame`, `replay --verify`) over the log reader
(server/documents/log_reader.py, shared with the HTTP API): its progress bar, `--verify`'s
comparisons, and its errors as `AdminError`s. Every command reads as the application role inside
one read-only, repeatable-read transaction with the tenant set: RLS confines it to that tenant and
every page sees the same log. Imports no typer: server/tools/cli.py owns the command line.
"""

from __future__ import annotations

import functools
import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import yaml
from tqdm import tqdm

from crdt import replay as crdt
from crdt.clock import VectorClock
from crdt.document import CorruptUpdate, Document
from crdt.operations import Snapshot
from server.db import store
from server.documents import log_reader
from server.documents.log_reader import DocumentRow, HistoryEntry, LogError, Replayed
from server.tools.admin import ACTOR, AdminError
from server.tools.replay_output import (
    describe_clock_difference,
    describe_text_difference,
)

__all__ = ["DocumentRow", "HistoryEntry", "Replayed", "as_json", "blame", "history", "replay", "verify"]

PROGRESS_MIN_OPS = 10_000
"""Replays of fewer operations show no progress bar unless asked for (--progress)."""
JSON_TYPES = ("json", "yaml")
LOG = "operation log"  # the subject of findings about the rows themselves
HISTORY_HEADER = f"{'seq':>8}  {'time':<32}  {'type':<6}  {'bytes':>7}  agent"


# --- results ---------------------------------------------------------------------------------


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


# --- commands --------------------------------------------------------------------------------


@contextmanager
def _as_admin_error() -> Iterator[None]:
    """The log reader's refusals, said as the tool's one-line errors."""
    try:
        yield
    except LogError as exc:
        raise AdminError(str(exc)) from None


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
    """`log_reader.replay` (the head, or the state at one bound); raises `AdminError` for a
    document the tenant cannot see, a seq past the head, or a log that cannot be replayed."""
    with _as_admin_error():
        return await log_reader.replay(
            pool, tenant_id, doc_id, actor=ACTOR, at_seq=at_seq, at_time=at_time, at_clock=at_clock,
            progress=functools.partial(_progress, show=progress),
        )


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
    async with log_reader.reading(pool, tenant_id, ACTOR) as conn:
        doc = await log_reader.document_row(conn, tenant_id, doc_id)
        listed = await conn.fetch(store.Q["replay_snapshot_seqs"], doc_id, doc.head_seq)
        stored = [r["sequence_number"] for r in listed]
        findings: list[Finding] = []
        base: Snapshot | None = None  # the replay's own state at the end of the last stretch
        with _progress(doc.head_seq, "verify", progress) as bar:
            stops = [*stored, doc.head_seq] if not stored or stored[-1] != doc.head_seq else stored
            for stop in stops:
                start = base.seq if base is not None else 0
                rows = log_reader.Rows(conn, doc_id, start, stop, bar)
                try:
                    document = await rows.consume(lambda ops, b=base, s=stop: crdt.rebuild(ops, b, until_seq=s))
                except CorruptUpdate:
                    findings.append(Finding(LOG, False, await log_reader.locate_corrupt(conn, doc_id, base, stop)))
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
    """The text at the head (or after `at_seq`) in spans, each with the agent that inserted it."""
    with _as_admin_error():
        doc, _seq, spans = await log_reader.blame(
            pool, tenant_id, doc_id, actor=ACTOR, at_seq=at_seq, progress=functools.partial(_progress, show=progress)
        )
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
    """The operations in seq order (`log_reader.history`); raises `AdminError` for a document
    the tenant cannot see."""
    with _as_admin_error():
        async for entry in log_reader.history(
            pool, tenant_id, doc_id, actor=ACTOR, agents=agents, from_seq=from_seq, to_seq=to_seq,
            from_time=from_time, to_time=to_time, limit=limit,
        ):
            yield entry


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


async def _check_snapshot(conn: asyncpg.Connection, doc_id: uuid.UUID, seq: int, document: Document) -> Finding:
    subject = f"snapshot at seq {seq}"
    snapshot = await log_reader.snapshot_at_or_before(conn, doc_id, seq)
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


def _progress(total: int, label: str, show: bool | None = None) -> tqdm:
    """A progress bar on stderr: when asked for, or by default when stderr is a terminal and
    the replay reads at least `PROGRESS_MIN_OPS` operations. Never on stdout."""
    if show is None:
        show = total >= PROGRESS_MIN_OPS and sys.stderr.isatty()
    return tqdm(total=total, desc=label, unit="op", unit_scale=True, file=sys.stderr, disable=not show,
                mininterval=0.2, leave=False)
