"""The sans-I/O protocol core against docs/protocol.md: frames in, messages or errors out.

No network, no database. Tables marked "(checked by tests)" in docs/protocol.md are parsed
here and compared with the code, so the document and the code cannot drift apart.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from server.wire import protocol as p
from server.core.errors import ErrorCode, TandemError, error_frame
from server.core.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
MAX = 1_048_576
WS = "3d6f0a52-8a47-4d0e-9a43-2f1b7c6e5a10"
DOC = "9a7e3c1d-2b4f-4e6a-8c0d-1f2e3a4b5c6d"
HELLO_UPDATE = "AQHpBwAEAQdjb250ZW50BUhlbGxvAA=="  # a real Yjs update: "Hello" typed into a Text


# --- reading docs/protocol.md --------------------------------------------------------------------


def section(heading: str) -> str:
    """The text under the heading that starts with `heading`, up to the next heading of its level."""
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(rf"^(#+) {re.escape(heading)}.*$", text, re.M)
    assert match, f"docs/protocol.md has no heading {heading!r}"
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{len(match.group(1))}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def table(text: str) -> list[list[str]]:
    """Body rows of the first markdown table in `text`, as stripped cells."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    assert len(rows) > 2 and set(rows[1][0]) <= {"-", " "}, "expected a header and separator row"
    return rows[2:]


def code(cell: str) -> str:
    found = re.findall(r"`([^`]+)`", cell)
    assert len(found) == 1, cell
    return found[0]


def frame(**fields: object) -> str:
    return json.dumps(fields)


# --- 5.1: every message type parses from a valid frame -------------------------------------------

VALID = {
    "hello": {"type": "hello", "id": 1, "protocol": 1, "client": "test/1"},
    "ping": {"type": "ping", "id": "p-1"},
    "workspace.create": {"type": "workspace.create", "id": 2, "name": "Design", "workspace_type": "review", "visibility": "team", "max_members": 5},
    "workspace.list": {"type": "workspace.list"},
    "workspace.join": {"type": "workspace.join", "id": 3, "workspace_id": WS},
    "workspace.leave": {"type": "workspace.leave", "id": 4, "workspace_id": WS},
    "doc.create": {"type": "doc.create", "workspace_id": WS, "title": "Plan", "content_type": "code", "language": "python"},
    "doc.list": {"type": "doc.list", "workspace_id": WS},
    "doc.open": {"type": "doc.open", "id": 6, "doc_id": DOC, "state_vector": "AA=="},
    "doc.close": {"type": "doc.close", "doc_id": DOC},
    "doc.update": {"type": "doc.update", "id": 7, "doc_id": DOC, "update": HELLO_UPDATE},
    "doc.resync": {"type": "doc.resync", "doc_id": DOC, "state_vector": "AekHBQ=="},
    "presence.list": {"type": "presence.list", "id": 9, "workspace_id": WS},
    "awareness.set": {"type": "awareness.set", "id": 10, "workspace_id": WS, "doc_id": DOC, "state": {"cursor": {"anchor": 3}}},
    # section 12: coordination
    "lock.acquire": {"type": "lock.acquire", "id": 11, "workspace_id": WS, "doc_id": DOC, "ttl_ms": 5000},
    "lock.renew": {"type": "lock.renew", "workspace_id": WS, "name": "deploy", "fence": 7, "ttl_ms": 5000},
    "lock.release": {"type": "lock.release", "workspace_id": WS, "name": "deploy", "fence": 7},
    "lock.list": {"type": "lock.list", "workspace_id": WS},
    "state.get": {"type": "state.get", "workspace_id": WS},
    "state.update": {"type": "state.update", "workspace_id": WS, "expected_version": 3, "mode": "patch",
                     "patch": [{"op": "add", "path": "/a", "value": 1}], "on_conflict": "merge"},
    "task.create": {"type": "task.create", "workspace_id": WS, "title": "Review", "priority": "high",
                    "parameters": {"pr": 12}, "timeout_s": 60, "assign_to": "reviewer"},
    "task.assign": {"type": "task.assign", "task_id": DOC, "agent_id": "worker-1"},
    "task.accept": {"type": "task.accept", "task_id": DOC},
    "task.reject": {"type": "task.reject", "task_id": DOC, "reason": "busy"},
    "task.start": {"type": "task.start", "task_id": DOC},
    "task.complete": {"type": "task.complete", "task_id": DOC, "result": {"ok": True}},
    "task.fail": {"type": "task.fail", "task_id": DOC, "error": "tests failed"},
    "task.cancel": {"type": "task.cancel", "task_id": DOC},
    "task.delegate": {"type": "task.delegate", "task_id": DOC, "agent_id": "worker-2", "delegation_type": "failover"},
    "task.get": {"type": "task.get", "task_id": DOC},
    "task.list": {"type": "task.list", "workspace_id": WS, "assigned_to": "worker-1", "status": ["assigned", "accepted"]},
    "task.stats": {"type": "task.stats", "workspace_id": WS},
    "member.add": {"type": "member.add", "workspace_id": WS, "agent_id": "b", "role": "viewer"},
    "member.remove": {"type": "member.remove", "workspace_id": WS, "agent_id": "b"},
    "member.update": {"type": "member.update", "workspace_id": WS, "agent_id": "b", "permissions": ["read"]},
    "member.list": {"type": "member.list", "workspace_id": WS},
}


def test_valid_frames_cover_every_client_message_type():
    # docs/protocol.md#51-message-table
    assert set(VALID) == set(p.CLIENT_MESSAGES)


@pytest.mark.parametrize("type_", sorted(VALID))
def test_every_client_message_parses_from_a_valid_frame(type_):
    # docs/protocol.md#51-message-table
    msg = p.parse(json.dumps(VALID[type_]), MAX)
    assert isinstance(msg, p.CLIENT_MESSAGES[type_])
    assert msg.type == type_
    assert msg.id == VALID[type_].get("id")


def test_fields_are_typed_and_base64_is_decoded():
    # docs/protocol.md#3-framing-and-encoding
    update = p.parse(json.dumps(VALID["doc.update"]), MAX)
    assert isinstance(update, p.DocUpdate)
    assert update.doc_id == uuid.UUID(DOC)
    assert update.update == b"\x01\x01\xe9\x07\x00\x04\x01\x07content\x05Hello\x00"
    created = p.parse(json.dumps(VALID["workspace.create"]), MAX)
    assert isinstance(created, p.WorkspaceCreate)
    assert (created.name, created.workspace_type, created.visibility, created.max_members) == ("Design", "review", "team", 5)


def test_optional_fields_take_their_documented_defaults():
    # docs/protocol.md#51-message-table
    created = p.parse(frame(type="workspace.create", name="W"), MAX)
    assert isinstance(created, p.WorkspaceCreate)
    assert (created.workspace_type, created.visibility, created.max_members, created.id) == ("general", "private", 100, None)
    doc = p.parse(frame(type="doc.create", workspace_id=WS, title="T"), MAX)
    assert isinstance(doc, p.DocCreate)
    assert (doc.content_type, doc.language) == ("text", None)
    opened = p.parse(frame(type="doc.open", doc_id=DOC), MAX)
    assert isinstance(opened, p.DocOpen) and opened.state_vector == p.EMPTY_STATE_VECTOR  # empty: "I have nothing"


# --- 3 and 4.3: errors from parsing --------------------------------------------------------------


@pytest.mark.parametrize("text", ["{", "nope", '{"type":"ping"} trailing', "", '{"type":"ping",}', "{'type':'ping'}"])
def test_malformed_json_gets_bad_json(text):
    # docs/protocol.md#8-error-codes (bad_json); Tandem replies and keeps the socket (STYLE 2.3)
    err = p.parse(text, MAX)
    assert isinstance(err, p.ProtocolError)
    assert err.code is ErrorCode.BAD_JSON and err.re is None and err.close_code is None


@pytest.mark.parametrize("type_", ["workflow.start", "presence.update", "task.update", "doc.delete", "DOC.UPDATE", ""])
def test_unknown_type_gets_unknown_type_with_re(type_):
    # docs/protocol.md#10-reserved-for-later-issues: reserved families are unknown in protocol 1
    err = p.parse(frame(type=type_, id=9), MAX)
    assert isinstance(err, p.ProtocolError)
    assert err.code is ErrorCode.UNKNOWN_TYPE and err.re == 9


def test_missing_field_gets_invalid_message_with_field_details():
    # docs/protocol.md#56-errors
    err = p.parse(frame(type="doc.open", id="r1"), MAX)
    assert isinstance(err, p.ProtocolError)
    assert err.code is ErrorCode.INVALID_MESSAGE and err.re == "r1"
    assert err.details == {"errors": [{"field": "doc_id", "type": "missing", "message": "Field required"}]}


def test_missing_type_gets_invalid_message_naming_type():
    # docs/protocol.md#3-framing-and-encoding: the top level has a string field `type`
    err = p.parse(frame(id=3, doc_id=DOC), MAX)
    assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.INVALID_MESSAGE and err.re == 3
    assert err.details == {"errors": [{"field": "type", "type": "missing", "message": "Field required"}]}


@pytest.mark.parametrize("text", ["[1, 2]", "3", "null", '"ping"'])
def test_non_object_json_gets_invalid_message(text):
    # docs/protocol.md#3-framing-and-encoding: one JSON object per frame
    err = p.parse(text, MAX)
    assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize(
    ("fields", "field", "kind"),
    [
        ({"type": "doc.open", "doc_id": 5}, "doc_id", "uuid_type"),
        ({"type": "doc.open", "doc_id": "not-a-uuid"}, "doc_id", "uuid_parsing"),
        ({"type": "hello", "protocol": "1"}, "protocol", "int_type"),
        ({"type": "hello", "protocol": 1.0}, "protocol", "int_type"),
        ({"type": "hello", "protocol": 0}, "protocol", "greater_than_equal"),
        ({"type": "workspace.create", "name": "W", "max_members": 1001}, "max_members", "less_than_equal"),
        ({"type": "workspace.create", "name": "W", "visibility": "secret"}, "visibility", "literal_error"),
        ({"type": "workspace.create", "name": "   "}, "name", "blank"),
        ({"type": "workspace.create", "name": "a\x00b"}, "name", "nul_character"),
        ({"type": "doc.create", "workspace_id": WS, "title": "x" * 256}, "title", "string_too_long"),
        ({"type": "doc.create", "workspace_id": WS, "title": ""}, "title", "string_too_short"),
        ({"type": "doc.create", "workspace_id": WS, "title": "T", "content_type": "html"}, "content_type", "literal_error"),
        ({"type": "doc.create", "workspace_id": WS, "title": "T", "language": "x" * 51}, "language", "string_too_long"),
        ({"type": "ping", "id": True}, "id", "request_id"),
        ({"type": "ping", "id": 1.5}, "id", "request_id"),
        ({"type": "ping", "id": 2**53}, "id", "request_id"),
        ({"type": "ping", "id": "x" * 129}, "id", "request_id"),
        ({"type": "ping", "id": ""}, "id", "request_id"),
    ],
)
def test_mistyped_field_gets_invalid_message_naming_it(fields, field, kind):
    # docs/protocol.md#3-framing-and-encoding (strict fields, text limits, request ids)
    err = p.parse(json.dumps(fields), MAX)
    assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.INVALID_MESSAGE
    assert [(e["field"], e["type"]) for e in err.details["errors"]] == [(field, kind)]


def test_text_limits_accept_the_boundary():
    # docs/protocol.md#3-framing-and-encoding: names and titles up to 255 characters
    msg = p.parse(frame(type="doc.create", workspace_id=WS, title="é" * 255, language="x" * 50), MAX)
    assert isinstance(msg, p.DocCreate) and len(msg.title) == 255
    assert isinstance(p.parse(frame(type="ping", id=-(2**53 - 1)), MAX), p.Ping)
    assert p.parse(frame(type="ping", id=None), MAX) == p.Ping()  # null is the same as no id


def test_extra_fields_are_rejected():
    # docs/protocol.md#3-framing-and-encoding (strict fields)
    err = p.parse(frame(type="doc.close", id=1, doc_id=DOC, seq=3), MAX)
    assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.INVALID_MESSAGE and err.re == 1
    assert [(e["field"], e["type"]) for e in err.details["errors"]] == [("seq", "extra_forbidden")]


def test_invalid_message_details_never_echo_the_input_and_are_bounded():
    # docs/protocol.md#56-errors: at most 20 entries, the rejected input is never echoed
    fields = {"type": "ping", **{f"extra_{i}": "SECRET" for i in range(30)}}
    err = p.parse(json.dumps(fields), MAX)
    assert isinstance(err, p.ProtocolError) and len(err.details["errors"]) == p.MAX_ERROR_DETAILS
    assert "SECRET" not in p.encode(err.frame())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("update", "not base64!"),
        ("update", "AQHpBwAEAQdjb250ZW50BUhlbGxvAA"),  # padding removed
        ("update", "AQHpBwAEAQdjb250ZW50BUhlbGxvAA==\n"),  # trailing newline
        ("update", "AQHp BwAEAQdjb250ZW50BUhlbGxvAA=="),  # whitespace
        ("update", "-_-_"),  # URL-safe alphabet
        ("update", "é"),
        ("update", ""),  # an update must not be empty
        ("update", 123),
        ("state_vector", "AA"),
    ],
)
def test_bad_base64_gets_invalid_message(field, value):
    # docs/protocol.md#3-framing-and-encoding (binary data: strict RFC 4648 section 4 base64)
    fields = {"type": "doc.update", "id": 8, "doc_id": DOC, "update": HELLO_UPDATE}
    if field == "state_vector":
        fields = {"type": "doc.resync", "id": 8, "doc_id": DOC}
    fields[field] = value
    err = p.parse(json.dumps(fields), MAX)
    assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.INVALID_MESSAGE and err.re == 8
    assert [e["field"] for e in err.details["errors"]] == [field]


@pytest.mark.parametrize("value", ["/w==", "AQ==", "Af8B"])  # 127 clients missing, 1 client missing, truncated
def test_state_vector_that_does_not_decode_gets_invalid_message(value):
    # docs/protocol.md#55-documents (doc.open: state_vector is a Yjs state vector)
    err = p.parse(json.dumps({"type": "doc.open", "id": 9, "doc_id": DOC, "state_vector": value}), MAX)
    assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.INVALID_MESSAGE and err.re == 9
    assert [e["field"] for e in err.details["errors"]] == ["state_vector"]


def test_empty_state_vector_means_the_client_has_nothing():
    # docs/protocol.md#55-documents ("empty or absent: the client has nothing")
    opened = p.parse(json.dumps({"type": "doc.open", "doc_id": DOC, "state_vector": ""}), MAX)
    assert isinstance(opened, p.DocOpen) and opened.state_vector == p.EMPTY_STATE_VECTOR


def test_oversized_frame_gets_frame_too_large_and_stays_open():
    # docs/protocol.md#7-limits (max_frame_bytes): counted in UTF-8 bytes, not characters
    text = frame(type="ping", id="é" * 100)  # 100 characters, 200 bytes of id
    size = len(text.encode())
    err = p.parse(text, size - 1)
    assert isinstance(err, p.ProtocolError)
    assert err.code is ErrorCode.FRAME_TOO_LARGE and err.close_code is None
    assert err.details == {"max_frame_bytes": size - 1, "frame_bytes": size}
    assert isinstance(p.parse(text, size), p.Ping)


def test_binary_frame_gets_unsupported_frame():
    # docs/protocol.md#3-framing-and-encoding: protocol 1 uses no binary frames
    for data in (b'{"type":"ping"}', bytearray(b"\x00\x01"), memoryview(b"x")):
        err = p.parse(data, MAX)  # type: ignore[arg-type]
        assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.UNSUPPORTED_FRAME


@pytest.mark.parametrize("text", ["\ud800", '{"type":"ping","id":"\ud800"}', "\x00", "{" * 10_000, '{"id":' * 5000, "1e999999"])
def test_parse_never_raises(text):
    # docs/protocol.md#4-session-state: client input never raises, it becomes an error value
    assert isinstance(p.parse(text, MAX), p.ProtocolError)


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


def ready(**limits: object) -> p.ProtocolSession:
    session = p.ProtocolSession(p.Limits(**limits))
    session.accept(hello())
    return session


def hello() -> p.ServerHello:
    return p.ServerHello(
        node_id="node-a",
        server_version="0.1.0",
        session_id=uuid.UUID("5b0f6c1e-3f0e-4a51-9d0a-6f4cfb0e8d11"),
        agent_id="writer-1",
        tenant_id=uuid.UUID("00000000-0000-0000-0000-00000000000a"),
        expires_at=datetime(2026, 1, 1, 12, tzinfo=UTC),
        limits=p.Limits(),
    )


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


def test_invalid_update_budget_closes_at_the_limit():
    # docs/protocol.md#7-limits (max_invalid_updates): the N-th invalid update closes with 4422
    session = ready(max_invalid_updates=3)
    assert session.invalid_update(re=1).code is ErrorCode.INVALID_UPDATE
    assert session.invalid_update(re=2).code is ErrorCode.INVALID_UPDATE
    last = session.invalid_update(re=3)
    assert last == p.ProtocolError(ErrorCode.TOO_MANY_INVALID_UPDATES, 3)
    closing = session.fail(last)
    assert closing is not None and closing.code == 4422


# --- 5 and 8: message table, encoders and error codes --------------------------------------------


def documented_fields(cell: str) -> dict[str, bool]:
    """Field name -> optional, from a `fields` cell: backticked names outside parentheses."""
    names = re.findall(r"`([^`]+)`", re.sub(r"\([^)]*\)", "", cell))
    return {name.rstrip("?"): name.endswith("?") for name in names}


def test_message_table_matches_the_models():
    # docs/protocol.md#51-message-table
    rows = table(section("5.1 Message table"))
    client = {code(r[0]): r for r in rows if r[1] == "C→S"}
    server = {code(r[0]): r for r in rows if r[1] == "S→C"}
    assert set(client) == set(p.CLIENT_MESSAGES)
    assert set(server) == set(p.SERVER_MESSAGES) | {"error"}
    for type_, row in client.items():
        model = p.CLIENT_MESSAGES[type_]
        fields = {n: not f.is_required() for n, f in model.model_fields.items() if n not in ("type", "id")}
        assert documented_fields(row[2]) == fields, type_
        reply = code(row[3])
        assert reply in p.SERVER_MESSAGES and p.SERVER_MESSAGES[reply].model_fields["re"], type_
        for err in re.findall(r"`([^`]+)`", row[4]):
            ErrorCode(err)
    for type_, row in server.items():
        documented = set(documented_fields(row[2]))
        if type_ == "error":
            assert documented == set(error_frame(ErrorCode.BAD_JSON, details={})) - {"type"}
        else:
            assert documented == set(p.SERVER_MESSAGES[type_].model_fields) - {"type"}, type_


def test_replies_carry_re_and_events_do_not():
    # docs/protocol.md#3-framing-and-encoding (requests, replies, events)
    events = {"hello", "doc.op", "session.closing", "presence.joined", "presence.left", "presence.changed",
              "awareness.changed", "presence.stale", "presence.batch", "lock.acquired", "lock.renewed", "lock.released",
              "state.changed", "task.changed", "member.changed"}  # fmt: skip
    for type_, model in p.SERVER_MESSAGES.items():
        assert ("re" in model.model_fields) is (type_ not in events), type_


def test_error_table_matches_error_code():
    # docs/protocol.md#8-error-codes
    rows = table(section("8. Error codes"))
    documented = {code(r[0]): (r[1], None if r[2] == "—" else int(r[2])) for r in rows}
    assert documented == {c.value: (c.message, c.close_code) for c in ErrorCode}


def test_refusal_close_codes_match_error_code():
    # docs/protocol.md#22-refusal-accept-then-close-with-a-reason
    for _situation, err, close in table(section("2.2 Refusal")):
        assert ErrorCode(code(err)).close_code == int(close)


def test_closing_codes_are_in_the_4xxx_range_except_the_standard_ones():
    # docs/protocol.md#8-error-codes: server_shutdown uses 1012 (service restart), invalid_utf8
    # 1007 (RFC 6455 section 8.1)
    standard = {ErrorCode.SERVER_SHUTDOWN: 1012, ErrorCode.INVALID_UTF8: 1007}
    for c in ErrorCode:
        if c.close_code is not None and c not in standard:
            assert 4000 <= c.close_code <= 4999, c
    assert {c: c.close_code for c in standard} == standard


def test_limits_match_settings_defaults():
    # docs/protocol.md#7-limits: every limit is a setting; hello announces the per-session ones
    settings = Settings()
    assert p.Limits.from_settings(settings) == p.Limits()
    rows = {code(r[0].split(",")[0]) for r in table(section("7. Limits"))}
    assert set(p.Limits.model_fields) - {"max_message_burst"} <= rows


def test_encoders_produce_the_documented_shapes():
    # docs/protocol.md#56-errors, #55-documents (doc.op, doc.update.ok), #44 (session.closing)
    doc_id = uuid.UUID(DOC)
    op = p.DocOp(doc_id=doc_id, seq=8, agent_id="writer-2", update=b"\x00\x00")
    assert p.encode(op) == f'{{"type":"doc.op","doc_id":"{DOC}","seq":8,"agent_id":"writer-2","update":"AAA="}}'
    assert p.encode(p.DocUpdateOk(re=None, doc_id=doc_id, seq=None)) == f'{{"type":"doc.update.ok","re":null,"doc_id":"{DOC}","seq":null}}'
    assert p.encode(p.Pong(re="p-1")) == '{"type":"pong","re":"p-1"}'
    assert p.encode(error_frame(ErrorCode.DOC_NOT_OPEN, 7)) == '{"type":"error","re":7,"code":"doc_not_open","message":"Open the document first."}'
    with_details = error_frame(ErrorCode.LIMIT_EXCEEDED, details={"limit": "max_open_docs", "value": 1})
    assert json.loads(p.encode(with_details))["details"] == {"limit": "max_open_docs", "value": 1}
    assert p.encode(p.SessionClosing(code=4408, reason="slow_consumer", message="m")) == (
        '{"type":"session.closing","code":4408,"reason":"slow_consumer","message":"m"}'
    )
    assert TandemError(ErrorCode.FORBIDDEN).frame(re=3) == {
        "type": "error", "re": 3, "code": "forbidden", "message": "You are not allowed to do this.",
    }  # fmt: skip


def test_server_objects_send_lowercase_uuids_and_utc_timestamps():
    # docs/protocol.md#3-framing-and-encoding (ids, timestamps) and #52-shared-objects
    doc = p.DocumentInfo(
        doc_id=uuid.UUID(DOC.upper()), workspace_id=uuid.UUID(WS), title="Plan", content_type="markdown",
        language=None, created_by="writer-1", created_at=datetime(2026, 1, 1, 11, 0, 1, tzinfo=UTC),
    )  # fmt: skip
    assert json.loads(p.encode(p.DocCreateOk(re=4, document=doc)))["document"] == {
        "doc_id": DOC, "workspace_id": WS, "title": "Plan", "content_type": "markdown",
        "language": None, "created_by": "writer-1", "created_at": "2026-01-01T11:00:01Z",
    }  # fmt: skip


def example_lines() -> list[tuple[str, str]]:
    text = section("9. Worked example")
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^([→←]) (\{.*\})$", text, re.M)]


def test_worked_example_frames_are_exact():
    # docs/protocol.md#9-worked-example: every complete frame is what the code parses or encodes
    lines = example_lines()
    assert len(lines) > 20
    checked = 0
    for i, (direction, text) in enumerate(lines):
        if "{...}" in text:
            continue
        if direction == "→":
            msg = p.parse(text, MAX)
            reply = json.loads(lines[i + 1][1].replace("{...}", "{}"))
            if isinstance(msg, p.ProtocolError):
                assert lines[i + 1][1] == p.encode(msg.frame())
            else:
                assert reply["re"] == msg.id and reply["type"] in {"error", "pong", f"{msg.type}.ok"}
        else:
            data = json.loads(text)
            if data["type"] != "error":
                assert p.encode(p.SERVER_MESSAGES[data["type"]].model_validate(data)) == text
        checked += 1
    assert checked == len(lines) - 1


def test_worked_example_token_expiry_matches_the_closing_sequence():
    # docs/protocol.md#23-expiry-during-a-session and #9-worked-example (last frames)
    session = ready()
    closing = session.fail(ErrorCode.TOKEN_EXPIRED)
    assert closing is not None
    assert list(closing.frames) == [text for _d, text in example_lines()[-2:]]
    assert (closing.code, closing.reason) == (4440, "token_expired")


def test_server_hello_matches_the_documented_example():
    # docs/protocol.md#24-the-servers-hello
    documented = json.loads(re.search(r"```json\n(.*?)```", section("2.4 The server's"), re.S).group(1))
    assert json.loads(p.Limits().model_dump_json()) == documented["limits"]
    assert p.encode(p.ServerHello.model_validate(documented)) == json.dumps(documented, separators=(",", ":"))


# --- 12: coordination ------------------------------------------------------------------------------


def test_task_transition_and_actor_tables_match_docs():
    # docs/protocol.md#124-tasks-and-delegations
    from server.workspaces import task_rules

    text = section("12.4 Tasks and delegations")
    tables = re.split(r"\n(?=Who may take)", text)
    documented = {(code(st), code(a)): code(t) for st, a, t in table(tables[0])}
    assert documented == {(s.value, a.value): t.value for (s, a), t in task_rules.TRANSITIONS.items()}
    actors = {code(a): set(re.findall(r"`([^`]+)`", who)) for a, who in table(tables[1])}
    assert actors == {a.value: {x.value for x in who} for a, who in task_rules.ACTORS.items()}


@pytest.mark.parametrize(
    "fields",
    [
        {"workspace_id": WS},  # neither doc_id nor name
        {"workspace_id": WS, "doc_id": DOC, "name": "deploy"},  # both
        {"workspace_id": WS, "name": "deploy", "ttl_ms": 5},  # too short a lease
        {"workspace_id": WS, "name": " "},
    ],
)
def test_a_lock_names_exactly_one_resource_with_a_bounded_ttl(fields):
    # docs/protocol.md#122-named-locks
    err = p.parse(frame(type="lock.acquire", id=1, **fields), MAX)
    assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.INVALID_MESSAGE and err.re == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"mode": "patch", "value": {"a": 1}},  # patch takes `patch`
        {"mode": "replace", "patch": []},  # replace takes `value`
        {"mode": "merge"},
        {"mode": "replace", "value": {}, "on_conflict": "ignore"},
    ],
)
def test_state_update_takes_the_operand_of_its_mode(fields):
    # docs/protocol.md#123-workspace-state
    err = p.parse(frame(type="state.update", workspace_id=WS, expected_version=1, **fields), MAX)
    assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.INVALID_MESSAGE


def test_doc_update_takes_an_optional_fence():
    # docs/protocol.md#121-document-locks-and-fencing
    msg = p.parse(frame(type="doc.update", doc_id=DOC, update=HELLO_UPDATE, fence=42), MAX)
    assert isinstance(msg, p.DocUpdate) and msg.fence == 42
    err = p.parse(frame(type="doc.update", doc_id=DOC, update=HELLO_UPDATE, fence=0), MAX)
    assert isinstance(err, p.ProtocolError) and err.code is ErrorCode.INVALID_MESSAGE
