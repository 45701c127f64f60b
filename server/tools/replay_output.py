"""What the replay tools read from the command line and how they print (pure): timestamps and
vector clocks as given to `tandem replay`, blame as lines or objects, and where a replay and what
it is checked against differ."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from crdt import replay as crdt
from crdt.clock import VectorClock

DIFF_CONTEXT_CHARS = 40

# --- command-line values ---------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """An ISO 8601 timestamp (`2024-05-01T10:00:00Z`, `2024-05-01 10:00:00+02:00`); without an
    offset it is UTC. ValueError otherwise."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expected an ISO 8601 timestamp such as 2024-05-01T10:00:00Z, not {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_clock(text: str) -> VectorClock:
    """A vector clock in the log's JSON shape, `{"<client_id>": clock, ...}`: for --at-clock a
    state vector, such as the entrywise maximum of the log's clocks up to a seq (docs/schema.md)."""
    try:
        return VectorClock.from_json(text)
    except ValueError as exc:  # json.JSONDecodeError included
        raise ValueError(f'expected a JSON object like {{"3735928559": 42}}: {exc}') from None


# --- output ----------------------------------------------------------------------------------


def blame_lines(spans: Sequence[crdt.Span]) -> list[str]:
    """One line per text line, git-blame style: the agents that inserted its characters (in
    order of appearance, its newline counted only on an empty line), the line number, the text."""
    rows: list[tuple[list[str], str]] = []
    agents: list[str] = []
    parts: list[str] = []
    for span in spans:
        name = span.agent_id if span.agent_id is not None else "(snapshot)"
        pieces = span.text.split("\n")
        for i, piece in enumerate(pieces):
            if piece:
                parts.append(piece)
                if name not in agents:
                    agents.append(name)
            if i < len(pieces) - 1:  # a newline ends the line
                rows.append((agents or [name], "".join(parts)))
                agents, parts = [], []
    if parts:  # the last line has no newline
        rows.append((agents, "".join(parts)))
    labels = [",".join(a) for a, _ in rows]
    width = max((len(label) for label in labels), default=0)
    number_width = len(str(len(rows)))
    numbers = range(1, len(rows) + 1)
    return [f"{label:<{width}}  {n:>{number_width}}  {text}" for n, label, (_, text) in zip(numbers, labels, rows)]


def blame_json(spans: Sequence[crdt.Span]) -> Iterator[dict[str, Any]]:
    """The spans as objects: agent_id (null: from a snapshot), start (a character offset), text."""
    start = 0
    for span in spans:
        yield {"agent_id": span.agent_id, "start": start, "text": span.text}
        start += len(span.text)


def describe_text_difference(replayed: str, expected: str, name: str) -> str:
    """Where two texts first differ, with a little of each from there."""
    i = len(os.path.commonprefix([replayed, expected]))
    line = replayed.count("\n", 0, i) + 1
    column = i - (replayed.rfind("\n", 0, i) + 1) + 1
    ours, theirs = replayed[i : i + DIFF_CONTEXT_CHARS], expected[i : i + DIFF_CONTEXT_CHARS]
    return (f"text differs from character {i} (line {line}, column {column}): the replay has {ours!r}, "
            f"the {name} has {theirs!r} ({len(replayed)} and {len(expected)} characters)")


def describe_clock_difference(replayed: VectorClock, expected: VectorClock, name: str, shown: int = 5) -> str:
    clients = sorted(c for c in set(replayed.clocks) | set(expected.clocks) if replayed.get(c) != expected.get(c))
    entries = [f"client {c}: replay {replayed.get(c)}, {name} {expected.get(c)}" for c in clients[:shown]]
    more = f" and {len(clients) - shown} more" if len(clients) > shown else ""
    return "state vectors differ (" + "; ".join(entries) + more + ")"
