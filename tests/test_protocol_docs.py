"""docs/protocol.md's tables and examples against the code: the message table and the models,
error and close codes, limits, encoded shapes, the worked example, the server's hello and the
task tables. Tables marked "(checked by tests)" are parsed here, so the document and the code
cannot drift apart.

No network, no database.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime

from server.core.errors import ErrorCode, TandemError, error_frame
from server.core.settings import Settings
from server.wire import protocol as p
from tests.protocol_helpers import DOC, MAX, WS, code, ready, section, table

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
              "state.changed", "task.changed", "member.changed", "doc.deleted", "workspace.deleted",
              "workflow.execution.changed"}  # fmt: skip
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
    # docs/protocol.md#23-expiry-and-revocation-during-a-session and #9-worked-example (last frames)
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
