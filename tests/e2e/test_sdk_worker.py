"""The worker of clients/README.md ("A worker"), taken from the README itself so the docs cannot
drift, run by two agents against a real `tandem serve`: every task is done exactly once, the
one whose work raises is failed with the error (after its retry); and `InvalidTransition` from
the server says the status, the action and which of the two refused (docs/protocol.md 12.4)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests import wsclient
from tests.e2e.conftest import Tandem
from tests.serverproc import REPO

if str(REPO / "clients") not in sys.path:  # the SDK is its own package; the suite uses its source
    sys.path.insert(0, str(REPO / "clients"))

import tandem_client  # noqa: E402

FAST = {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.5, "reconnect_jitter_s": 0.1}
FINAL = {"completed", "failed", "cancelled"}


def readme_worker() -> dict[str, Any]:
    """The namespace of the README's worker snippet (its `__main__` block does not run)."""
    readme = (REPO / "clients" / "README.md").read_text()
    found = re.search(r"^## A worker\n.*?^```python\n(.*?)^```", readme, re.DOTALL | re.MULTILINE)
    assert found, "clients/README.md has no '## A worker' section with a python block"
    namespace: dict[str, Any] = {"__name__": "readme_worker"}
    exec(compile(found.group(1), "clients/README.md#a-worker", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def server(module_tandem: Tandem) -> Iterator[Tandem]:
    module_tandem.start()
    yield module_tandem


class Agents:
    def __init__(self, tandem: Tandem) -> None:
        assert tandem.server is not None
        self.url = f"ws://{tandem.server.host}:{tandem.server.port}/ws"
        self.tenant = uuid.uuid4()

    def token(self, agent_id: str) -> str:
        return wsclient.token(self.tenant, agent_id)

    def connect(self, agent_id: str) -> tandem_client.Client:
        return tandem_client.connect(self.url, self.token(agent_id), **FAST)


async def until_final(ws: tandem_client.Workspace, count: int, timeout_s: float) -> list[tandem_client.Task]:
    """The workspace's tasks once all `count` of them are final (listing after each event)."""
    async with asyncio.timeout(timeout_s), ws.tasks.events() as events:
        while True:
            tasks = await ws.tasks.list()
            if len(tasks) == count and all(t.status in FINAL for t in tasks):
                return tasks
            with contextlib.suppress(TimeoutError):
                await events.next(timeout_s=1)


async def test_readme_worker_does_each_task_once_and_fails_the_one_that_raises(server: Tandem) -> None:
    worker = readme_worker()["worker"]
    agents = Agents(server)
    texts = ["one", "two words", "now three words", "and now four words"]
    async with agents.connect("lead") as lead:
        info = await lead.create_workspace("Workers", visibility="team")
        ws = await lead.join(info.workspace_id)
        good = [await ws.tasks.create(f"count {i}", parameters={"text": text}) for i, text in enumerate(texts)]
        bad = await ws.tasks.create("no text", parameters={}, max_retries=1)

        running = [asyncio.create_task(worker([agents.url], agents.token(w), info.workspace_id)) for w in ("w1", "w2")]
        try:
            tasks = {t.task_id: t for t in await until_final(ws, len(texts) + 1, timeout_s=60)}
        finally:
            for task in running:
                task.cancel()
            for task in running:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        for created, text in zip(good, texts, strict=True):
            done = tasks[created.task_id]
            assert (done.status, done.result, done.error) == ("completed", {"words": len(text.split())}, None)
            assert done.assigned_to in ("w1", "w2")
            _, history = await ws.tasks.get(done)
            assert history == []  # claimed once, never handed on
        failed = tasks[bad.task_id]
        assert (failed.status, failed.retry_count) == ("failed", 1)
        assert failed.error == "KeyError: 'text'"

        with pytest.raises(tandem_client.InvalidTransition) as refused:
            await ws.tasks.complete(good[0], {"again": True})
        assert (refused.value.status, refused.value.action) == ("completed", "complete")  # type: ignore[attr-defined]
        assert str(refused.value).endswith("cannot complete a task that is completed: a completed task is final")


async def test_invalid_transition_from_the_server_says_which_rule_refused(server: Tandem) -> None:
    agents = Agents(server)
    async with agents.connect("lead") as lead, agents.connect("bob") as bob:
        info = await lead.create_workspace("Moves", visibility="team")
        lead_ws, bob_ws = await lead.join(info.workspace_id), await bob.join(info.workspace_id)
        task = await lead_ws.tasks.create("for bob", assign_to="bob")

        with pytest.raises(tandem_client.InvalidTransition) as not_yours:
            await lead_ws.tasks.accept(task)
        assert (not_yours.value.status, not_yours.value.action) == ("assigned", "accept")  # type: ignore[attr-defined]
        assert str(not_yours.value) == (
            "invalid_transition: This state change is not allowed: "
            "cannot accept a task that is assigned: only its assignee may accept it"
        )
        with pytest.raises(tandem_client.InvalidTransition) as too_early:
            await bob_ws.tasks.complete(task, {"done": True})
        assert too_early.value.explanation == "cannot complete a task that is assigned: complete needs a task that is in_progress"
