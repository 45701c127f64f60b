"""Every frame the server sends is its model's encoding (docs/protocol.md section 5.1): the frames
a room sends per commit (`doc.op`, `doc.update.ok`, built by encoders derived from the models),
the workspace events of this node and of another node (read back from NOTIFY into their models),
and error frames. Each captured frame must decode into its model and encode back byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from crdt.document import Document
from server.cluster import hints
from server.cluster.events import Event, Events
from server.cluster.hints import MAX_NOTIFY_BYTES
from server.core.errors import ErrorCode, ErrorMessage, TandemError
from server.db.store import NewOperation
from server.documents.committer import Committed
from server.documents.room import Room, Subscription, encode_doc_op, encode_update_ok
from server.wire import protocol as p
from server.wire.fields import frame_encoder
from server.workspaces import locks, tasks
from server.workspaces.coordination import (
    lock_event,
    member_event,
    state_event,
    task_event,
)
from tests.serverproc import REPO

MODELS: dict[str, Any] = {**p.SERVER_MESSAGES, "error": ErrorMessage}
TENANT = uuid.uuid4()
AT = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


def assert_model_frame(frame: str) -> Any:
    """The frame decodes into its message's model and that model encodes to the same bytes."""
    model = MODELS[json.loads(frame)["type"]].model_validate_json(frame)
    assert p.encode(model) == frame
    return model


def test_no_frame_is_a_hand_built_dict() -> None:
    # Only the models (and the encoders derived from them) spell a message type as a frame's `type`.
    literal = re.compile(r"""["']type["']\s*:\s*["']([a-z_.]+)["']|\btype\s*=\s*["']([a-z_.]+)["']""")
    built = {}
    for path in (REPO / "server").rglob("*.py"):
        for match in literal.finditer(path.read_text()):
            type_ = match.group(1) or match.group(2)
            if type_ in MODELS:
                built.setdefault(str(path.relative_to(REPO)), []).append(type_)
    assert built == {}


# --- the room: doc.op and doc.update.ok, once per commit ---------------------------------------


@pytest.mark.parametrize("re", [None, 0, 2**53 - 1, "r-é", "x" * 128])
@pytest.mark.parametrize("update", [b"\x00", bytes(range(256)) * 40])
def test_hot_path_encoders_give_their_models_encoding(re: Any, update: bytes) -> None:
    doc_id = uuid.uuid4()
    op = encode_doc_op(doc_id=doc_id, seq=2**40, agent_id="agent \"ü\" 🚀", update=update)
    assert op == p.encode(p.DocOp(doc_id=doc_id, seq=2**40, agent_id="agent \"ü\" 🚀", update=update))
    assert encode_update_ok(re=re, doc_id=doc_id, seq=9) == p.encode(p.DocUpdateOk(re=re, doc_id=doc_id, seq=9))
    assert encode_update_ok(re=re, doc_id=doc_id, seq=None) == p.encode(p.DocUpdateOk(re=re, doc_id=doc_id, seq=None))


def test_hot_path_encoders_refuse_a_missing_extra_or_misplaced_field() -> None:
    doc_id = uuid.uuid4()
    with pytest.raises(TypeError):
        encode_update_ok(re=1, doc_id=doc_id)
    with pytest.raises(TypeError):
        encode_update_ok(re=1, doc_id=doc_id, seq=1, fence=2)
    with pytest.raises(TypeError):
        encode_doc_op(seq=1, doc_id=doc_id, agent_id="a", update=b"\x00")
    with pytest.raises(TypeError):  # its serializer leaves `details` out when None: only the model does that
        frame_encoder(ErrorMessage)  # type: ignore[arg-type]


class Recorder:
    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self.frames: list[str] = []

    def send_text(self, frame: str) -> None:
        self.frames.append(frame)


def test_a_room_sends_each_commit_as_model_frames_built_once() -> None:
    room = Room(TENANT, uuid.uuid4(), uuid.uuid4(), Document(), 0)
    writer, readers = Recorder("w"), [Recorder(f"r{i}") for i in range(3)]
    for sub in (writer, *readers):
        room.subscriptions[sub.conn_id] = Subscription(sub, synced_seq=0)
    ops = [NewOperation("writer-1", "insert", "{}", bytes([1, seq]), "w", f"req-{seq}") for seq in (1, 2)]
    room.on_committed([Committed(TENANT, room.doc_id, seq, op) for seq, op in zip((1, 2), ops, strict=True)])
    acks = [assert_model_frame(f) for f in writer.frames]
    assert [(a.type, a.re, a.doc_id, a.seq) for a in acks] == [("doc.update.ok", "req-1", room.doc_id, 1), ("doc.update.ok", "req-2", room.doc_id, 2)]
    for reader in readers:
        events = [assert_model_frame(f) for f in reader.frames]
        assert [(e.type, e.seq, e.agent_id, e.update) for e in events] == [("doc.op", 1, "writer-1", b"\x01\x01"), ("doc.op", 2, "writer-1", b"\x01\x02")]
    # One string per commit, shared by every reader (encoded once, not per recipient).
    assert all(readers[0].frames[i] is r.frames[i] for r in readers for i in range(2))


# --- workspace events, from this node and from another -----------------------------------------


class Listener:
    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self.got: list[tuple[Any, str]] = []

    def on_event(self, message: Any, frame: str) -> None:
        self.got.append((message, frame))


def sample_events(workspace_id: uuid.UUID, state: dict[str, Any] | None = None) -> list[Event]:
    lock = locks.Lock(locks.Resource(workspace_id, name="deploy"), "agent-a", 3, AT, AT)
    task = tasks.Task(
        uuid.uuid4(), workspace_id, "Do", "general", None, "assigned", "normal", "agent-a", "agent-b", None, {}, None,
        None, 3, 0, 60, AT, AT, None, None, AT,
    )  # fmt: skip
    delegation = tasks.Delegation(uuid.uuid4(), task.task_id, "agent-a", "agent-b", "manual", "busy", AT)
    member = {"agent_id": "agent-b", "role": "viewer", "joined_at": "2026-03-04T05:06:07Z", "permissions": ["read"]}
    return [
        lock_event(TENANT, "lock.acquired", lock),
        lock_event(TENANT, "lock.renewed", lock),
        lock_event(TENANT, "lock.released", lock, reason="released"),
        state_event(TENANT, workspace_id, 4, state or {"phase": "review", "n": 1.5}, "agent-a"),
        task_event(TENANT, task, "create", "agent-a"),
        task_event(TENANT, task, "delegate", "agent-a", delegation),
        member_event(TENANT, workspace_id, member, "updated", "agent-a"),
    ]


def joined(node: str, workspace_id: uuid.UUID) -> tuple[Events, Listener]:
    events, listener = Events(node), Listener(f"{node}-session")
    events.join(listener, TENANT, workspace_id)
    return events, listener


def test_events_are_their_models_here_and_on_another_node() -> None:
    workspace_id = uuid.uuid4()
    here, local = joined("node-1", workspace_id)
    there, remote = joined("node-2", workspace_id)
    for event in sample_events(workspace_id):
        assert type(event.message) is MODELS[event.message.type]  # built by its model
        here.deliver(event)
        there.on_remote(hints.decode(here.payload(event), "node-2"))  # what the fan-out decodes from NOTIFY
    assert len(local.got) == len(remote.got) == 7
    for (message, frame), (remote_message, remote_frame) in zip(local.got, remote.got, strict=True):
        assert assert_model_frame(frame) == message == remote_message
        assert remote_frame == frame  # byte for byte, whichever node sends it
    assert [m.type for m, _ in local.got] == ["lock.acquired", "lock.renewed", "lock.released", "state.changed", "task.changed", "task.changed", "member.changed"]


async def test_an_event_read_back_after_notify_is_its_model_in_its_order() -> None:
    workspace_id = uuid.uuid4()
    big = {"blob": "x" * MAX_NOTIFY_BYTES}
    here, local = joined("node-1", workspace_id)
    event = state_event(TENANT, workspace_id, 5, big, "agent-a")
    payload = json.loads(here.payload(event))
    assert payload["r"] == ["state", str(workspace_id), "state"] and "state" not in payload["e"]

    async def refetch(tenant_id: uuid.UUID, ws_id: uuid.UUID, kind: str, ref_id: str) -> dict[str, Any]:
        return {"state": big, "version": 5}

    there, remote = Events("node-2", refetch=refetch), Listener("s")
    there.join(remote, TENANT, workspace_id)
    there.on_remote(hints.decode(here.payload(event), "node-2"))
    async with asyncio.timeout(5):
        while not remote.got:
            await asyncio.sleep(0.01)
    here.deliver(event)
    assert remote.got[0][1] == local.got[0][1] == p.encode(event.message)  # the model's field order
    assert_model_frame(remote.got[0][1])


def test_a_remote_event_that_is_not_its_model_is_dropped() -> None:
    workspace_id = uuid.uuid4()
    there, remote = joined("node-2", workspace_id)
    good = json.loads(Events("node-1").payload(sample_events(workspace_id)[0]))
    for bad in ({"type": "lock.acquired"}, {"type": "lock.stolen", "lock": {}}, {**good["e"], "extra": 1}):
        there.on_remote(hints.decode(json.dumps({**good, "e": bad}), "node-2"))
    assert remote.got == []
    there.on_remote(hints.decode(json.dumps(good), "node-2"))
    assert len(remote.got) == 1


# --- errors --------------------------------------------------------------------------------------


def test_error_frames_are_their_models_encoding() -> None:
    frames = [
        p.encode(TandemError(ErrorCode.LOCKED, details={"holder": "a", "fence": 3}).frame(re="r1")),
        p.encode(p.ProtocolError(ErrorCode.BAD_JSON).frame()),
        p.encode(p.ProtocolError(ErrorCode.NOT_MEMBER, 7, message="Join first.").frame()),
    ]
    decoded = [assert_model_frame(f) for f in frames]
    assert [(e.code, e.re, e.details) for e in decoded] == [
        (ErrorCode.LOCKED, "r1", {"holder": "a", "fence": 3}), (ErrorCode.BAD_JSON, None, None), (ErrorCode.NOT_MEMBER, 7, None),
    ]  # fmt: skip
    assert '"details"' not in frames[1]
    closing = p.ProtocolSession(p.Limits())
    closing.accept(
        p.ServerHello(node_id="n", server_version="v", session_id=uuid.uuid4(), agent_id="a", tenant_id=TENANT, expires_at=AT, limits=p.Limits())
    )
    sequence = closing.fail(ErrorCode.SLOW_CONSUMER)
    assert sequence is not None
    assert [assert_model_frame(f).type for f in sequence.frames] == ["error", "session.closing"]
