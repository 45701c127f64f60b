"""The agent registry (docs/protocol.md section 12.7) through the SDK against real `tandem serve`
processes: register, update and list with load; health counters moved by task outcomes; every
bad input refused with its typed error and nothing stored; and the listed status following an
agent's connections across two nodes (active wherever it is connected, inactive a TTL after it
left everywhere, maintenance kept)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests import wsclient
from tests.e2e.conftest import Tandem, eventually
from tests.e2e.multinode_helpers import Nodes
from tests.serverproc import REPO

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    pass

if (
    str(REPO / "clients") not in sys.path
):  # the SDK is its own package; the suite uses its source
    sys.path.insert(0, str(REPO / "clients"))

import tandem_client  # noqa: E402

FAST = {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.5, "reconnect_jitter_s": 0.1}
PRESENCE_TTL_S = (
    1.5  # heartbeat every 0.5 s: the two-node test waits a few TTLs, not minutes
)


@pytest.fixture(scope="module")
def server(module_tandem: Tandem) -> Iterator[Tandem]:
    """One node for the module's single-node tests; each test works in its own tenant."""
    module_tandem.start()
    yield module_tandem


def connect(url: str, tenant: uuid.UUID, agent_id: str) -> tandem_client.Client:
    return tandem_client.connect(url, wsclient.token(tenant, agent_id), **FAST)


def by_id(agents: list[tandem_client.Agent]) -> dict[str, tandem_client.Agent]:
    return {a.agent_id: a for a in agents}


# --- one node --------------------------------------------------------------------------------


async def test_register_update_and_list_with_load_and_health_counters(
    server: Tandem,
) -> None:
    tenant = uuid.uuid4()
    async with (
        connect(server.url, tenant, "lead") as lead,
        connect(server.url, tenant, "writer") as writer,
    ):
        first = await writer.agents.register(
            "Writer", kind="llm", capabilities=["write"], max_concurrent_tasks=3
        )
        assert (first.agent_id, first.status, first.load, first.free_slots) == (
            "writer",
            "active",
            0,
            3,
        )
        again = await writer.agents.register(
            "Writer", kind="llm", capabilities=["write"], max_concurrent_tasks=3
        )
        assert again.created_at == first.created_at  # idempotent: the same registration
        updated = await writer.agents.register(
            "Writer 2",
            kind="llm",
            capabilities=["write", "review"],
            max_concurrent_tasks=2,
            metadata={"model": "m-1"},
        )
        assert (updated.name, updated.capabilities, updated.metadata) == (
            "Writer 2",
            ["write", "review"],
            {"model": "m-1"},
        )
        await lead.agents.register("Lead", capabilities=["plan"])

        info = await lead.create_workspace("Agents", visibility="team")
        ws = await lead.join(info.workspace_id)
        mine = await writer.join(info.workspace_id)
        done = await ws.tasks.create("Draft", assign_to="writer", max_retries=0)
        broken = await ws.tasks.create("Fix", assign_to="writer", max_retries=0)
        await ws.tasks.create("Plan", assign_to="lead")

        listed = by_id(await lead.agents.list(capability="review"))
        assert list(listed) == ["writer"]
        assert (listed["writer"].load, listed["writer"].free_slots) == (2, 0)
        assert [a.agent_id for a in await lead.agents.list()] == ["lead", "writer"]

        for task in (done, broken):
            await mine.tasks.accept(task)
            await mine.tasks.start(task)
        await mine.tasks.fail(broken, "no luck")
        counted = by_id(await lead.agents.list())["writer"]
        assert (
            counted.tasks_completed,
            counted.tasks_failed,
            counted.consecutive_failures,
        ) == (0, 1, 1)
        assert counted.load == 1
        await mine.tasks.complete(done, {"ok": True})
        counted = by_id(await lead.agents.list())["writer"]
        assert (
            counted.tasks_completed,
            counted.tasks_failed,
            counted.consecutive_failures,
        ) == (1, 1, 0)
        assert (counted.load, counted.free_slots) == (0, 2)


async def test_set_status_is_the_callers_own_and_lists_filter_by_status(
    server: Tandem,
) -> None:
    tenant = uuid.uuid4()
    async with (
        connect(server.url, tenant, "a") as a,
        connect(server.url, tenant, "b") as b,
    ):
        with pytest.raises(tandem_client.NotFound):
            await a.agents.set_status("maintenance")  # never registered
        await a.agents.register("A")
        await b.agents.register("B")
        assert (await a.agents.set_status("maintenance")).status == "maintenance"
        assert [x.agent_id for x in await b.agents.list(status=["maintenance"])] == [
            "a"
        ]
        assert [x.agent_id for x in await b.agents.list(status=["active"])] == ["b"]
        await a.agents.register("A again")  # a registration update keeps the status set
        assert by_id(await b.agents.list())["a"].status == "maintenance"
        assert (await a.agents.set_status("active")).status == "active"


BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    (
        "agent.register",
        {"name": "X", "capabilities": "write"},
        "capabilities",
    ),  # not a list
    (
        "agent.register",
        {"name": "X", "capabilities": [1]},
        "capabilities",
    ),  # not strings
    (
        "agent.register",
        {"name": "X", "capabilities": ["x" * 65]},
        "capabilities",
    ),  # too long
    ("agent.register", {"name": "X", "capabilities": ["has space"]}, "capabilities"),
    (
        "agent.register",
        {"name": "X", "capabilities": [f"c{i}" for i in range(33)]},
        "capabilities",
    ),  # too many
    (
        "agent.register",
        {"name": "X", "capabilities": ["a", "a"]},
        "capabilities",
    ),  # repeated
    (
        "agent.register",
        {"name": "X", "max_concurrent_tasks": 0},
        "max_concurrent_tasks",
    ),
    (
        "agent.register",
        {"name": "X", "max_concurrent_tasks": -3},
        "max_concurrent_tasks",
    ),
    (
        "agent.register",
        {"name": "X", "metadata": {"blob": "x" * 9000}},
        "metadata",
    ),  # too big
    ("agent.register", {"name": "X", "metadata": ["not", "an", "object"]}, "metadata"),
    ("agent.register", {"name": "  "}, "name"),
    ("agent.register", {}, "name"),
    ("agent.set_status", {"status": "sleeping"}, "status"),  # unknown status
    ("agent.set_status", {"status": "inactive"}, "status"),  # derived, never set
    ("agent.list", {"limit": 0}, "limit"),
    ("agent.list", {"status": ["gone"]}, "status"),
]


@pytest.mark.parametrize(
    ("type_", "fields", "field"),
    BAD_REQUESTS,
    ids=[f"{t}-{f}-{i}" for i, (t, _, f) in enumerate(BAD_REQUESTS)],
)
async def test_each_bad_input_gets_invalid_message_and_stores_nothing(
    server: Tandem, type_: str, fields: dict[str, Any], field: str
) -> None:
    tenant = uuid.uuid4()
    async with wsclient.Agent(server.url, wsclient.token(tenant, "bad")) as agent:
        if type_ == "agent.set_status":
            await agent.request("agent.register", name="Bad")
        before = (await agent.request("agent.list"))["agents"]
        err = await agent.error(type_, **fields)
        assert err["code"] == "invalid_message"
        assert any(e["field"].startswith(field) for e in err["details"]["errors"]), err
        assert (await agent.request("agent.list"))["agents"] == before


async def test_an_agent_that_never_registered_is_not_listed(server: Tandem) -> None:
    tenant = uuid.uuid4()
    async with (
        connect(server.url, tenant, "quiet") as quiet,
        connect(server.url, tenant, "loud") as loud,
    ):
        await loud.agents.register("Loud")
        assert [a.agent_id for a in await quiet.agents.list()] == ["loud"]


# --- two nodes -------------------------------------------------------------------------------


async def test_status_follows_connections_on_every_node(nodes: Nodes) -> None:
    nodes.start(2, TANDEM_PRESENCE_TTL_S=str(PRESENCE_TTL_S))
    tenant = uuid.uuid4()
    async with connect(nodes.url(0), tenant, "watcher") as watcher:
        worker = await connect(nodes.url(1), tenant, "worker").start()
        keeper = await connect(nodes.url(1), tenant, "keeper").start()
        try:
            await worker.agents.register("Worker", capabilities=["write"])
            await keeper.agents.register("Keeper")
            await keeper.agents.set_status("maintenance")

            async def status_of(agent_id: str) -> str:
                return by_id(await watcher.agents.list())[agent_id].status

            assert (
                await status_of("worker") == "active"
            )  # connected on node 2 only, listed from node 1
            # Connected past several TTLs: node 2's heartbeat keeps it active.
            stamped = by_id(await watcher.agents.list())["worker"].last_seen_at
            await eventually(
                lambda: _seen_after(watcher, "worker", stamped), timeout_s=10
            )
            assert await status_of("worker") == "active"
        finally:
            await worker.close()
            await keeper.close()
        await eventually(
            lambda: _status_is(watcher, "worker", "inactive"), timeout_s=10
        )
        assert await status_of("keeper") == "maintenance"  # an explicit status stays
        assert [
            a.agent_id
            for a in await watcher.agents.list(capability="write", status=["inactive"])
        ] == ["worker"]


async def _seen_after(
    client: tandem_client.Client, agent_id: str, stamp: str | None
) -> bool:
    return (by_id(await client.agents.list())[agent_id].last_seen_at or "") > (
        stamp or ""
    )


async def _status_is(client: tandem_client.Client, agent_id: str, status: str) -> bool:
    return by_id(await client.agents.list())[agent_id].status == status
