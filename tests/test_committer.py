"""How the committer reports each queued operation's outcome (server/documents/committer.py: `Pending`).

The batches themselves are tested against PostgreSQL in tests/test_store_sequence.py and end to
end; this is the reporting contract the rooms rely on: exactly one call per operation."""

from __future__ import annotations

import uuid

from server.core.errors import ErrorCode, TandemError
from server.db import store
from server.documents.committer import Committer, Pending


def pending(calls: list[tuple[int | None, BaseException | None]]) -> Pending:
    op = store.NewOperation("agent", "insert", "{}", b"x")
    return Pending(uuid.uuid4(), uuid.uuid4(), op, lambda seq, exc: calls.append((seq, exc)))


def test_the_first_decision_is_reported_once() -> None:
    calls: list[tuple[int | None, BaseException | None]] = []
    p = pending(calls)
    p.decide(7)
    Committer._fail([p], RuntimeError("later failure"))  # a later failure does not override it
    p.report()
    p.report()
    assert calls == [(7, None)]


def test_an_operation_without_an_outcome_is_reported_unavailable() -> None:
    # A batch cut short mid-commit (stop cancelled its writer): the caller hears `unavailable`,
    # since the append may or may not have been stored, and sending it again is harmless.
    calls: list[tuple[int | None, BaseException | None]] = []
    p = pending(calls)
    p.report()
    assert len(calls) == 1 and calls[0][0] is None
    assert isinstance(calls[0][1], TandemError) and calls[0][1].code is ErrorCode.UNAVAILABLE


def test_a_failing_callback_does_not_keep_the_rest_of_the_batch_from_hearing() -> None:
    calls: list[tuple[int | None, BaseException | None]] = []

    def broken(seq: int | None, exc: BaseException | None) -> None:
        raise ValueError("a caller's bug")

    first = Pending(uuid.uuid4(), uuid.uuid4(), store.NewOperation("a", "insert", "{}", b"x"), broken)
    second = pending(calls)
    for p, seq in ((first, 1), (second, 2)):
        p.decide(seq)
    for p in (first, second):
        p.report()
    assert calls == [(2, None)]
