"""Member management end to end on one node (docs/protocol.md section 12): changes of role and
removals applied to the members' open sessions.

Each module has one server (every test makes its own workspaces and agents), started with a fast
task sweep and a short lock release grace period (tests/e2e/coordination_peers.py).
"""

from __future__ import annotations

from collections.abc import Callable

from tests.e2e.conftest import (
    Tandem,
    operation_count,
    replayed_text,
    shared_doc,
)
from tests.e2e.coordination_peers import (  # noqa: F401  (the fixtures the tests take)
    Connect,
    Frame,
    connect,
    scratch_update,
    server,
)

# --- members -----------------------------------------------------------------------------------


def member_changed(agent_id: str, change: str) -> Callable[[Frame], bool]:
    return lambda f: f["type"] == "member.changed" and f["member"]["agent_id"] == agent_id and f["change"] == change


async def test_member_changes_apply_to_open_sessions(server: Tandem, connect: Connect) -> None:
    owner, demoted, admin, plain, removed = [await connect(n) for n in ("owner", "demoted", "admin", "plain", "removed")]
    ws_id, doc_id = await shared_doc(owner.agent, visibility="private")
    for peer, role in ((demoted, "member"), (admin, "admin"), (plain, "member"), (removed, "member")):
        added = await owner.request("member.add", workspace_id=ws_id, agent_id=peer.id, role=role)
        assert (added["member"]["agent_id"], added["member"]["role"]) == (peer.id, role)
        assert (await peer.request("workspace.join", workspace_id=ws_id))["role"] == role
    owned = await owner.agent.open(doc_id)
    demoted_doc, removed_doc = await demoted.agent.open(doc_id), await removed.agent.open(doc_id)
    await demoted_doc.edit(lambda t: t.insert(0, "demoted wrote."))
    await removed_doc.wait_for(lambda d: str(d.text) == "demoted wrote.")

    # Made a viewer: its open session hears of it and can no longer write.
    updated = await owner.request("member.update", workspace_id=ws_id, agent_id=demoted.id, role="viewer")
    assert updated["member"]["role"] == "viewer"
    event = await demoted.take(member_changed(demoted.id, "updated"))
    assert (event["member"]["role"], event["agent_id"], event["workspace_id"]) == ("viewer", owner.id, ws_id)
    rows = await operation_count(server.db, doc_id)
    error = await demoted.error("doc.update", doc_id=doc_id, update=scratch_update(demoted_doc, lambda t: t.insert(0, "no. ")))
    assert error["code"] == "forbidden"
    assert await operation_count(server.db, doc_id) == rows

    # An admin cannot remove the owner; a member cannot add members.
    assert (await admin.error("member.remove", workspace_id=ws_id, agent_id=owner.id))["code"] == "forbidden"
    assert (await plain.error("member.add", workspace_id=ws_id, agent_id=f"friend-of-{plain.id}"))["code"] == "forbidden"
    members = {m["agent_id"]: m["role"] for m in (await owner.request("member.list", workspace_id=ws_id))["members"]}
    assert members == {owner.id: "owner", demoted.id: "viewer", admin.id: "admin", plain.id: "member", removed.id: "member"}

    # Removed: its session hears of it, leaves the workspace, and its document is closed.
    gone = await owner.request("member.remove", workspace_id=ws_id, agent_id=removed.id)
    assert gone["member"]["agent_id"] == removed.id
    event = await removed.take(member_changed(removed.id, "removed"))
    assert event["agent_id"] == owner.id
    await owner.take(member_changed(removed.id, "removed"))
    error = await removed.error("doc.update", doc_id=doc_id, update=scratch_update(removed_doc, lambda t: t.insert(0, "gone. ")))
    assert error["code"] == "doc_not_open", error
    assert await operation_count(server.db, doc_id) == rows
    assert "no. " not in str(owned.text) and "gone. " not in await replayed_text(server.db, doc_id)
