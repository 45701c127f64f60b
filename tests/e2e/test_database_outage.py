"""A real server whose database connections PostgreSQL ends under two writers (docs/operations.md,
"When the database is away"): every update gets a reply, `doc.update.ok` or `unavailable`, and
writes go on once the database answers; nothing acknowledged is missing from the log."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from typing import TYPE_CHECKING, Any

import asyncpg

from tests import wsclient
from tests.conftest import TENANT_A
from tests.e2e.conftest import Tandem, operation_rows, shared_doc
from tests.test_committer_outage import terminate_app_backends

if TYPE_CHECKING:
    from tests.conftest import Postgres

ROUNDS = 3
EDITS_PER_ROUND = 20


async def test_writers_get_a_reply_to_every_update_when_the_database_ends_the_servers_connections(
    tandem: Tandem, postgres: Postgres
) -> None:
    server = tandem.start(TANDEM_COMMIT_UNAVAILABLE_AFTER_S="3")
    admin = await asyncpg.connect(tandem.db.admin_url)
    try:
        async with tandem.agent(TENANT_A, "alice") as alice, tandem.agent(TENANT_A, "bob") as bob:
            _ws_id, doc_id = await shared_doc(alice, bob)
            writers = [await alice.open(doc_id), await bob.open(doc_id)]
            sent: dict[tuple[int, int], bytes] = {}
            replies: list[tuple[tuple[int, int], asyncio.Future[dict[str, Any]]]] = []

            async def edit(n: int, label: str) -> None:
                rid, update, reply = await writers[n].send_edit(lambda t: t.insert(len(t), label))
                sent[(n, rid)] = update
                replies.append(((n, rid), reply))

            for r in range(ROUNDS):
                for i in range(EDITS_PER_ROUND):
                    for n in range(2):
                        await edit(n, f"{n}.{r}.{i} ")
                # The server's pool, its writers' connections and its LISTEN connection end here.
                await terminate_app_backends(admin, tandem.db, postgres.settings.app_role)
            async with asyncio.timeout(60):
                frames = dict(zip([key for key, _ in replies], await asyncio.gather(*(f for _, f in replies))))
            outcomes = Counter(f["code"] if f["type"] == "error" else f["type"] for f in frames.values())
            # `update_ahead`: sent after one of the writer's own was refused, building on it.
            assert set(outcomes) <= {"doc.update.ok", "unavailable", "update_ahead"}, outcomes

            # Like the SDK after `unavailable`: open again and send what the server lacks.
            for agent, doc in ((alice, writers[0]), (bob, writers[1])):
                await agent.open(doc_id, doc)
                missing = doc.doc.get_update(base64.b64decode(doc.open_reply["state_vector"]))
                await agent.request("doc.update", doc_id=doc_id, update=wsclient.b64(missing))
            # Writes go on: probe until both writers' updates commit again, then every one commits.
            for _ in range(20):
                probes = [await writers[n].edit(lambda t, n=n: t.insert(len(t), f"probe {n} ")) for n in range(2)]
                if all(p["type"] == "doc.update.ok" for p in probes):
                    break
            else:
                raise AssertionError("the writers never committed again")
            after = [await writers[n].edit(lambda t, n=n, i=i: t.insert(len(t), f"after {n}.{i} ")) for i in range(10) for n in range(2)]
            assert all(f["type"] == "doc.update.ok" and f["seq"] is not None for f in after)
            assert server.get("/healthz").status_code == 200

        rows = {r["sequence_number"]: bytes(r["update"]) for r in await operation_rows(tandem.db, doc_id)}
        assert sorted(rows) == list(range(1, len(rows) + 1))
        for key, frame in frames.items():
            if frame["type"] == "doc.update.ok" and frame["seq"] is not None:
                assert rows[frame["seq"]] == sent[key], f"acknowledged seq {frame['seq']} is not the update sent"
        assert len(set(rows.values())) == len(rows), "an update stored twice"
    finally:
        await admin.close()
