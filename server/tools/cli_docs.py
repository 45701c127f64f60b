"""`tandem replay`, `history` and `blame`: the commands that read a document's log.

Their bodies are in server/tools/replay.py; server/tools/cli.py registers them as top-level commands. Output
goes through `out`, so a closed stdout stops them at once (server/tools/cli_shared.py).
"""

from __future__ import annotations

import contextlib
import enum
import json
import sys
import uuid
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import typer

from crdt.clock import VectorClock
from server.tools import admin, replay_output
from server.tools import replay as replay_tool
from server.tools.cli_shared import (
    DataDir,
    Tenant,
    fail,
    out,
    out_bytes,
    run_admin,
    settings_from,
)

DocumentId = Annotated[uuid.UUID, typer.Argument(metavar="DOCUMENT", help="Document id (a UUID).", show_default=False)]
AtSeq = Annotated[int | None, typer.Option("--at-seq", min=0, metavar="N", help="After operation N (0: empty).")]
Progress = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help=f"Progress bar on stderr (default: when stderr is a terminal and {replay_tool.PROGRESS_MIN_OPS:,} "
        "or more operations are read).",
    ),
]
JsonLines = Annotated[bool, typer.Option("--json", help="Print one JSON object per line.")]


def time_option(name: str, help: str) -> Any:
    help = f"{help}; ISO 8601, UTC without an offset."
    return typer.Option(name, parser=replay_output.parse_time, metavar="TIMESTAMP", help=help)


class ReplayFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"
    UPDATE = "update"


def replay_command(
    document: DocumentId,
    tenant: Tenant,
    at_seq: AtSeq = None,
    at_time: Annotated[datetime | None, time_option("--at-time", "As of this time: the log written until then")] = None,
    at_clock: Annotated[
        VectorClock | None,
        typer.Option(
            "--at-clock", parser=replay_output.parse_clock, metavar="VECTOR",
            help='The operations this vector clock has seen, as JSON like {"3735928559": 42} (a state vector: the entrywise maximum of the log\'s vector_clock up to a seq).',
        ),
    ] = None,
    output_format: Annotated[
        ReplayFormat,
        typer.Option("--format", help="text; json (json and yaml documents, parsed); update (the state as one binary Yjs update)."),
    ] = ReplayFormat.TEXT,
    verify: Annotated[
        bool, typer.Option("--verify", help="Replay from the first operation; compare with the snapshots and the live content.")
    ] = False,
    progress: Progress = None,
    data_dir: DataDir = None,
) -> None:
    """Rebuild DOCUMENT from its nearest snapshot and the operations after it, and print it.

    Without a bound: the head. The text is printed exactly as it is (no newline added); --format update writes binary, so redirect stdout.

    --verify prints a report instead, and exits 1 if the replay differs from a stored snapshot or the live content, or if an operation cannot be applied.
    """
    given = (("--at-seq", at_seq), ("--at-time", at_time), ("--at-clock", at_clock))
    bounds = [name for name, value in given if value is not None]
    if len(bounds) > 1:
        raise typer.BadParameter("give at most one of them", param_hint=" / ".join(bounds))
    if verify and (bounds or output_format is not ReplayFormat.TEXT):
        raise typer.BadParameter("it replays the whole log and prints a report: no bound, no --format",
                                 param_hint="--verify")
    if output_format is ReplayFormat.UPDATE and sys.stdout.isatty():
        fail("refusing to write a binary update to a terminal: redirect stdout to a file")
    settings = settings_from(data_dir=data_dir)
    if verify:
        report = run_admin(settings, lambda pool: replay_tool.verify(pool, tenant, document, progress=progress))
        for line in report.lines():
            out(line)
        if not report.ok:
            fail(f"document {document} does not match its log: {report.problems} problem(s), see above")
        return
    result = run_admin(
        settings,
        lambda pool: replay_tool.replay(
            pool, tenant, document, at_seq=at_seq, at_time=at_time, at_clock=at_clock, progress=progress
        ),
    )
    if output_format is ReplayFormat.UPDATE:
        out_bytes(result.document.encode_state())
    elif output_format is ReplayFormat.JSON:
        try:
            printed = replay_tool.as_json(result.doc, result.document.text(), result.seq)
        except admin.AdminError as exc:
            fail(str(exc))
        out(printed)
    else:
        out(result.document.text(), newline=False)


def history_command(
    document: DocumentId,
    tenant: Tenant,
    agent: Annotated[
        list[str] | None, typer.Option("--agent", metavar="AGENT", help="Only this agent's operations; repeat for more.")
    ] = None,
    from_seq: Annotated[int | None, typer.Option("--from-seq", min=1, metavar="N", help="From operation N on.")] = None,
    to_seq: Annotated[int | None, typer.Option("--to-seq", min=1, metavar="N", help="Up to operation N.")] = None,
    from_time: Annotated[datetime | None, time_option("--from-time", "Written at or after this time")] = None,
    to_time: Annotated[datetime | None, time_option("--to-time", "Written at or before this time")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, metavar="N", help="At most N operations.")] = None,
    as_json: JsonLines = False,
    data_dir: DataDir = None,
) -> None:
    """List DOCUMENT's operations in order: seq, time, type, size in bytes, agent.

    Filters combine, and ranges include their ends. With --json each line is {seq, agent_id, op_type, timestamp, size_bytes}.
    """
    settings = settings_from(data_dir=data_dir)

    async def action(pool: asyncpg.Pool) -> None:
        entries = replay_tool.history(
            pool, tenant, document, agents=agent or (), from_seq=from_seq or 1, to_seq=to_seq,
            from_time=from_time, to_time=to_time, limit=limit,
        )
        header = not as_json
        # aclosing: when printing fails (stdout closed), the generator ends here and returns its
        # connection, so closing the pool does not wait for it.
        async with contextlib.aclosing(entries):
            async for entry in entries:
                if header:
                    out(replay_tool.HISTORY_HEADER)
                    header = False
                out(json.dumps(entry.to_json(), ensure_ascii=False) if as_json else entry.line())
        if header:  # nothing matched: the header alone
            out(replay_tool.HISTORY_HEADER)

    run_admin(settings, action)


def blame_command(
    document: DocumentId,
    tenant: Tenant,
    at_seq: AtSeq = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the spans, one JSON object per line: agent_id, start (a character offset), text.")
    ] = False,
    progress: Progress = None,
    data_dir: DataDir = None,
) -> None:
    """Print DOCUMENT's text with the agent that inserted each part (replays the whole log).

    One line per line of text: the agents that wrote it, its number, the text.
    """
    settings = settings_from(data_dir=data_dir)
    _doc, spans = run_admin(
        settings, lambda pool: replay_tool.blame(pool, tenant, document, at_seq=at_seq, progress=progress)
    )
    if as_json:
        for span in replay_output.blame_json(spans):
            out(json.dumps(span, ensure_ascii=False))
    else:
        for line in replay_output.blame_lines(spans):
            out(line)
