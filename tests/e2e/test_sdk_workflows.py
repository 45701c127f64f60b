"""Workflow definitions through the SDK against a real `tandem serve` (docs/protocol.md section
12.8): define, a new version that leaves the old one as it was, get by version, list, deactivate
and reactivate; a bad definition refused with its step and pointer and nothing stored; another
workspace's or tenant's workflow id is `not_found`; viewers and members read but do not define.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests import wsclient
from tests.e2e.conftest import Tandem, admin_fetch
from tests.serverproc import REPO

if (
    str(REPO / "clients") not in sys.path
):  # the SDK is its own package; the suite uses its source
    sys.path.insert(0, str(REPO / "clients"))

import tandem_client

FAST = {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.5, "reconnect_jitter_s": 0.1}
REVIEW = [
    {"id": "draft", "task": {"title": "Draft the spec"}, "agent": "writer"},
    {
        "id": "review",
        "task": {"title": "Review it", "priority": "high"},
        "capability": "review",
        "depends_on": ["draft"],
    },
]


@pytest.fixture(scope="module")
def server(module_tandem: Tandem) -> Iterator[Tandem]:
    module_tandem.start()
    yield module_tandem


class Agents:
    """Tokens of one fresh tenant per test."""

    def __init__(self, tandem: Tandem, tenant: uuid.UUID | None = None) -> None:
        assert tandem.server is not None
        self.url = f"ws://{tandem.server.host}:{tandem.server.port}/ws"
        self.tenant = tenant or uuid.uuid4()

    def connect(self, agent_id: str) -> tandem_client.Client:
        return tandem_client.connect(
            self.url, wsclient.token(self.tenant, agent_id), **FAST
        )

    async def register_reviewer(self) -> None:
        """A registered agent with the capability REVIEW's second step needs."""
        async with self.connect("reviewer") as reviewer:
            await reviewer.agents.register("Reviewer", capabilities=["review"])


async def stored(tandem: Tandem, tenant: uuid.UUID) -> tuple[int, int]:
    """(workflows, workflow versions) of the tenant, read as the admin (past RLS)."""
    rows = await admin_fetch(
        tandem.db,
        "SELECT (SELECT count(*) FROM workflows WHERE tenant_id = $1) AS w,"
        " (SELECT count(*) FROM workflow_versions WHERE tenant_id = $1) AS v",
        tenant,
    )
    return rows[0]["w"], rows[0]["v"]


async def test_define_new_version_get_list_deactivate(server: Tandem) -> None:
    agents = Agents(server)
    await agents.register_reviewer()
    async with agents.connect("owner") as owner:
        info = await owner.create_workspace("Pipelines", visibility="team")
        ws = await owner.join(info.workspace_id)
        first = await ws.workflows.define(
            "review", "parallel", REVIEW, config={"max_parallel": 2}, description="v1"
        )
        assert (first.version, first.latest_version, first.active, first.type) == (
            1,
            1,
            True,
            "parallel",
        )
        assert first.steps[0] == {**REVIEW[0], "depends_on": []} and first.config == {
            "max_parallel": 2
        }
        assert first.created_by == "owner" and first.workspace_id == info.workspace_id

        changed = [
            *REVIEW,
            {
                "id": "merge",
                "task": {"title": "Merge"},
                "agent": "editor",
                "depends_on": ["review"],
            },
        ]
        second = await ws.workflows.define("review", "sequential", changed)
        assert (second.workflow_id, second.version, second.latest_version) == (
            first.workflow_id,
            2,
            2,
        )
        assert (
            second.config == {}
            and second.description is None
            and len(second.steps) == 3
        )

        # The old version is as it was; the latest is the default.
        old = await ws.workflows.get(first.workflow_id, version=1)
        assert (
            old.version,
            old.latest_version,
            old.type,
            old.steps,
            old.description,
        ) == (1, 2, "parallel", first.steps, "v1")
        assert (await ws.workflows.get(first)).version == 2
        with pytest.raises(tandem_client.NotFound):
            await ws.workflows.get(first.workflow_id, version=3)

        other = await ws.workflows.define("hotfix", "sequential", REVIEW[:1])
        listed = await ws.workflows.list()
        assert [(w.name, w.version, w.active) for w in listed] == [
            ("hotfix", 1, True),
            ("review", 2, True),
        ]

        gone = await ws.workflows.deactivate(other)
        assert (gone.workflow_id, gone.active) == (other.workflow_id, False)
        assert [w.name for w in await ws.workflows.list()] == ["review"]
        assert [(w.name, w.active) for w in await ws.workflows.list(include_inactive=True)] == [
            ("hotfix", False), ("review", True),
        ]  # fmt: skip
        assert (await ws.workflows.get(other)).active is False  # still readable
        # Defining it again adds a version and makes it active again.
        again = await ws.workflows.define("hotfix", "sequential", REVIEW[:1])
        assert (again.workflow_id, again.version, again.active) == (
            other.workflow_id,
            2,
            True,
        )
    assert await stored(server, agents.tenant) == (2, 4)


async def test_a_bad_definition_names_step_and_pointer_and_stores_nothing(
    server: Tandem,
) -> None:
    agents = Agents(server)
    await agents.register_reviewer()
    async with agents.connect("owner") as owner:
        ws = await owner.join((await owner.create_workspace("Pipelines")).workspace_id)
        cycle = [{**REVIEW[0], "depends_on": ["review"]}, REVIEW[1]]
        with pytest.raises(tandem_client.InvalidWorkflow) as info:
            await ws.workflows.define("review", "parallel", cycle)
        err = info.value
        assert (err.code, err.step, err.pointer, err.cycle) == (
            "invalid_workflow", "draft", "/steps/0/depends_on/0", ["draft", "review", "draft"],
        )  # fmt: skip
        assert "draft" in str(err)
        bad_cel = [REVIEW[0], {**REVIEW[1], "condition": "steps.draft.approved &&"}]
        with pytest.raises(tandem_client.InvalidWorkflow) as info:
            await ws.workflows.define("review", "conditional", bad_cel)
        assert (info.value.step, info.value.pointer) == ("review", "/steps/1/condition")
        # A refused new version leaves the stored one untouched.
        good = await ws.workflows.define("review", "parallel", REVIEW)
        with pytest.raises(tandem_client.InvalidWorkflow) as info:
            await ws.workflows.define(
                "review", "parallel", [{**REVIEW[0], "capability": "write"}]
            )
        assert (info.value.step, info.value.pointer) == ("draft", "/steps/0/capability")
        unknown = [REVIEW[0], {**REVIEW[1], "capability": "translate"}]
        with pytest.raises(tandem_client.InvalidWorkflow) as info:
            await ws.workflows.define("review", "parallel", unknown)
        assert (info.value.step, info.value.pointer) == ("review", "/steps/1/capability")
        assert "no registered agent has capability 'translate'" in info.value.reason
        assert (await ws.workflows.get(good)).latest_version == 1
        # The session goes on.
        assert len(await ws.workflows.list()) == 1
    assert await stored(server, agents.tenant) == (1, 1)


async def test_other_workspaces_and_tenants_workflows_are_not_found(
    server: Tandem,
) -> None:
    agents, strangers = Agents(server), Agents(server)
    await agents.register_reviewer()
    await strangers.register_reviewer()
    async with agents.connect("owner") as owner, strangers.connect("owner") as stranger:
        mine = await owner.join((await owner.create_workspace("Mine")).workspace_id)
        second = await owner.join((await owner.create_workspace("Second")).workspace_id)
        theirs = await stranger.join(
            (await stranger.create_workspace("Theirs")).workspace_id
        )
        flow = await mine.workflows.define("review", "parallel", REVIEW)
        for ws in (theirs, second):
            with pytest.raises(tandem_client.NotFound):
                await ws.workflows.get(flow.workflow_id)
            with pytest.raises(tandem_client.NotFound):
                await ws.workflows.deactivate(flow.workflow_id)
            assert await ws.workflows.list(include_inactive=True) == []
        # A workflow of the same name elsewhere is another workflow.
        same_name = await theirs.workflows.define("review", "parallel", REVIEW)
        assert same_name.workflow_id != flow.workflow_id and same_name.version == 1
        assert (await mine.workflows.get(flow)).active is True
    assert await stored(server, agents.tenant) == (1, 1)


async def test_viewers_and_members_read_but_only_owners_and_admins_define(
    server: Tandem,
) -> None:
    agents = Agents(server)
    await agents.register_reviewer()
    async with (
        agents.connect("owner") as owner, agents.connect("admin") as admin,
        agents.connect("member") as member, agents.connect("viewer") as viewer,
    ):  # fmt: skip
        info = await owner.create_workspace("Pipelines")
        ws = await owner.join(info.workspace_id)
        await ws.members.add("admin", role="admin")
        await ws.members.add("member", role="member")
        await ws.members.add("viewer", role="viewer")
        flow = await ws.workflows.define("review", "parallel", REVIEW)
        for client in (member, viewer):
            theirs = await client.join(info.workspace_id)
            assert (await theirs.workflows.get(flow.workflow_id)).name == "review"
            assert [w.name for w in await theirs.workflows.list()] == ["review"]
            with pytest.raises(tandem_client.Forbidden):
                await theirs.workflows.define("review", "parallel", REVIEW)
            with pytest.raises(tandem_client.Forbidden):
                await theirs.workflows.deactivate(flow)
        admins = await admin.join(info.workspace_id)
        assert (
            await admins.workflows.define("review", "sequential", REVIEW)
        ).created_by == "admin"
        assert (await admins.workflows.deactivate(flow)).active is False
    assert await stored(server, agents.tenant) == (1, 2)


async def test_concurrent_defines_of_one_name_get_consecutive_versions(
    server: Tandem,
) -> None:
    agents = Agents(server)
    await agents.register_reviewer()
    async with agents.connect("owner") as owner, agents.connect("admin") as admin:
        info = await owner.create_workspace("Pipelines")
        ws = await owner.join(info.workspace_id)
        await ws.members.add("admin", role="admin")
        theirs = await admin.join(info.workspace_id)
        defined = await asyncio.gather(
            *(
                w.workflows.define("review", "parallel", REVIEW)
                for w in (ws, theirs)
                for _ in range(5)
            )
        )
        assert sorted(d.version for d in defined) == list(range(1, 11))
        assert len({d.workflow_id for d in defined}) == 1
    assert await stored(server, agents.tenant) == (1, 10)
