"""Shared by the tests/test_protocol_*.py modules: docs/protocol.md read as sections and tables,
a valid frame of every client message type, and sessions ready to receive frames.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

from server.wire import protocol as p

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


# --- a valid frame of every client message type (docs/protocol.md#51-message-table) ----------


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
    "agent.register": {"type": "agent.register", "name": "Writer", "capabilities": ["write"], "max_concurrent_tasks": 2},
    "agent.set_status": {"type": "agent.set_status", "status": "maintenance"},
    "agent.list": {"type": "agent.list", "capability": "write"},
    "workflow.define": {
        "type": "workflow.define", "workspace_id": WS, "name": "review", "description": "two steps",
        "definition": {"type": "sequential", "steps": [{"id": "a", "task": {"title": "A"}, "agent": "w"}]},
    },
    "workflow.get": {"type": "workflow.get", "workspace_id": WS, "workflow_id": DOC, "version": 2},
    "workflow.list": {"type": "workflow.list", "workspace_id": WS, "include_inactive": True, "limit": 10},
    "workflow.deactivate": {"type": "workflow.deactivate", "workspace_id": WS, "workflow_id": DOC},
    "workflow.start": {"type": "workflow.start", "workspace_id": WS, "workflow_id": DOC, "input": {"topic": "x"}},
    "workflow.pause": {"type": "workflow.pause", "workspace_id": WS, "execution_id": DOC},
    "workflow.resume": {"type": "workflow.resume", "workspace_id": WS, "execution_id": DOC},
    "workflow.cancel": {"type": "workflow.cancel", "workspace_id": WS, "execution_id": DOC},
    "workflow.execution.get": {"type": "workflow.execution.get", "workspace_id": WS, "execution_id": DOC},
    "workflow.execution.list": {"type": "workflow.execution.list", "workspace_id": WS, "status": ["running"]},
}  # fmt: skip


# --- sessions ------------------------------------------------------------------------------------


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
