"""Rights on /yjs follow membership live (docs/protocol.md#112, #114): a member demoted to viewer
is refused from the next update on, promoted back it writes again, and a removed member's
connection closes with 4403 `not_member`; the change is made on the other node, so it reaches
the editor's node through NOTIFY (server/cluster/events.py), and on the same node directly. Real nodes,
real PostgreSQL, real y-websocket editors (tests/node/yclient.mjs).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any


from tests import wsclient
from tests.e2e.conftest import (
    eventually,
    operation_count,
    operation_rows,
    replayed_text,
    shared_doc,
)
from tests.e2e.editors import Editors, YClient, tok
from tests.e2e.multinode_helpers import Nodes
from tests.serverproc import ServerProcess

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    from tests.conftest import TestDatabase

CHANGE_TIMEOUT_S = 5.0  # wide: the server applies a membership change within well under a second


def yjs_base(node: ServerProcess) -> str:
    return f"ws://{node.host}:{node.port}"


def member_changed(agent_id: str, change: str) -> Any:
    return lambda f: f["type"] == "member.changed" and f["member"]["agent_id"] == agent_id and f["change"] == change


async def agents_after(db: TestDatabase, doc_id: str, seq: int) -> list[str]:
    return [r["agent_id"] for r in await operation_rows(db, doc_id) if r["sequence_number"] > seq]


async def test_a_demoted_editor_is_refused_on_both_nodes_and_writes_again_once_promoted(
    nodes: Nodes, db: TestDatabase, editors: Editors
) -> None:
    one, two = nodes.start(2)
    alice = wsclient.Agent(nodes.url(1), tok("alice"))  # makes the changes, on node 2
    watcher = wsclient.Agent(nodes.url(0), tok("watcher"))  # hears them on node 1
    await alice.connect()
    await watcher.connect()
    try:
        ws_id, doc_id = await shared_doc(alice, watcher)  # a team workspace: editors join as members
        a = await alice.open(doc_id)
        # "ed" edits on both nodes; "olga" is another editor on node 1.
        ed_1 = await editors.start(yjs_base(one), ws_id, doc_id, tok("ed"))
        ed_2 = await editors.start(yjs_base(two), ws_id, doc_id, tok("ed"))
        olga = await editors.start(yjs_base(one), ws_id, doc_id, tok("olga"))
        await ed_1.insert("<ed as member>")
        await olga.wait_for(lambda c: "<ed as member>" in c.text)
        await a.wait_for(lambda d: "<ed as member>" in str(d.text))

        await alice.request("member.update", workspace_id=ws_id, agent_id="ed", role="viewer")
        # Node 2 applied it before replying; node 1 delivers an event to all its sessions at once.
        await watcher.event(member_changed("ed", "updated"))
        head = await operation_count(db, doc_id)
        await ed_1.type("VVVVV")  # five updates each
        await ed_2.type("WWWWW")
        for ed in (ed_1, ed_2):
            await ed.wait_for(lambda c: len(c.denied) == 5, timeout_s=CHANGE_TIMEOUT_S * 2)
            assert set(ed.denied) == {"forbidden: read-only access (viewer)"}

        # Nothing of it is stored or reaches anyone; the viewers stay connected and keep reading.
        await a.edit(lambda t: t.insert(len(t), "<alice>"))
        for reader in (ed_1, ed_2, olga):
            await reader.wait_for(lambda c: "<alice>" in c.text)
        assert await agents_after(db, doc_id, head) == ["alice"]
        for seen in (olga.text, str(a.text), await replayed_text(db, doc_id)):
            assert "V" not in seen and "W" not in seen
        assert ed_1.closes == [] and ed_2.closes == []

        # Promoted back: its next edit is stored and reaches everyone. The server asks the editor
        # for what it lacks, as at connect, so the edits it kept locally meanwhile come too.
        await alice.request("member.update", workspace_id=ws_id, agent_id="ed", role="member")
        await watcher.event(member_changed("ed", "updated"))
        await ed_1.insert("<ed again>")
        await olga.wait_for(lambda c: "<ed again>" in c.text)
        await a.wait_for(lambda d: "<ed again>" in str(d.text))
        await eventually(lambda: olga.text == ed_1.text == ed_2.text == str(a.text))
        assert "ed" in await agents_after(db, doc_id, head)

        async def stored_as_seen() -> bool:
            return await replayed_text(db, doc_id) == olga.text

        await eventually(stored_as_seen)
    finally:
        await alice.close()
        await watcher.close()


async def test_a_removed_editor_is_closed_with_not_member_on_both_nodes_and_hears_nothing_more(
    nodes: Nodes, db: TestDatabase, editors: Editors
) -> None:
    one, two = nodes.start(2)
    alice = wsclient.Agent(nodes.url(1), tok("alice"))  # removes "ed", on node 2
    await alice.connect()
    try:
        ws_id, doc_id = await shared_doc(alice)
        a = await alice.open(doc_id)
        ed_1 = await editors.start(yjs_base(one), ws_id, doc_id, tok("ed"))
        ed_2 = await editors.start(yjs_base(two), ws_id, doc_id, tok("ed"))
        olga = await editors.start(yjs_base(one), ws_id, doc_id, tok("olga"))
        await ed_1.insert("<ed as member>")
        await olga.wait_for(lambda c: "<ed as member>" in c.text)
        await ed_2.wait_for(lambda c: "<ed as member>" in c.text)
        ed_1_id = str((await ed_1.state())["clientID"])
        await ed_1.send(cmd="awareness", state={"user": {"name": "Ed"}})
        await olga.wait_for(lambda c: c.awareness.get(ed_1_id) == {"user": {"name": "Ed"}})

        started = time.monotonic()
        await alice.request("member.remove", workspace_id=ws_id, agent_id="ed")
        closed_after_s: dict[str, float] = {}

        async def closed(name: str, ed: YClient) -> None:
            await ed.wait_for(lambda c: c.closed is not None, timeout_s=CHANGE_TIMEOUT_S)
            closed_after_s[name] = time.monotonic() - started
            assert ed.closed == (4403, "not_member")

        await closed("node-1 (through NOTIFY)", ed_1)
        await closed("node-2 (the changing node)", ed_2)
        print("removed editor closed after:", {k: f"{v * 1000:.0f} ms" for k, v in closed_after_s.items()})
        await olga.wait_for(lambda c: ed_1_id not in c.awareness)  # its cursor is gone for the others

        # Closed for good (y-websocket does not reconnect after 44xx): its later edits stay local,
        # and the others' edits no longer reach it.
        head = await operation_count(db, doc_id)
        texts = (ed_1.text, ed_2.text)
        await ed_1.insert("<ed removed>")
        await ed_1.wait_for(lambda c: "<ed removed>" in c.text)
        await a.edit(lambda t: t.insert(0, "<alice after>"))
        await olga.wait_for(lambda c: "<alice after>" in c.text)
        assert (ed_1.text, ed_2.text) == (texts[0] + "<ed removed>", texts[1])
        assert await agents_after(db, doc_id, head) == ["alice"]
        assert "<ed removed>" not in await replayed_text(db, doc_id)
        assert [c[0] for c in ed_1.closes] == [4403] and [c[0] for c in ed_2.closes] == [4403]
    finally:
        await alice.close()
