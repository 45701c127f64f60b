"""Collaborative steps (docs/protocol.md sections 12.8 and 12.9): a step done by several named
agents on one document starts a task for each, completes when every one of them has, with their
results by agent, and a failure of one ends the others' tasks of that attempt.
"""

# ruff: noqa: F811  (each test takes the imported `env` fixture as its parameter)

from __future__ import annotations

import uuid

from tests.execution_helpers import define as define_flow
from tests.execution_helpers import execution, finish, open_tasks, start
from tests.task_helpers import env  # noqa: F401  (the fixture the tests take)

DOC = str(uuid.UUID(int=7))


def flow(max_retries: int = 0) -> dict:
    return {"type": "collaborative", "steps": [
        {"id": "edit", "task": {"title": "Edit together", "max_retries": max_retries}, "agents": ["alice", "bob"],
         "document_id": DOC},
        {"id": "merge", "task": {"title": "Merge"}, "agent": "carl", "depends_on": ["edit"]},
    ]}  # fmt: skip


async def test_a_collaborative_step_gives_each_agent_the_document_and_completes_when_all_have(
    env,
) -> None:
    out = await start(env, await define_flow(env, "together", flow()))
    made = sorted((t for t, _, _ in out.tasks), key=lambda t: t.assigned_to)
    assert [(t.step_id, t.assigned_to, t.attempt, t.parameters["document_id"]) for t in made] == [
        ("edit", "alice", 1, DOC), ("edit", "bob", 1, DOC),
    ]  # fmt: skip
    alice, bob = made
    after_alice = await finish(env, alice, notes="intro")
    assert after_alice.tasks == [] and after_alice.execution.status == "running"
    assert "edit" not in after_alice.execution.step_results
    after_bob = await finish(env, bob, notes="ending")
    [(merge, action, _)] = after_bob.tasks
    assert (merge.step_id, merge.assigned_to, action) == ("merge", "carl", "create")
    assert after_bob.execution.step_results == {
        "edit": {"alice": {"notes": "intro"}, "bob": {"notes": "ending"}}
    }
    last = await finish(env, merge, merged=True)
    assert last.execution.status == "completed"


async def test_one_agent_failing_ends_the_others_task_and_the_retry_starts_all_again(
    env,
) -> None:
    out = await start(
        env, await define_flow(env, "retry together", flow(max_retries=1))
    )
    alice, bob = sorted((t for t, _, _ in out.tasks), key=lambda t: t.assigned_to)
    await finish(env, alice, notes="done first")
    failed = await finish(env, bob, ok=False, error="could not")
    moved = {(t.assigned_to, t.attempt, action) for t, action, _ in failed.tasks}
    assert moved == {("alice", 2, "create"), ("bob", 2, "create")}
    state = failed.execution.step_states["edit"]
    assert (
        state["status"] == "running"
        and state["attempt"] == 2
        and "results" not in state
    )
    _, found = await execution(env, failed.execution.execution_id)
    assert sorted((t.assigned_to, t.attempt) for t in open_tasks(found)) == [
        ("alice", 2),
        ("bob", 2),
    ]
    retry = sorted((t for t in open_tasks(found)), key=lambda t: t.assigned_to)
    await finish(env, retry[0], notes="again")
    failed_again = await finish(env, retry[1], ok=False, error="still could not")
    assert (
        failed_again.execution.status == "failed"
        and "still could not" in failed_again.execution.error
    )


async def test_a_failure_cancels_the_other_agent_s_open_task(env) -> None:
    out = await start(env, await define_flow(env, "cancel together", flow()))
    _, bob = sorted((t for t, _, _ in out.tasks), key=lambda t: t.assigned_to)
    failed = await finish(env, bob, ok=False, error="gave up")
    cancelled = [
        (t.assigned_to, action) for t, action, _ in failed.tasks if action == "cancel"
    ]
    assert cancelled == [("alice", "cancel")]
    assert failed.execution.status == "failed"
    _, found = await execution(env, failed.execution.execution_id)
    assert open_tasks(found) == []
