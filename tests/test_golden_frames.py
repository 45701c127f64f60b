"""Golden frames, checked both ways (tests/golden_frames.py): the server's models still encode
tests/golden_frames.json byte for byte, and the SDK, which keeps its own reading of the shapes
(it may not import the server), decodes every frame of that file into its objects."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import pytest

from server.core.errors import ErrorMessage
from server.wire import protocol as p
from tests import golden_frames
from tests.serverproc import REPO

if str(REPO / "clients") not in sys.path:  # the SDK is its own package; the suite uses its source
    sys.path.insert(0, str(REPO / "clients"))

from tandem_client import errors as sdk_errors  # noqa: E402
from tandem_client import wire as sdk  # noqa: E402

GOLDEN: dict[str, str] = json.loads(golden_frames.PATH.read_text())
MODELS: dict[str, Any] = {**p.SERVER_MESSAGES, "error": ErrorMessage}

# Where each object the SDK has a class for sits in a message: (field, SDK class, a list of them).
OBJECTS: dict[str, list[tuple[str, type, bool]]] = {
    "workspace.create.ok": [("workspace", sdk.WorkspaceInfo, False)],
    "workspace.list.ok": [("workspaces", sdk.WorkspaceInfo, True)],
    "workspace.join.ok": [("workspace", sdk.WorkspaceInfo, False), ("members", sdk.Member, True), ("documents", sdk.DocumentInfo, True)],
    "doc.create.ok": [("document", sdk.DocumentInfo, False)],
    "doc.list.ok": [("documents", sdk.DocumentInfo, True)],
    "lock.list.ok": [("locks", sdk.LockInfo, True)],
    "task.get.ok": [("task", sdk.Task, False), ("delegations", sdk.Delegation, True)],
    "task.list.ok": [("tasks", sdk.Task, True)],
    "task.changed": [("task", sdk.Task, False), ("delegation", sdk.Delegation, False)],
    "member.list.ok": [("members", sdk.Member, True)],
    "agent.register.ok": [("agent", sdk.Agent, False)],
    "agent.set_status.ok": [("agent", sdk.Agent, False)],
    "agent.list.ok": [("agents", sdk.Agent, True)],
    "workflow.define.ok": [("workflow", sdk.Workflow, False)],
    "workflow.get.ok": [("workflow", sdk.Workflow, False)],
    "workflow.list.ok": [("workflows", sdk.WorkflowSummary, True)],
    "workflow.deactivate.ok": [("workflow", sdk.WorkflowSummary, False)],
    **{t: [("lock", sdk.LockInfo, False)] for t in GOLDEN if t.startswith("lock.") and t != "lock.list.ok"},
    **{t: [("task", sdk.Task, False)] for t in GOLDEN if t.startswith("task.") and t.endswith(".ok") and t not in ("task.get.ok", "task.list.ok", "task.stats.ok")},
    **{t: [("member", sdk.Member, False)] for t in GOLDEN if t.startswith("member.") and t != "member.list.ok"},
}  # fmt: skip
BINARY = ("update", "state_vector")  # base64 fields the SDK decodes


def test_the_golden_file_is_what_the_server_models_encode() -> None:
    # Fails when a server message changes shape; regenerate with `python -m tests.golden_frames`
    # once the change is intended, and the SDK test below says whether the SDK still reads it.
    assert golden_frames.frames() == GOLDEN
    assert set(GOLDEN) == set(MODELS)


@pytest.mark.parametrize("type_", sorted(GOLDEN))
def test_each_golden_frame_is_exactly_its_models_encoding(type_: str) -> None:
    frame = GOLDEN[type_]
    assert p.encode(MODELS[type_].model_validate_json(frame)) == frame


def _sdk_object(cls: type, obj: dict[str, Any]) -> Any:
    """The SDK's object; every field it knows must be in what the server sent."""
    known = {f.name for f in dataclasses.fields(cls)} - {"raw"}
    optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    assert known - optional <= set(obj), (cls.__name__, sorted(known - set(obj)))
    return cls.from_wire(obj)


@pytest.mark.parametrize("type_", sorted(GOLDEN))
def test_the_sdk_decodes_each_golden_frame(type_: str) -> None:
    text = GOLDEN[type_]
    frame = sdk.decode(text)
    assert frame is not None and frame["type"] == type_
    assert sdk.decode_all(text) == [frame] and sdk.decode_all(f"[{text}]") == [frame]
    for name, cls, many in OBJECTS.get(type_, []):
        value = frame[name]
        for obj in value if many else [value]:
            decoded = _sdk_object(cls, obj)
            assert decoded.raw == obj
    for name in BINARY:
        if name in frame:
            assert sdk.unb64(frame[name])
    if type_ == "hello":
        hello = _sdk_object(sdk.Hello, frame)
        assert hello.protocol == sdk.PROTOCOL_VERSION
    if type_ == "workspace.join.ok":
        join = sdk.JoinReply.from_wire(frame)
        assert (join.role, join.state_version, len(join.members), len(join.documents)) == ("owner", 1, 1, 1)
    if type_ == "error":
        error = sdk_errors.error_from_frame(frame)
        assert (error.code, error.message, error.details) == (frame["code"], frame["message"], frame["details"])
        assert type(error) is sdk_errors.ERROR_CLASSES[frame["code"]]
