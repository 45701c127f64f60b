"""The session state table against docs/protocol.md section 4: transitions and legality rules,
what each state accepts, the closing sequence, the rate limit and the invalid-update budget.

No network, no database.
"""

from __future__ import annotations

import json
import uuid

import pytest

from server.core.errors import ErrorCode
from server.wire import protocol as p
from tests.protocol_helpers import (
    DOC,
    VALID,
    WS,
    code,
    frame,
    hello,
    ready,
    section,
    table,
)

# --- 4: the session state table -----------------------------------------------------------------


def test_transition_table_matches_docs():
    # docs/protocol.md#42-transitions
    rows = table(section("4.2 Transitions"))
    documented = {(p.ConnState(code(f)), p.ConnEvent(code(e))): p.ConnState(code(t)) for f, e, t in rows}
    assert documented == p.TRANSITIONS


def test_legality_rules_match_docs_and_cover_every_type():
    # docs/protocol.md#43-when-each-request-is-legal
    rows = table(section("4.3 When each request is legal"))
    assert {code(t): p.Rule(code(r)) for t, r in rows} == p.RULES
    assert set(p.RULES) == set(p.CLIENT_MESSAGES)


def test_doc_update_before_doc_open_gets_doc_not_open():
    # docs/protocol.md#43-when-each-request-is-legal (rule `open`)
    session = ready()
    err = session.receive(json.dumps(VALID["doc.update"]), now=0.0)
    assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.DOC_NOT_OPEN and err.re == 7
    for type_ in ("doc.close", "doc.resync"):
        err = session.receive(json.dumps(VALID[type_]), now=0.0)
        assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.DOC_NOT_OPEN


def test_doc_requests_are_legal_while_open_and_not_after_close():
    # docs/protocol.md#43-when-each-request-is-legal (rules `open`, `open_slot`)
    session = ready()
    assert isinstance(session.receive(json.dumps(VALID["doc.open"]), now=0.0), p.DocOpen)
    session.joined(uuid.UUID(WS))
    session.opened(uuid.UUID(DOC), uuid.UUID(WS))
    assert isinstance(session.receive(json.dumps(VALID["doc.update"]), now=0.0), p.DocUpdate)
    assert isinstance(session.receive(json.dumps(VALID["doc.resync"]), now=0.0), p.DocResync)
    session.closed_doc(uuid.UUID(DOC))
    err = session.receive(json.dumps(VALID["doc.update"]), now=0.0)
    assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.DOC_NOT_OPEN


def test_workspace_requests_need_a_joined_workspace():
    # docs/protocol.md#43-when-each-request-is-legal (rule `joined`)
    session = ready()
    for type_ in ("doc.list", "doc.create", "workspace.leave"):
        err = session.receive(json.dumps(VALID[type_]), now=0.0)
        assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.NOT_MEMBER, type_
    session.joined(uuid.UUID(WS))
    for type_ in ("doc.list", "doc.create", "workspace.leave"):
        assert isinstance(session.receive(json.dumps(VALID[type_]), now=0.0), p.CLIENT_MESSAGES[type_])


def test_doc_open_checks_the_workspace_after_lookup():
    # docs/protocol.md#43-when-each-request-is-legal (rule `open_slot`: then `not_member`)
    session = ready()
    err = session.check_joined(uuid.UUID(WS), re=6)
    assert err == p.ProtocolError(ErrorCode.NOT_MEMBER, 6)
    with pytest.raises(p.LocalProtocolError):
        session.opened(uuid.UUID(DOC), uuid.UUID(WS))
    session.joined(uuid.UUID(WS))
    assert session.check_joined(uuid.UUID(WS)) is None


def test_leaving_a_workspace_closes_its_documents():
    # docs/protocol.md#54-workspaces (workspace.leave: closed_doc_ids)
    session = ready()
    other_ws, other_doc = uuid.uuid4(), uuid.uuid4()
    session.joined(uuid.UUID(WS))
    session.joined(other_ws)
    session.opened(uuid.UUID(DOC), uuid.UUID(WS))
    session.opened(other_doc, other_ws)
    assert session.left(uuid.UUID(WS)) == [uuid.UUID(DOC)]
    assert session.docs == {other_doc: other_ws} and session.workspaces == {other_ws}
    err = session.receive(json.dumps(VALID["doc.list"]), now=0.0)
    assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.NOT_MEMBER


def test_open_docs_and_joined_workspaces_are_bounded():
    # docs/protocol.md#7-limits (max_open_docs, max_joined_workspaces): limit_exceeded
    session = ready(max_open_docs=1, max_joined_workspaces=1)
    session.joined(uuid.UUID(WS))
    session.opened(uuid.UUID(DOC), uuid.UUID(WS))
    assert isinstance(session.receive(json.dumps(VALID["doc.open"]), now=0.0), p.DocOpen)  # reopen is fine
    err = session.receive(frame(type="doc.open", id=1, doc_id=str(uuid.uuid4())), now=0.0)
    assert err == p.ProtocolError(ErrorCode.LIMIT_EXCEEDED, 1, {"limit": "max_open_docs", "value": 1})
    assert isinstance(session.receive(json.dumps(VALID["workspace.join"]), now=0.0), p.WorkspaceJoin)
    err = session.receive(frame(type="workspace.join", id=2, workspace_id=str(uuid.uuid4())), now=0.0)
    assert err == p.ProtocolError(ErrorCode.LIMIT_EXCEEDED, 2, {"limit": "max_joined_workspaces", "value": 1})


def test_hello_is_legal_only_as_the_first_frame():
    # docs/protocol.md#25-version-negotiation and #43 (rule `first`)
    session = ready()
    msg = session.receive(json.dumps(VALID["hello"]), now=0.0)
    assert isinstance(msg, p.Hello) and session.protocol == 1
    err = session.receive(json.dumps(VALID["hello"]), now=0.0)
    assert err == p.ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, 1)
    late = ready()
    assert isinstance(late.receive(json.dumps(VALID["ping"]), now=0.0), p.Ping)
    err = late.receive(json.dumps(VALID["hello"]), now=0.0)
    assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.UNEXPECTED_MESSAGE


def test_unsupported_version_closes_with_4426():
    # docs/protocol.md#25-version-negotiation
    session = ready()
    err = session.receive(frame(type="hello", id=1, protocol=2), now=0.0)
    assert err == p.ProtocolError(ErrorCode.UNSUPPORTED_VERSION, 1, {"supported": [1]})
    closing = session.fail(err)
    assert closing is not None and closing.code == 4426 and closing.reason == "unsupported_version"
    assert json.loads(closing.frames[0]) == {
        "type": "error", "re": 1, "code": "unsupported_version",
        "message": "This protocol version is not supported.", "details": {"supported": [1]},
    }  # fmt: skip
    assert session.conn_state is p.ConnState.CLOSING


def test_closing_session_discards_frames_and_closes_once():
    # docs/protocol.md#41-connection-states (closing) and #44-the-closing-sequence
    session = ready()
    closing = session.fail(ErrorCode.SLOW_CONSUMER)
    assert closing is not None and (closing.code, closing.reason) == (4408, "slow_consumer")
    assert session.receive(json.dumps(VALID["ping"]), now=0.0) is None
    assert session.fail(ErrorCode.TOKEN_EXPIRED) is None  # a second reason changes nothing
    session.transport_closed()
    session.transport_closed()
    assert session.conn_state is p.ConnState.CLOSED


def test_a_server_fault_closes_with_1011_and_the_whole_closing_sequence():
    # docs/protocol.md#44: a failure of the session loop or its update pipeline
    session = ready()
    closing = session.fail(ErrorCode.INTERNAL_ERROR)
    assert closing is not None and (closing.code, closing.reason) == (1011, "internal_error")
    assert [json.loads(f)["type"] for f in closing.frames] == ["error", "session.closing"]
    assert json.loads(closing.frames[1])["code"] == 1011


def test_shutdown_closes_with_1012_service_restart():
    # docs/protocol.md#8-error-codes: server_shutdown, after the session's updates were settled
    closing = ready().fail(ErrorCode.SERVER_SHUTDOWN)
    assert closing is not None and (closing.code, closing.reason) == (1012, "server_shutdown")


def test_refused_token_goes_from_connecting_to_closing():
    # docs/protocol.md#22-refusal-accept-then-close-with-a-reason
    session = p.ProtocolSession(p.Limits())
    closing = session.fail(ErrorCode.UNAUTHORIZED)
    assert closing is not None and (closing.code, closing.reason) == (4401, "unauthorized")
    assert [json.loads(f)["type"] for f in closing.frames] == ["error", "session.closing"]
    assert session.conn_state is p.ConnState.CLOSING


def test_driving_the_session_wrongly_raises_local_protocol_error():
    # docs/protocol.md#42-transitions: any other transition is a server bug
    session = p.ProtocolSession(p.Limits())
    with pytest.raises(p.LocalProtocolError):
        session.receive(json.dumps(VALID["ping"]), now=0.0)  # before accept
    session.accept(hello())
    with pytest.raises(p.LocalProtocolError):
        session.accept(hello())
    with pytest.raises(p.LocalProtocolError):
        session.fail(ErrorCode.NOT_FOUND)  # does not close the session
    session.transport_closed()
    with pytest.raises(p.LocalProtocolError):
        session.receive(json.dumps(VALID["ping"]), now=0.0)


def test_rate_limit_refuses_frames_over_the_bucket_and_refills():
    # docs/protocol.md#7-limits (max_messages_per_s, max_message_burst) and #43 step 2
    session = ready(max_messages_per_s=10.0, max_message_burst=3)
    for i in range(3):
        assert isinstance(session.receive(frame(type="ping", id=i), now=100.0), p.Ping)
    err = session.receive(frame(type="ping", id="late"), now=100.0)
    assert err == p.ProtocolError(ErrorCode.RATE_LIMITED, "late", {"retry_after_ms": 100})
    err = session.receive("not json", now=100.05)  # bad frames take tokens too
    assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.RATE_LIMITED
    assert isinstance(session.receive(frame(type="ping"), now=100.2), p.Ping)


def test_frames_refused_at_step_one_take_no_token():
    # docs/protocol.md#43-when-each-request-is-legal: step 1 comes before the rate step
    session = ready(max_messages_per_s=1.0, max_message_burst=1, max_frame_bytes=64)
    for _ in range(5):
        assert session.receive(b"binary", now=0.0).code is ErrorCode.UNSUPPORTED_FRAME
        assert session.receive(frame(type="ping", id="x" * 100), now=0.0).code is ErrorCode.FRAME_TOO_LARGE
    assert isinstance(session.receive(frame(type="ping"), now=0.0), p.Ping)


def test_invalid_update_budget_closes_at_the_limit():
    # docs/protocol.md#7-limits (max_invalid_updates): the N-th invalid update closes with 4422
    session = ready(max_invalid_updates=3)
    assert session.invalid_update(re=1).code is ErrorCode.INVALID_UPDATE
    assert session.invalid_update(re=2).code is ErrorCode.INVALID_UPDATE
    last = session.invalid_update(re=3)
    assert last == p.ProtocolError(ErrorCode.TOO_MANY_INVALID_UPDATES, 3)
    closing = session.fail(last)
    assert closing is not None and closing.code == 4422
