"""If-Match on document writes across two nodes (docs/http.md, migration 0029): two `tandem serve`
nodes on one database each take an edit naming the same head at the same moment. Each node's
room lets its own through, so only the append, checking the expected head under the document's
row lock, can refuse one: exactly one commits, the other gets 412 and nothing of it is stored."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx

from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.conftest import operation_count, shared_doc
from tests.e2e.http_peers import PROBLEM, bearer
from tests.e2e.multinode_helpers import Nodes

if TYPE_CHECKING:
    from tests.conftest import TestDatabase

ROUNDS = 8


async def test_two_nodes_writing_on_one_if_match_commit_exactly_one(
    nodes: Nodes, db: TestDatabase
) -> None:
    nodes.start(2)
    owner = await wsclient.Agent(
        nodes.url(0), wsclient.token(TENANT_A, "alice")
    ).connect()
    try:
        ws_id, doc_id = await shared_doc(owner)
    finally:
        await owner.close()
    path = f"/v1/workspaces/{ws_id}/documents/{doc_id}"
    headers = bearer("alice")
    async with (
        httpx.AsyncClient(base_url=nodes[0].base_url, timeout=30) as one,
        httpx.AsyncClient(base_url=nodes[1].base_url, timeout=30) as two,
    ):
        expected = ""
        for round_ in range(ROUNDS):
            got = await one.get(path + "/content", headers=headers)
            assert got.status_code == 200 and got.text == expected, got.text
            head = int(got.headers["etag"].strip('"'))
            tagged = {**headers, "If-Match": f'"{head}"'}
            words = {one: f"[one {round_}]", two: f"[two {round_}]"}
            answers = await asyncio.gather(
                *(
                    client.post(
                        path + "/edits",
                        json=[{"insert": {"index": 0, "text": word}}],
                        headers=tagged,
                    )
                    for client, word in words.items()
                )
            )
            won = [a for a in answers if a.status_code == 201]
            lost = [a for a in answers if a.status_code == 412]
            assert len(won) == 1 and len(lost) == 1, [a.text for a in answers]
            assert won[0].json()["seq"] == head + 1
            problem = lost[0].json()
            assert (
                lost[0].headers["content-type"] == PROBLEM
                and problem["code"] == "conflict"
            )
            assert problem["details"]["head_seq"] >= head + 1
            assert await operation_count(db, doc_id) == head + 1
            winner = one if won[0] is answers[0] else two
            expected = words[winner] + expected
        # Both nodes serve the one history: the winners' edits, nothing of the refused ones.
        for client in (one, two):
            final = await client.get(path + "/content", headers=headers)
            assert final.text == expected and final.headers["etag"] == f'"{ROUNDS}"'
