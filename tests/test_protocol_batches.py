"""Batched frames (docs/protocol.md section 3): a JSON array of messages, each judged as a frame
of its own, opted into by the client's hello; and the presence batches a hello asks for.

No network, no database.
"""

from __future__ import annotations

import uuid

import pytest

from server.core.errors import ErrorCode
from server.wire import protocol as p
from tests.protocol_helpers import frame, hello, ready, section


def batching() -> p.ProtocolSession:
    """A ready session whose hello asked for batched frames (docs/protocol.md#3)."""
    session = ready()
    assert isinstance(session.receive(frame(type="hello", id=0, protocol=1, batch=True), now=0.0), p.Hello)
    return session


def test_hello_asks_for_presence_batches_with_a_strict_boolean():
    # docs/protocol.md#57 (delivery): opt-in, off by default; "true" is not a boolean
    session = p.ProtocolSession(p.Limits())
    session.accept(hello())
    assert session.presence_batch is False
    msg = session.receive(frame(type="hello", id=0, protocol=1, presence_batch=True), now=0.0)
    assert isinstance(msg, p.Hello) and session.presence_batch is True and session.batch is False
    other = p.ProtocolSession(p.Limits())
    other.accept(hello())
    err = other.receive(frame(type="hello", id=0, protocol=1, presence_batch="true"), now=0.0)
    assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.INVALID_MESSAGE and other.presence_batch is False


def test_a_batched_frame_is_each_of_its_messages_in_order():
    # docs/protocol.md#3 (batched frames, client to server)
    session = batching()
    batch = "[" + ",".join([frame(type="ping", id=1), frame(type="ping", id="two"), frame(type="ping")]) + "]"
    assert session.receive_frame(batch, now=0.0) == [p.Ping(id=1), p.Ping(id="two"), p.Ping()]
    assert session.receive_frame(" \n" + batch, now=0.0) == [p.Ping(id=1), p.Ping(id="two"), p.Ping()]
    assert session.receive_frame(frame(type="ping", id=4), now=0.0) == [p.Ping(id=4)]  # one message still works


def test_a_bad_message_in_a_batch_gets_its_own_error_and_the_others_pass():
    # docs/protocol.md#3: each element is judged as if it were a frame of its own
    session = batching()
    elements = [
        frame(type="ping", id=1), frame(type="nope", id=2), frame(type="ping", id=3, extra=1), "17",
        frame(type="doc.update", id=5, doc_id=str(uuid.uuid4()), update="AAA="),
        frame(type="hello", id=6, protocol=1), frame(type="ping", id=7),
    ]  # fmt: skip
    results = session.receive_frame("[" + ",".join(elements) + "]", now=0.0)
    assert results[0] == p.Ping(id=1)
    assert results[1] == p.ProtocolError(ErrorCode.UNKNOWN_TYPE, 2)
    assert results[2].code is ErrorCode.INVALID_MESSAGE and results[2].re == 3
    assert results[3].code is ErrorCode.INVALID_MESSAGE and results[3].re is None
    assert results[4] == p.ProtocolError(ErrorCode.DOC_NOT_OPEN, 5)  # the state rules apply per message
    assert results[5] == p.ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, 6)  # a hello is never first in a batch
    assert results[6] == p.Ping(id=7)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("[]", ErrorCode.INVALID_MESSAGE),
        ("[" + ",".join([frame(type="ping")] * (p.MAX_BATCH_MESSAGES + 1)) + "]", ErrorCode.INVALID_MESSAGE),
        ('[{"type": "ping"},', ErrorCode.BAD_JSON),
        ("[" + frame(type="ping", id="x" * 5000) + "]", ErrorCode.FRAME_TOO_LARGE),
    ],
)
def test_a_batch_that_is_empty_too_long_malformed_or_oversized_is_one_error(text, code):
    session = ready(max_frame_bytes=4096)
    session.receive(frame(type="hello", protocol=1, batch=True), now=0.0)
    results = session.receive_frame(text, now=0.0)
    assert len(results) == 1 and results[0].code is code and results[0].re is None
    assert session.receive_frame("[" + frame(type="ping", id=1) + "]", now=0.0) == [p.Ping(id=1)]


def test_the_batch_bound_is_the_documented_one():
    assert f"JSON array of 1 to {p.MAX_BATCH_MESSAGES} messages" in section("3. Framing and encoding")


def test_an_array_without_batches_asked_for_is_invalid_message():
    session = ready()
    results = session.receive_frame("[" + frame(type="ping", id=1) + "]", now=0.0)
    assert len(results) == 1 and results[0].code is ErrorCode.INVALID_MESSAGE


def test_each_message_of_a_batch_takes_a_rate_token():
    # docs/protocol.md#7-limits: the rate limit counts messages, not frames
    session = ready(max_messages_per_s=10.0, max_message_burst=3)
    session.receive(frame(type="hello", protocol=1, batch=True), now=100.0)  # takes one token
    results = session.receive_frame("[" + ",".join(frame(type="ping", id=i) for i in range(4)) + "]", now=100.0)
    assert results[:2] == [p.Ping(id=0), p.Ping(id=1)]
    assert [r.code for r in results[2:]] == [ErrorCode.RATE_LIMITED] * 2 and [r.re for r in results[2:]] == [2, 3]


def test_a_closing_session_discards_batched_frames_too():
    session = batching()
    session.fail(ErrorCode.SLOW_CONSUMER)
    assert session.receive_frame("[" + frame(type="ping") + "]", now=0.0) == []
