"""The replay tool: `tandem replay` (bounds, formats, --verify), `tandem history`, `tandem blame`.

A recorded session: four agents (real pycrdt documents, seeded RNG, disjoint alphabets) edit one
text concurrently; a server-side `Document` validates each update as the rooms do, and a client
applying the log in order records the text it saw after every seq. The rows go into a real
database through `store.append_operations` (as the application role, in transactions of varying
size), with two snapshots and the live content. The commands run as processes of the installed
`tandem` script; each costs about a second, so each test walks several cases.
"""

from __future__ import annotations

import json
import random
import subprocess
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING

import asyncpg
import pytest
from pycrdt import Doc, Text

from crdt.clock import VectorClock
from crdt.document import CONTENT, Document
from crdt.replay import Span
from server.db import store
from server.tools import replay as replay_tool
from server.tools import replay_output
from server.tools.admin import AdminError
from server.workspaces import directory as workspaces
from tests.conftest import TENANT_A, TENANT_B
from tests.serverproc import REPO, TANDEM, server_env

if TYPE_CHECKING:
    from tests.conftest import TestDatabase

COMMAND_TIMEOUT_S = 180.0
A = str(TENANT_A)
B = str(TENANT_B)
N_OPS = 3000
SNAPSHOT_SEQS = (1000, 2000)
# Disjoint alphabets: the text itself says who inserted each character (dave writes the newlines).
ALPHABETS = {"alice": "abcde", "bob": "fghij", "carol": "klmno", "dave": "pqrs\n"}
AUTHOR = {ch: agent for agent, alphabet in ALPHABETS.items() for ch in alphabet}


# --- the recorded session --------------------------------------------------------------------


@dataclass
class Session:
    ops: list[store.NewOperation] = field(default_factory=list)  # ops[i] has seq i + 1
    observed: list[str] = field(default_factory=lambda: [""])  # the client's text after seq i
    states: dict[int, bytes] = field(default_factory=dict)  # the server's state after seq i

    @property
    def head(self) -> int:
        return len(self.ops)


@cache
def recorded_session(n_ops: int = N_OPS, seed: int = 11) -> Session:
    """Agents edit at random positions, pulling the log now and then (so edits are concurrent);
    the server keeps what changes something, as `room.Room.apply_update` does."""
    rng = random.Random(seed)
    session = Session()
    server = Document()
    client = Doc()
    client[CONTENT] = client_text = Text()
    agents = []
    for k, (name, alphabet) in enumerate(ALPHABETS.items()):
        doc = Doc(client_id=1001 + k)
        doc[CONTENT] = Text()
        captured: list[bytes] = []
        doc.observe(lambda event, captured=captured: captured.append(event.update))
        agents.append((name, alphabet, doc, captured))
    seen = dict.fromkeys(ALPHABETS, 0)
    for _ in range(2 * n_ops):  # bounded; some edits change nothing on the server
        if session.head >= n_ops:
            break
        name, alphabet, doc, captured = rng.choice(agents)
        if rng.random() < 0.4:
            with doc.transaction():
                for op in session.ops[seen[name] :]:
                    doc.apply_update(op.update)
            seen[name] = session.head
        text: Text = doc[CONTENT]
        captured.clear()
        length = len(text)
        if length > 20 and rng.random() < 0.3:
            start = rng.randrange(length - 1)
            del text[start : min(length, start + rng.randint(1, 3))]
        else:
            text.insert(rng.randint(0, length), "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))))
        update = captured[-1]
        applied = server.apply(update)
        if not applied.changed and not applied.pending:
            continue  # e.g. deleting what another agent deleted already: nothing to store
        session.ops.append(store.NewOperation(name, applied.op_type.value, applied.clock_text(), update))
        client.apply_update(update)
        session.observed.append(str(client_text))
        if session.head in SNAPSHOT_SEQS:
            session.states[session.head] = server.encode_state()
    assert session.head == n_ops and server.text() == session.observed[-1]
    return session


async def store_session(pool: asyncpg.Pool, session: Session, content_type: str = "text", snapshots: bool = True) -> uuid.UUID:
    """The session's rows as the server writes them: sequenced by `append_operations` in
    transactions of 1 to 60 operations, then the snapshots and the readable content."""
    async with store.tenant_transaction(pool, TENANT_A, "olga") as conn:
        workspace = await workspaces.create_workspace(conn, TENANT_A, "olga", "Replay")
        doc = await workspaces.create_document(conn, "olga", workspace.workspace_id, "Notes", content_type)
    rng = random.Random(5)
    done = 0
    while done < session.head:  # bounded: at least one operation per round
        batch = session.ops[done : done + rng.randint(1, 60)]
        async with store.tenant_transaction(pool, TENANT_A, batch[0].agent_id) as conn:
            assert await store.append_operations(conn, doc.doc_id, batch) == list(range(done + 1, done + 1 + len(batch)))
        done += len(batch)
    async with store.tenant_transaction(pool, TENANT_A) as conn:
        if snapshots:
            for seq, state in session.states.items():
                await store.insert_snapshot(conn, doc.doc_id, seq, state)
        await store.update_content(conn, doc.doc_id, session.observed[-1], None)
    return doc.doc_id


def json_session() -> Session:
    """A json document written in three edits; after the second one the text is not JSON."""
    session = Session()
    doc = Doc(client_id=77)
    doc[CONTENT] = text = Text()
    server = Document()
    for edit in (lambda: text.insert(0, '{"a": 1}'), lambda: text.insert(7, ', "b": ['), lambda: text.insert(15, "1, 2]")):
        captured: list[bytes] = []
        sub = doc.observe(lambda event, captured=captured: captured.append(event.update))
        edit()
        doc.unobserve(sub)
        applied = server.apply(captured[-1])
        session.ops.append(store.NewOperation("alice", applied.op_type.value, applied.clock_text(), captured[-1]))
        session.observed.append(str(text))
    return session


# --- running the command ---------------------------------------------------------------------


def tandem(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([TANDEM, *args], env=env, cwd=REPO, capture_output=True, timeout=COMMAND_TIMEOUT_S)


def ok(result: subprocess.CompletedProcess[bytes]) -> bytes:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout[:2000]!r}\nstderr:\n{result.stderr.decode()}"
    return result.stdout


def failed(result: subprocess.CompletedProcess[bytes], code: int = 1) -> str:
    """The stderr of a command that failed with `code`, printing nothing on stdout."""
    assert result.returncode == code, f"exit {result.returncode}\nstdout:\n{result.stdout!r}\nstderr:\n{result.stderr.decode()}"
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr, stderr
    return stderr


def lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


@pytest.fixture
def env(db: TestDatabase) -> dict[str, str]:
    return server_env(DATABASE_URL=db.admin_url)



# --- replay ----------------------------------------------------------------------------------


async def test_replay_at_every_100th_seq_equals_what_a_client_saw(pool: asyncpg.Pool) -> None:
    # The CLI's code path in-process (server.tools.replay feeding crdt.replay), for every 100th seq.
    session = recorded_session()
    doc_id = await store_session(pool, session)
    for seq in range(0, session.head + 1, 100):
        result = await replay_tool.replay(pool, TENANT_A, doc_id, at_seq=seq)
        assert result.document.text() == session.observed[seq], f"seq {seq}"
        nearest = max((s for s in SNAPSHOT_SEQS if s <= seq), default=0)
        assert (result.seq, result.snapshot_seq, result.operations) == (seq, nearest, seq - nearest)
    head = await replay_tool.replay(pool, TENANT_A, doc_id)
    assert (head.seq, head.document.text()) == (session.head, session.observed[-1])
    with pytest.raises(AdminError, match=f"seq 3001 is past the head of document {doc_id} \\(seq 3000\\)"):
        await replay_tool.replay(pool, TENANT_A, doc_id, at_seq=3001)
    with pytest.raises(AdminError, match="--format json is for json and yaml documents; .* is text"):
        replay_tool.as_json(head.doc, head.document.text(), head.seq)


async def test_replay_command_bounds_and_formats(
    pool: asyncpg.Pool, env: dict[str, str], admin: asyncpg.Connection
) -> None:
    session = recorded_session()
    doc_id = await store_session(pool, session)
    doc = str(doc_id)

    # --at-seq: the text exactly as the client saw it, nothing added.
    assert ok(tandem("replay", doc, "--tenant", A, "--at-seq", "1500", env=env)).decode() == session.observed[1500]

    # --at-time: the log prefix written by then (rows of one transaction share its time).
    rows = await admin.fetch(
        'SELECT sequence_number, "timestamp" FROM document_operations WHERE document_id = $1 ORDER BY 1', doc_id
    )
    moment = rows[1233]["timestamp"]
    prefix = next(r["sequence_number"] - 1 for r in rows if r["timestamp"] > moment)
    assert prefix >= 1234
    at_time = ok(tandem("replay", doc, "--tenant", A, "--at-time", moment.astimezone(UTC).isoformat(), env=env))
    assert at_time.decode() == session.observed[prefix]

    # --at-clock: the state vector after seq N (the join of the stored clocks of 1..N) selects
    # operations 1..N when no later operation's own clock is within it (a later deletion of
    # text it holds would be selected too: crdt.replay.rebuild).
    joined = [VectorClock()]
    for op in session.ops:
        joined.append(VectorClock.merge([joined[-1], VectorClock.from_json(op.vector_clock)]))
    seq = next(
        s for s in range(session.head - 1, 2500, -1)
        if not any(joined[s].dominates(VectorClock.from_json(op.vector_clock)) for op in session.ops[s:])
    )
    assert session.observed[seq] != session.observed[-1]
    clock = json.dumps(joined[seq].to_json())
    assert ok(tandem("replay", doc, "--tenant", A, "--at-clock", clock, env=env)).decode() == session.observed[seq]

    # --format update: one binary Yjs update on stdout; the forced progress bar goes to stderr.
    result = tandem("replay", doc, "--tenant", A, "--at-seq", "2500", "--format", "update", "--progress", env=env)
    fresh = Doc()
    fresh[CONTENT] = fresh_text = Text()
    fresh.apply_update(ok(result))
    assert str(fresh_text) == session.observed[2500]
    assert "replay to seq 2500" in result.stderr.decode()

    # Refusals: another tenant's document (RLS hides it), two bounds (a usage error).
    error = failed(tandem("replay", doc, "--tenant", B, env=env))
    assert f"tandem: error: document {doc} not found in tenant {B}" in error
    assert "at most one" in failed(tandem("replay", doc, "--tenant", A, "--at-seq", "1", "--at-clock", clock, env=env), 2)


async def test_replay_prints_json_documents_as_json(pool: asyncpg.Pool, env: dict[str, str]) -> None:
    session = json_session()
    assert session.observed[1:] == ['{"a": 1}', '{"a": 1, "b": [}', '{"a": 1, "b": [1, 2]}']
    doc = str(await store_session(pool, session, content_type="json", snapshots=False))

    printed = ok(tandem("replay", doc, "--tenant", A, "--format", "json", env=env)).decode()
    assert json.loads(printed) == {"a": 1, "b": [1, 2]}
    assert printed == json.dumps({"a": 1, "b": [1, 2]}, indent=2) + "\n"
    error = failed(tandem("replay", doc, "--tenant", A, "--at-seq", "2", "--format", "json", env=env))
    assert f"the text of document {doc} at seq 2 is not valid JSON: Expecting value at line 1 column 16" in error


# --- verify ----------------------------------------------------------------------------------


async def test_verify_passes_and_reports_corrupted_rows(
    pool: asyncpg.Pool, env: dict[str, str], admin: asyncpg.Connection
) -> None:
    session = recorded_session()
    doc_id = await store_session(pool, session)
    doc = str(doc_id)

    report = lines(ok(tandem("replay", doc, "--tenant", A, "--verify", env=env)))
    assert report == [
        f"document {doc}: replaying from seq 1 to the head at seq 3000",
        "snapshot at seq 1000: ok: same text and state vector",
        "snapshot at seq 2000: ok: same text and state vector",
        "operation log: ok: operations 1..3000 all apply",
        "live content: ok: same text as the replay at seq 3000",
        "verified: no differences",
    ]

    # Garbage in one row: the report names it, and the replay stops there.
    original = await admin.fetchval(
        'SELECT "update" FROM document_operations WHERE document_id = $1 AND sequence_number = 1500', doc_id
    )
    await corrupt(admin, doc_id, 1500, b"\x05garbage")
    result = tandem("replay", doc, "--tenant", A, "--verify", env=env)
    report = lines(result.stdout)
    assert report[1] == "snapshot at seq 1000: ok: same text and state vector"
    assert report[2].startswith("operation log: DIFFERS: operation seq 1500 cannot be applied: ")
    assert report[-1] == "verification failed: 1 problem(s)"
    assert f"document {doc} does not match its log" in failed(result)
    # A plain replay across the row fails too, and says how to find it.
    with pytest.raises(AdminError, match=r"operation seq 1500 cannot be applied: .* \(tandem replay --verify checks"):
        await replay_tool.replay(pool, TENANT_A, doc_id, at_seq=1600)
    with pytest.raises(AdminError, match=f"cannot blame document {doc_id}: operation seq 1500 cannot be applied"):
        await replay_tool.blame(pool, TENANT_A, doc_id)

    # A valid update that is not the one recorded: every later comparison differs.
    await corrupt(admin, doc_id, 1500, original)
    stranger = Doc(client_id=4242)
    stranger[CONTENT] = Text("intruder")
    await corrupt(admin, doc_id, 700, stranger.get_update())
    result = tandem("replay", doc, "--tenant", A, "--verify", env=env)
    report = lines(result.stdout)
    assert report[1].startswith("snapshot at seq 1000: DIFFERS: text differs from character ")
    assert "state vectors differ (" in report[1] and "client 4242: replay 8, snapshot 0" in report[1]
    assert report[2].startswith("snapshot at seq 2000: DIFFERS: ")
    assert report[3] == "operation log: ok: operations 1..3000 all apply"
    assert report[4].startswith("live content: DIFFERS: text differs from character ")
    assert report[-1] == "verification failed: 3 problem(s)"
    failed(result)


async def corrupt(admin: asyncpg.Connection, doc_id: uuid.UUID, seq: int, update: bytes) -> None:
    """Rewrite one row behind the application's back (it may only append)."""
    status = await admin.execute(
        'UPDATE document_operations SET "update" = $3 WHERE document_id = $1 AND sequence_number = $2', doc_id, seq, update
    )
    assert status == "UPDATE 1"


# --- history and blame -----------------------------------------------------------------------


async def test_history_lists_operations_with_filters(
    pool: asyncpg.Pool, env: dict[str, str], admin: asyncpg.Connection
) -> None:
    session = recorded_session()
    doc_id = await store_session(pool, session)
    doc = str(doc_id)

    entries = [json.loads(line) for line in lines(ok(tandem("history", doc, "--tenant", A, "--json", env=env)))]
    assert [e["seq"] for e in entries] == list(range(1, session.head + 1))
    expected = [(op.agent_id, op.op_type, len(op.update)) for op in session.ops]
    assert [(e["agent_id"], e["op_type"], e["size_bytes"]) for e in entries] == expected
    stamps = [datetime.fromisoformat(e["timestamp"]) for e in entries]
    assert stamps == sorted(stamps)

    # Agents and a seq range combine; ends included.
    shown = [json.loads(line) for line in lines(ok(tandem(
        "history", doc, "--tenant", A, "--json", "--agent", "bob", "--agent", "carol", "--from-seq", "100", "--to-seq", "400",
        env=env,
    )))]
    assert [e["seq"] for e in shown] == [s for s in range(100, 401) if session.ops[s - 1].agent_id in ("bob", "carol")]

    # A time range and a limit; the table: a header, then seq, time, type, bytes, agent.
    t0, t1 = stamps[499], stamps[1999]
    table = lines(ok(tandem("history", doc, "--tenant", A, "--from-time", t0.isoformat(), "--to-time", t1.isoformat(),
                            "--limit", "5", env=env)))
    assert table[0].split() == ["seq", "time", "type", "bytes", "agent"]
    first = next(i for i, s in enumerate(stamps) if s >= t0)
    assert [row.split() for row in table[1:]] == [
        [str(i + 1), stamps[i].isoformat(), session.ops[i].op_type, str(len(session.ops[i].update)), session.ops[i].agent_id]
        for i in range(first, first + 5)
    ]


async def test_blame_attributes_every_span_to_its_agent(pool: asyncpg.Pool, env: dict[str, str]) -> None:
    session = recorded_session()
    doc = str(await store_session(pool, session))

    spans = [json.loads(line) for line in lines(ok(tandem("blame", doc, "--tenant", A, "--json", env=env)))]
    text = session.observed[-1]
    assert "".join(s["text"] for s in spans) == text
    assert len({s["agent_id"] for s in spans}) == 4
    for span in spans:
        assert {AUTHOR[ch] for ch in span["text"]} == {span["agent_id"]}, span
        assert text[span["start"] : span["start"] + len(span["text"])] == span["text"]

    # The table: one row per line of text, with the agents whose characters it holds.
    table = lines(ok(tandem("blame", doc, "--tenant", A, "--at-seq", "1200", env=env)))
    text_lines = session.observed[1200].split("\n")
    if text_lines[-1] == "":
        text_lines.pop()
    assert len(table) == len(text_lines)
    for number, (row, line) in enumerate(zip(table, text_lines), start=1):
        agents, shown_number, *rest = row.split(maxsplit=2)
        assert (int(shown_number), rest[0] if rest else "") == (number, line)
        assert set(agents.split(",")) == ({AUTHOR[ch] for ch in line} or {"dave"})


# --- pure pieces -----------------------------------------------------------------------------


def test_blame_lines_list_agents_per_line() -> None:
    spans = [Span("ab", "alice"), Span("c\n\nd", "bob"), Span("e\n", "alice"), Span("tail", None)]
    assert replay_output.blame_lines(spans) == [
        "alice,bob   1  abc",
        "bob         2  ",
        "bob,alice   3  de",
        "(snapshot)  4  tail",
    ]
    assert list(replay_output.blame_json(spans))[2] == {"agent_id": "alice", "start": 6, "text": "e\n"}


def test_yaml_documents_print_as_json_and_parse_errors_are_clear() -> None:
    doc = replay_tool.DocumentRow(uuid.UUID(int=1), "yaml", 3, None)
    assert json.loads(replay_tool.as_json(doc, "a: 1\nb: [x, y]\nwhen: 2024-05-01\n", 3)) == {
        "a": 1, "b": ["x", "y"], "when": "2024-05-01"
    }
    with pytest.raises(AdminError, match=r"at seq 3 is not valid YAML: expected .* at line 2 column 5"):
        replay_tool.as_json(doc, "a: [1,\nb: 2: 3\n", 3)


def test_command_line_values() -> None:
    assert replay_output.parse_time("2024-05-01T10:00:00Z") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert replay_output.parse_time("2024-05-01 10:00") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert replay_output.parse_clock('{"7": 3}') == VectorClock({7: 3})
    for bad_time in ("yesterday", "2024-13-01"):
        with pytest.raises(ValueError, match="ISO 8601"):
            replay_output.parse_time(bad_time)
    for bad_clock in ("[1]", '{"7": "x"}', "{"):
        with pytest.raises(ValueError, match="JSON object"):
            replay_output.parse_clock(bad_clock)
