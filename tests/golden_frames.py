"""Golden frames: one of every server message, made by the server's own models from fixed values.

The SDK keeps its own reading of these shapes (it may not import the server), so
tests/test_golden_frames.py checks both ways: these frames equal tests/golden_frames.json (the
server's encoding did not drift), and the SDK decodes each frame of that file. After an
intended change of a message, regenerate the file with `python -m tests.golden_frames`.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.core.errors import ErrorCode, ErrorMessage
from server.documents.room import encode_doc_op, encode_update_ok
from server.transport.agent_coordination import member_wire
from server.wire import protocol as p
from server.wire import protocol_agents as pa
from server.wire import protocol_coordination as pc
from server.wire import protocol_executions as pe
from server.wire import protocol_workflows as pw
from server.workspaces import agents, executions, locks, tasks, workflows
from server.workspaces import directory as workspaces

PATH = Path(__file__).with_name("golden_frames.json")

TENANT = uuid.UUID("00000000-0000-0000-0000-00000000000a")
WS = uuid.UUID("6f1c2a3b-4d5e-4f60-8a71-9b8c7d6e5f40")
DOC = uuid.UUID("0b9d8c7a-6b5c-4d3e-8f2a-1b0c9d8e7f61")
TASK = uuid.UUID("7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d")
WORKFLOW = uuid.UUID("3e4f5a6b-7c8d-4e9f-8a0b-1c2d3e4f5a6b")
EXECUTION = uuid.UUID("5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f")
CONN = uuid.UUID("1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f")
DELEGATION = uuid.UUID("2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f60")
AT = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
UPDATE = b"\x01\x01\xb5\xf4\xe8\x9a\x0f\x00\x04\x01\x04text\x02hi\x00"
VECTOR = b"\x01\xb5\xf4\xe8\x9a\x0f\x02"


def _objects() -> dict[str, Any]:
    """The objects messages carry, as the data layer writes them (`to_wire`)."""
    workspace = workspaces.Workspace(WS, "Plan", "general", "team", 100, "owner-1", AT, 1)
    document = workspaces.DocumentInfo(DOC, WS, "Notes", "markdown", None, "owner-1", AT, 5)
    member = workspaces.Member("writer-2", "member", AT, ("read", "write"))
    lock = locks.Lock(locks.Resource(WS, doc_id=DOC), "writer-2", 7, AT, AT)
    task = tasks.Task(
        TASK, WS, "Summarise", "general", None, "assigned", "high", "owner-1", "writer-2", None, {"n": 1}, None,
        None, 3, 0, 3600, AT, AT, None, None, AT,
    )  # fmt: skip
    delegation = tasks.Delegation(DELEGATION, TASK, "owner-1", "writer-2", "manual", None, AT)
    presence = p.PresenceMember(
        agent_id="writer-2", node_id="node-1", conn_id=CONN, since=AT, doc_ids=[DOC], awareness={"cursor": 3},
        awareness_doc_id=DOC,
    )  # fmt: skip
    agent = agents.Agent(
        "writer-2", "Writer", "llm", ["write", "review"], 2, {"model": "m-1"}, "active", AT, 1, 3, 1, 0, AT, AT
    )
    execution = executions.Execution(
        EXECUTION, WORKFLOW, 1, WS, "running", "owner-1", {"topic": "cats"}, {}, {
            "a": {"status": "completed", "attempt": 1, "task_id": str(TASK), "error": None},
            "b": {"status": "running", "attempt": 1, "task_id": str(DELEGATION), "error": None},
        }, {"a": {"words": 10}}, None, None, AT, None,
    )  # fmt: skip
    return {
        "agent": agent.to_wire(),
        "execution": execution.to_wire(),
        "workspace": workspace, "document": document, "member": member, "lock": lock.to_wire(),
        "task": task.to_wire(), "delegation": delegation.to_wire(), "presence": presence,
        "member_wire": member_wire(member),
        "workflow": workflows.workflow_wire({
            "workflow_id": WORKFLOW, "workspace_id": WS, "name": "review", "version": 1, "latest_version": 2,
            "active": True, "type": "sequential", "steps": '[{"id": "a", "task": {"title": "A"}, "agent": "w", "depends_on": []}]',
            "config": "{}", "description": None, "created_by": "owner-1", "created_at": AT,
        }),
        "workflow_summary": workflows.workflow_wire({
            "workflow_id": WORKFLOW, "workspace_id": WS, "name": "review", "version": 2, "type": "sequential",
            "active": False, "created_by": "owner-1", "created_at": AT, "updated_at": AT,
        }),
    }  # fmt: skip


def messages() -> list[Any]:
    """One model of every server message type (and the `error` message)."""
    o = _objects()
    ws_info = p.WorkspaceInfo.model_validate(o["workspace"].to_wire())
    doc_info = p.DocumentInfo.model_validate(o["document"].to_wire())
    member_info = p.MemberInfo.model_validate(o["member"].to_wire())
    lock, task, member = o["lock"], o["task"], o["member_wire"]
    stats = [{"status": "assigned", "count": 1}]
    found: list[Any] = [
        p.ServerHello(
            node_id="node-1", server_version="0.1.0", session_id=CONN, agent_id="writer-2", tenant_id=TENANT,
            expires_at=AT, limits=p.Limits(),
        ),
        p.HelloOk(re=1, protocol=1, batch=True, presence_batch=False),
        p.Pong(re="p-1"),
        p.WorkspaceCreateOk(re=2, workspace=ws_info),
        p.WorkspaceListOk(re=3, workspaces=[ws_info], truncated=False),
        p.WorkspaceJoinOk(re=4, workspace=ws_info, role="owner", state_version=1, members=[member_info], documents=[doc_info], truncated=False),
        p.WorkspaceLeaveOk(re=5, workspace_id=WS, closed_doc_ids=[DOC]),
        p.DocCreateOk(re=6, document=doc_info),
        p.DocListOk(re=7, workspace_id=WS, documents=[doc_info], truncated=False),
        p.DocOpenOk(re=8, doc_id=DOC, workspace_id=WS, seq=3, update=UPDATE, state_vector=VECTOR),
        p.DocCloseOk(re=9, doc_id=DOC),
        p.DocUpdateOk(re=10, doc_id=DOC, seq=4),
        p.DocResyncOk(re=11, doc_id=DOC, workspace_id=WS, seq=4, update=UPDATE, state_vector=VECTOR),
        p.DocOp(doc_id=DOC, seq=5, agent_id="writer-2", update=UPDATE),
        p.SessionClosing(code=4408, reason="slow_consumer", message="The client does not read fast enough."),
        p.PresenceListOk(re=12, workspace_id=WS, members=[o["presence"]], truncated=False, partial=False),
        p.AwarenessSetOk(re=13, workspace_id=WS, doc_id=DOC),
        p.PresenceJoined(workspace_id=WS, agent_id="writer-2", conn_id=CONN, node_id="node-1", since=AT),
        p.PresenceLeft(workspace_id=WS, agent_id="writer-2", conn_id=CONN, reason="left"),
        p.PresenceChanged(workspace_id=WS, agent_id="writer-2", conn_id=CONN, doc_ids=[DOC]),
        p.AwarenessChanged(workspace_id=WS, doc_id=DOC, agent_id="writer-2", conn_id=CONN, state={"cursor": 3}),
        p.PresenceStale(workspace_id=WS),
        p.PresenceBatch(workspace_id=WS, members=[o["presence"]], left=[p.PresenceGone(conn_id=CONN, agent_id="reader-3", reason="expired")]),
        pc.LockAcquireOk(re=14, lock=lock),
        pc.LockRenewOk(re=15, lock=lock),
        pc.LockReleaseOk(re=16, lock=lock),
        pc.LockListOk(re=17, workspace_id=WS, locks=[lock]),
        pc.LockAcquired(lock=lock),
        pc.LockRenewed(lock=lock),
        pc.LockReleased(lock=lock, reason="released"),
        pc.StateGetOk(re=18, workspace_id=WS, version=2, state={"phase": "draft"}),
        pc.StateUpdateOk(re=19, workspace_id=WS, version=3, state={"phase": "review"}, merged=False),
        pc.StateChanged(workspace_id=WS, version=3, state={"phase": "review"}, agent_id="owner-1"),
        *(reply(re=20, task=task) for reply in pc.TASK_REPLIES.values()),
        pc.TaskGetOk(re=21, task=task, delegations=[o["delegation"]]),
        pc.TaskListOk(re=22, workspace_id=WS, tasks=[task], truncated=False),
        pc.TaskStatsOk(re=23, workspace_id=WS, workload=[{"agent_id": "writer-2", "active": 1}], statistics=stats),
        pc.TaskChanged(task=task, action="delegate", agent_id="owner-1", delegation=o["delegation"]),
        pc.MemberAddOk(re=24, member=member),
        pc.MemberRemoveOk(re=25, member=member),
        pc.MemberUpdateOk(re=26, member=member),
        pc.MemberListOk(re=27, workspace_id=WS, members=[member], truncated=False),
        pc.MemberChanged(workspace_id=WS, member=member, change="updated", agent_id="owner-1"),
        pa.AgentRegisterOk(re=29, agent=o["agent"]),
        pa.AgentSetStatusOk(re=30, agent={**o["agent"], "status": "maintenance"}),
        pa.AgentListOk(re=31, agents=[o["agent"]], truncated=False),
        pw.WorkflowDefineOk(re=32, workflow=o["workflow"]),
        pw.WorkflowGetOk(re=33, workflow=o["workflow"]),
        pw.WorkflowListOk(re=34, workspace_id=WS, workflows=[o["workflow_summary"]], truncated=False),
        pw.WorkflowDeactivateOk(re=35, workflow=o["workflow_summary"]),
        pc.DocDeleted(workspace_id=WS, doc_id=DOC, agent_id="tandem-cli"),
        pc.WorkspaceDeleted(workspace_id=WS, agent_id="tandem-cli"),
        pe.WorkflowStartOk(re=36, execution=o["execution"]),
        pe.WorkflowPauseOk(re=37, execution={**o["execution"], "status": "paused"}),
        pe.WorkflowResumeOk(re=38, execution=o["execution"]),
        pe.WorkflowCancelOk(re=39, execution={**o["execution"], "status": "cancelled", "completed_at": "2026-01-02T03:04:05.678000Z"}),
        pe.WorkflowExecutionGetOk(re=40, execution=o["execution"], tasks=[task]),
        pe.WorkflowExecutionListOk(re=41, workspace_id=WS, executions=[o["execution"]], truncated=False),
        pe.WorkflowExecutionChanged(execution=o["execution"], action="advance", previous_status="running", agent_id="writer-2"),
        ErrorMessage(re=28, code=ErrorCode.LIMIT_EXCEEDED, message=ErrorCode.LIMIT_EXCEEDED.message, details={"limit": "max_open_docs", "value": 100}),
    ]  # fmt: skip
    return found


def frames() -> dict[str, str]:
    """Message type -> its frame, as the server encodes it (the hot-path encoders included:
    `doc.op` and `doc.update.ok` are checked to encode as their models do)."""
    out = {m.type: p.encode(m) for m in messages()}
    hot = {
        "doc.op": encode_doc_op(doc_id=DOC, seq=5, agent_id="writer-2", update=UPDATE),
        "doc.update.ok": encode_update_ok(re=10, doc_id=DOC, seq=4),
    }
    for type_, frame in hot.items():
        if frame != out[type_]:
            raise AssertionError(f"{type_}: the hot-path encoder gives {frame}, its model {out[type_]}")
    return out


def main() -> None:
    PATH.write_text(json.dumps(frames(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
