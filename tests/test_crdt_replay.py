"""crdt.replay: rebuilding from the log (with snapshots and bounds), verification and blame.

Pure tests: simulated agents (real pycrdt documents, seeded RNG) edit concurrently and a
server-side `Document` validates each update and appends it to an in-memory log, the way the
store will. Replays of that log must reproduce what the live document held.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from pycrdt import Doc, Text

from crdt.clock import VectorClock
from crdt.document import CONTENT, CorruptUpdate, Document
from crdt.operations import Operation, Origin, Snapshot
from crdt.replay import ReplayError, Span, blame, rebuild, verify

DOC_ID = "doc-1"
EPOCH = datetime(2024, 5, 1, tzinfo=UTC)


@dataclass
class Agent:
    agent_id: str
    alphabet: str
    doc: Doc = field(default_factory=Doc)
    seen: int = 0  # how much of the log this agent has pulled

    def __post_init__(self) -> None:
        self.doc[CONTENT] = Text()

    @property
    def text(self) -> Text:
        return self.doc[CONTENT]


@dataclass
class Log:
    """The server side: one Document validating updates, and the rows it appended."""

    document: Document = field(default_factory=Document)
    ops: list[Operation] = field(default_factory=list)
    texts: dict[int, str] = field(default_factory=dict)
    clocks: dict[int, VectorClock] = field(default_factory=dict)

    def append(self, agent: Agent, update: bytes) -> None:
        applied = self.document.apply(update, Origin.CLIENT)
        if not (applied.changed or applied.pending):
            return  # e.g. deleting text someone else already deleted: nothing to store
        seq = len(self.ops) + 1
        self.ops.append(
            Operation(
                doc_id=DOC_ID,
                seq=seq,
                agent_id=agent.agent_id,
                op_type=applied.op_type,
                vector_clock=applied.op_clock.to_json(),
                update=update,
                created_at=EPOCH + timedelta(seconds=seq),
            )
        )
        self.texts[seq] = self.document.text()
        self.clocks[seq] = applied.clock


def pull(agent: Agent, log: Log) -> None:
    """Bring an agent up to date with the log (what the fan-out would deliver)."""
    with agent.doc.transaction():
        for op in log.ops[agent.seen :]:
            agent.doc.apply_update(op.update)
    agent.seen = len(log.ops)


def edit(agent: Agent, rng: random.Random, *, deletes: bool = True) -> bytes:
    """One random edit at a character boundary (pycrdt offsets are UTF-8 bytes)."""
    current = str(agent.text)
    captured: list[bytes] = []
    subscription = agent.doc.observe(lambda event: captured.append(event.update))
    try:
        if deletes and len(current) > 8 and rng.random() < 0.35:
            start = rng.randrange(len(current) - 3)
            stop = start + rng.randrange(1, 4)
            offset = len(current[:start].encode())
            del agent.text[offset : offset + len(current[start:stop].encode())]
        else:
            at = rng.randrange(len(current) + 1)
            agent.text.insert(len(current[:at].encode()), rng.choice(agent.alphabet) * rng.randrange(1, 4))
    finally:
        agent.doc.unobserve(subscription)
    assert len(captured) == 1
    return captured[0]


def simulate(n_ops: int, seed: int, *, alphabets: tuple[str, ...] = ("a", "b", "c", "d"), deletes: bool = True) -> tuple[Log, list[Agent]]:
    """Agents edit concurrently: each step one agent maybe pulls, then edits and pushes."""
    rng = random.Random(seed)
    agents = [Agent(f"agent-{k}", alphabet, Doc(client_id=100 + k)) for k, alphabet in enumerate(alphabets)]
    for agent in agents:
        agent.doc[CONTENT] = Text()
    log = Log()
    for _ in range(n_ops):
        agent = rng.choice(agents)
        if rng.random() < 0.4:
            pull(agent, log)
        log.append(agent, edit(agent, rng, deletes=deletes))
    return log, agents


@pytest.fixture(scope="module")
def history() -> Log:
    log, _ = simulate(3000, seed=1234)
    return log


# rebuild --------------------------------------------------------------------------------------


def test_rebuild_at_every_kth_seq_equals_the_live_document(history: Log) -> None:
    for seq in [*range(1, len(history.ops) + 1, 97), len(history.ops)]:
        rebuilt = rebuild(history.ops, until_seq=seq)
        assert rebuilt.text() == history.texts[seq], seq
        assert rebuilt.clock() == history.clocks[seq], seq


def test_full_rebuild_equals_the_live_document(history: Log) -> None:
    rebuilt = rebuild(history.ops)
    assert verify(history.document, rebuilt)
    assert rebuilt.text() == history.document.text()
    assert rebuild(iter(history.ops), batch_ops=1).text() == rebuilt.text()


def test_snapshot_plus_tail_equals_rebuild_from_scratch(history: Log) -> None:
    n = len(history.ops)
    for at in (1, 500, n // 2, n - 1, n):
        snapshot = Snapshot(DOC_ID, at, rebuild(history.ops, until_seq=at).encode_state())
        tail = history.ops[at:]
        for seq in (at, (at + n) // 2, n):
            expected = rebuild(history.ops, until_seq=seq)
            assert verify(expected, rebuild(tail, snapshot, until_seq=seq)), (at, seq)
            # The store may also hand over the whole log; rows inside the snapshot are skipped.
            assert verify(expected, rebuild(history.ops, snapshot, until_seq=seq)), (at, seq)


def test_until_time_stops_at_the_first_later_row(history: Log) -> None:
    bound = EPOCH + timedelta(seconds=1500, milliseconds=500)
    assert verify(rebuild(history.ops, until_seq=1500), rebuild(history.ops, until_time=bound))
    assert rebuild(history.ops, until_time=EPOCH).text() == ""


def test_until_clock_includes_exactly_the_dominated_operations(history: Log) -> None:
    clock = history.clocks[1200]
    expected_ops = [op for op in history.ops if clock.dominates(op.clock)]
    assert len(expected_ops) >= 1200  # every operation up to 1200, plus dominated later deletions
    rebuilt = rebuild(history.ops, until_clock=clock)
    assert rebuilt.clock() == clock
    document = Document()
    for op in expected_ops:
        document.apply(op.update)
    assert verify(document, rebuilt)
    assert verify(rebuilt, rebuild(history.ops, until_clock=clock.to_state_vector()))


def test_until_clock_of_an_agent_reproduces_what_it_saw() -> None:
    # Without deletions a state vector pins the content exactly: rebuilding at an agent's
    # clock gives that agent's text, even though the log holds concurrent edits it never saw.
    rng = random.Random(99)
    log, agents = simulate(0, seed=0)
    views: list[tuple[VectorClock, str]] = []
    for step in range(600):
        agent = rng.choice(agents)
        if rng.random() < 0.3:
            pull(agent, log)
        log.append(agent, edit(agent, rng, deletes=False))
        if step % 50 == 49:
            views.append((VectorClock.from_state_vector(agent.doc.get_state()), str(agent.text)))
    for clock, text in views:
        assert rebuild(log.ops, until_clock=clock).text() == text


def test_until_clock_refuses_a_snapshot_it_does_not_dominate(history: Log) -> None:
    snapshot = Snapshot(DOC_ID, 2000, rebuild(history.ops, until_seq=2000).encode_state())
    with pytest.raises(ReplayError, match="snapshot"):
        rebuild(history.ops, snapshot, until_clock=history.clocks[1000])


# replay errors ----------------------------------------------------------------------------------


def test_a_gap_in_the_log_raises(history: Log) -> None:
    with pytest.raises(ReplayError, match="gap"):
        rebuild(history.ops[:10] + history.ops[11:20])
    snapshot = Snapshot(DOC_ID, 10, rebuild(history.ops, until_seq=10).encode_state())
    with pytest.raises(ReplayError, match="gap"):
        rebuild(history.ops[11:20], snapshot)


def test_out_of_order_rows_raise(history: Log) -> None:
    with pytest.raises(ReplayError, match="order"):
        rebuild([history.ops[0], history.ops[1], history.ops[1]])


def test_rows_of_another_document_raise(history: Log) -> None:
    stray = Operation("doc-2", 2, "x", "insert", {}, history.ops[1].update)
    with pytest.raises(ReplayError, match="doc-2"):
        rebuild([history.ops[0], stray])


def test_bounds_before_the_snapshot_raise(history: Log) -> None:
    snapshot = Snapshot(DOC_ID, 50, rebuild(history.ops, until_seq=50).encode_state(), EPOCH + timedelta(seconds=50))
    with pytest.raises(ReplayError):
        rebuild(history.ops, snapshot, until_seq=49)
    with pytest.raises(ReplayError):
        rebuild(history.ops, snapshot, until_time=EPOCH)


def test_until_time_needs_timestamps(history: Log) -> None:
    undated = [Operation(DOC_ID, 1, "a", "insert", {}, history.ops[0].update)]
    with pytest.raises(ReplayError, match="created_at"):
        rebuild(undated, until_time=EPOCH)


def test_a_corrupt_row_raises_corrupt_update(history: Log) -> None:
    broken = Operation(DOC_ID, 3, "a", "insert", {}, b"\x01\x02\x03")
    with pytest.raises(CorruptUpdate):
        rebuild([*history.ops[:2], broken])


def test_verify_reports_what_differs(history: Log) -> None:
    early, late = rebuild(history.ops, until_seq=10), rebuild(history.ops, until_seq=11)
    result = verify(early, late)
    assert not result and not result.state_vector_equal
    assert verify(early.encode_state(), early)


# blame -----------------------------------------------------------------------------------------


def check_blame(spans: list[Span], text: str, letters: dict[str | None, str]) -> None:
    assert "".join(span.text for span in spans) == text
    for span in spans:
        assert set(span.text) <= set(letters[span.agent_id]), span
    for left, right in zip(spans, spans[1:]):
        assert left.agent_id != right.agent_id  # adjacent runs are merged


def test_blame_attributes_every_span_to_its_author() -> None:
    # Each agent types only its own letters (multi-byte ones included), so the author of every
    # character is known from the character itself.
    alphabets = ("a", "é", "😀", "dD")
    log, agents = simulate(1500, seed=7, alphabets=alphabets)
    letters: dict[str | None, str] = {agent.agent_id: agent.alphabet for agent in agents}
    spans = blame(log.ops)
    check_blame(spans, log.document.text(), letters)
    assert {span.agent_id for span in spans} == set(letters)


def test_blame_from_a_snapshot_leaves_earlier_text_unattributed() -> None:
    log, agents = simulate(800, seed=8, alphabets=("x", "y"))
    snapshot = Snapshot(DOC_ID, 400, rebuild(log.ops, until_seq=400).encode_state())
    letters: dict[str | None, str] = {agent.agent_id: agent.alphabet for agent in agents}
    letters[None] = "xy"
    spans = blame(log.ops[400:], snapshot)
    check_blame(spans, log.document.text(), letters)
    assert None in {span.agent_id for span in spans}
    survivors = sum(len(span.text) for span in spans if span.agent_id is None)
    assert 0 < survivors <= len(rebuild(log.ops, until_seq=400).text())
