"""Parsing frames against docs/protocol.md (sections 3, 4.3, 5 and 12): every client message
from a valid frame, and each malformed, mistyped or oversized frame to its typed error.

No network, no database.
"""

from __future__ import annotations

import json
import uuid

import pytest

from server.core.errors import ErrorCode
from server.wire import protocol as p
from tests.protocol_helpers import DOC, HELLO_UPDATE, MAX, VALID, WS, frame

# --- 5.1: every message type parses from a valid frame -------------------------------------------


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


@pytest.mark.parametrize("type_", ["workflow.trigger", "presence.update", "task.update", "doc.delete", "DOC.UPDATE", ""])
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


# --- 12: coordination messages ----------------------------------------------------------------


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
