"""The execution engine (server/workspaces/executions.py) against real PostgreSQL as the
application role: sequential runs, fan-out and join, conditions, retries, on_failure, pause,
resume and cancel, and refused input (docs/protocol.md section 12.9).
"""

# ruff: noqa: F811  (each test takes the imported `env` fixture as its parameter)

from __future__ import annotations

import uuid

from server.core.errors import ErrorCode
from server.workspaces import executions, tasks, workflows
from tests.conftest import TENANT_B
from tests.execution_helpers import (
    SEEN_S,
    act,
    control,
    define,
    execution,
    finish,
    open_tasks,
    register,
    start,
    step,
)
from tests.task_helpers import env, refused, tx  # noqa: F401  (env: the fixture the tests take)


async def test_a_sequential_run_passes_results_along_and_completes(env) -> None:
    await register(env, "alice", ["write"])
    flow = await define(env, "seq", {"type": "sequential", "steps": [
        step("draft"), step("edit", depends_on=["draft"]), step("publish", depends_on=["edit"], agent="bob"),
    ]})  # fmt: skip
    out = await start(env, flow, {"topic": "cats"})
    ex = out.execution
    assert (
        ex.status == "running"
        and ex.input == {"topic": "cats"}
        and out.action == "start"
    )
    [(draft, action, delegation)] = out.tasks
    assert (draft.step_id, draft.attempt, draft.assigned_to, action) == (
        "draft",
        1,
        "alice",
        "create",
    )
    assert (
        delegation.delegation_type == "automatic" and delegation.to_agent_id == "alice"
    )
    edit = (await finish(env, draft, words=10)).tasks[0][0]
    assert edit.step_id == "edit"
    publish = (await finish(env, edit, words=12)).tasks[0][0]
    assert publish.assigned_to == "bob" and publish.step_id == "publish"
    last = await finish(env, publish, url="https://x")
    assert last.action == "complete" and last.execution.status == "completed"
    assert last.execution.step_results == {
        "draft": {"words": 10},
        "edit": {"words": 12},
        "publish": {"url": "https://x"},
    }
    assert last.execution.output == last.execution.step_results
    assert {s["status"] for s in last.execution.step_states.values()} == {"completed"}
    assert last.execution.completed_at is not None


async def test_twenty_branches_fan_out_over_free_agents_and_join_once(env) -> None:
    for agent in ("alice", "bob", "carl", "dave"):
        await register(env, agent, ["write"], slots=5)
    branches = [step(f"b{i}", depends_on=["split"]) for i in range(20)]
    flow = await define(env, "fan", {"type": "parallel", "config": {"output_step": "join"}, "steps": [
        step("split"), *branches, step("join", depends_on=[b["id"] for b in branches]),
    ]})  # fmt: skip
    out = await start(env, flow)
    split = out.tasks[0][0]
    fanned = await finish(env, split)
    created = [t for t, action, _ in fanned.tasks if action == "create"]
    assert sorted(t.step_id for t in created) == sorted(f"b{i}" for i in range(20))
    load = {
        a: sum(t.assigned_to == a for t in created)
        for a in ("alice", "bob", "carl", "dave")
    }
    assert load == {
        "alice": 5,
        "bob": 5,
        "carl": 5,
        "dave": 5,
    }  # least-loaded first, up to each one's slots
    kinds = [d.delegation_type for _, _, d in fanned.tasks]
    assert (
        kinds[0] == "load_balance" and kinds[-1] == "automatic"
    )  # the last free slot had no rival
    joins = []
    for task in created:
        done = await finish(env, task, branch=task.step_id)
        joins += [t for t, action, _ in done.tasks if t.step_id == "join"]
    assert len(joins) == 1
    final = await finish(env, joins[0], merged=True)
    assert final.execution.status == "completed" and final.execution.output == {
        "merged": True
    }
    _, found = await execution(env, final.execution.execution_id)
    assert sum(t.step_id == "join" for t in found) == 1 and len(found) == 22


async def test_a_conditional_workflow_takes_the_branch_its_input_picks(env) -> None:
    await register(env, "alice", ["write"])
    flow = await define(env, "cond", {"type": "conditional", "steps": [
        step("triage"),
        step("bug", depends_on=["triage"], condition='input.kind == "bug"'),
        step("feature", depends_on=["triage"], condition='input.kind == "feature" && steps.triage.size < 5'),
        step("other", depends_on=["triage"], condition='!(input.kind in ["bug", "feature"])'),
        step("close", depends_on=["bug", "feature", "other"]),
    ]})  # fmt: skip
    for kind in ("bug", "feature", "question"):
        out = await start(env, flow, {"kind": kind})
        branch = await finish(env, out.tasks[0][0], size=3)
        [(task, _, _)] = branch.tasks
        want = {"bug": "bug", "feature": "feature", "question": "other"}[kind]
        assert task.step_id == want
        states = branch.execution.step_states
        assert {s for s, v in states.items() if v["status"] == "skipped"} == {
            "bug",
            "feature",
            "other",
        } - {want}
        close = (await finish(env, task)).tasks[0][0]
        assert close.step_id == "close"
        assert (await finish(env, close)).execution.status == "completed"


async def test_a_condition_that_errors_fails_the_execution_with_its_error(env) -> None:
    await register(env, "alice", ["write"])
    flow = await define(env, "bad_cond", {"type": "conditional", "steps": [
        step("a"), step("b", depends_on=["a"], condition="steps.a.missing > 1"),
    ]})  # fmt: skip
    out = await finish(env, (await start(env, flow)).tasks[0][0])
    assert out.execution.status == "failed" and out.action == "fail"
    assert (
        "condition failed" in out.execution.error and "missing" in out.execution.error
    )


async def test_a_failed_step_retries_within_its_budget_then_fails_the_execution(
    env,
) -> None:
    await register(env, "alice", ["write"])
    flow = await define(env, "retry", {"type": "sequential", "steps": [
        step("flaky", task={"title": "flaky", "max_retries": 2}), step("after", depends_on=["flaky"]),
    ]})  # fmt: skip
    task = (await start(env, flow)).tasks[0][0]
    for attempt in (2, 3):
        out = await finish(env, task, ok=False, error=f"boom {attempt - 1}")
        [(task, _, _)] = [t for t in out.tasks if t[1] == "create"]
        assert (task.step_id, task.attempt) == ("flaky", attempt)
        assert out.execution.status == "running"
    out = await finish(env, task, ok=False, error="boom 3")
    assert (
        out.execution.status == "failed"
        and out.execution.error == "step 'flaky' failed: boom 3"
    )
    _, found = await execution(env, out.execution.execution_id)
    assert [(t.step_id, t.attempt, t.status) for t in found] == [
        ("flaky", n, "failed") for n in (1, 2, 3)
    ]


async def test_on_failure_runs_the_compensating_step_and_the_run_goes_on(env) -> None:
    await register(env, "alice", ["write"])
    flow = await define(env, "comp", {"type": "sequential", "steps": [
        step("charge", on_failure="refund"), step("refund"), step("notify", depends_on=["charge"]),
    ]})  # fmt: skip
    out = await start(env, flow)
    assert [t.step_id for t, _, _ in out.tasks] == [
        "charge"
    ]  # a compensating step waits for its failure
    out = await finish(env, out.tasks[0][0], ok=False, error="card declined")
    [(refund, _, _)] = out.tasks
    assert (
        refund.step_id == "refund"
        and out.execution.step_states["charge"]["status"] == "failed"
    )
    out = await finish(env, refund, refunded=True)
    [(notify, _, _)] = out.tasks
    assert notify.step_id == "notify"
    out = await finish(env, notify)
    assert out.execution.status == "completed"
    assert out.execution.step_results == {"refund": {"refunded": True}, "notify": {}}

    ok = await start(env, flow)  # no failure: the compensating step is recorded skipped
    done = await finish(env, ok.tasks[0][0])
    assert done.execution.step_states["refund"]["status"] == "skipped"


async def test_pause_holds_new_steps_until_resume_and_cancel_cancels_open_tasks(
    env,
) -> None:
    await register(env, "alice", ["write"])
    flow = await define(env, "pr", {"type": "parallel", "steps": [
        step("a"), step("b"), step("c", depends_on=["a", "b"]),
    ]})  # fmt: skip
    out = await start(env, flow)
    ex_id = out.execution.execution_id
    a, b = (t for t, _, _ in out.tasks)
    paused = await control(env, ex_id, "pause")
    assert paused.execution.status == "paused" and paused.previous_status == "running"
    await finish(env, a, x=1)
    held = await finish(env, b, y=2)
    assert held.execution.status == "paused" and held.tasks == []
    assert held.execution.step_results == {"a": {"x": 1}, "b": {"y": 2}}
    resumed = await control(env, ex_id, "resume")
    assert resumed.execution.status == "running" and [
        t.step_id for t, _, _ in resumed.tasks
    ] == ["c"]
    cancelled = await control(env, ex_id, "cancel")
    assert (
        cancelled.execution.status == "cancelled"
        and cancelled.execution.completed_at is not None
    )
    assert [(t.step_id, t.status, action) for t, action, _ in cancelled.tasks] == [
        ("c", "cancelled", "cancel")
    ]
    _, found = await execution(env, ex_id)
    assert open_tasks(found) == []
    error = await refused(control(env, ex_id, "resume"), ErrorCode.INVALID_TRANSITION)
    assert error.details == {"status": "cancelled", "action": "resume"}


async def test_a_step_with_no_free_agent_waits_and_is_given_out_when_a_slot_frees(
    env,
) -> None:
    await register(env, "alice", ["write"], slots=1)
    flow = await define(
        env, "wait", {"type": "parallel", "steps": [step("a"), step("b")]}
    )
    out = await start(env, flow)
    (a, _, da), (b, _, db) = out.tasks
    assert (a.assigned_to, a.status, da.delegation_type) == (
        "alice",
        "assigned",
        "automatic",
    )
    assert (b.assigned_to, b.status, db) == (None, "pending", None)
    assert out.waiting is True  # the save saw b waiting: the next outcome asks for it
    freed = await finish(env, a)
    [(given, action, delegation)] = freed.tasks
    assert (given.task_id, given.assigned_to, action, delegation.delegation_type) == (
        b.task_id,
        "alice",
        "assign",
        "automatic",
    )
    # Nothing waits any more: the outcome saved that and asked for no waiting task.
    done = await finish(env, given)
    assert done.waiting is False and done.tasks == []


async def test_another_tenants_execution_is_not_found_and_unchanged(env) -> None:
    await register(env, "alice", ["write"])
    flow = await define(env, "mine", {"type": "sequential", "steps": [step("a")]})
    ex_id = (await start(env, flow)).execution.execution_id
    async with tx(env.pool, "beth", TENANT_B) as conn:
        await refused(executions.get(conn, None, ex_id, 10), ErrorCode.NOT_FOUND)
        for action in ("pause", "cancel"):
            await refused(
                executions.control(conn, "owner", env.ws_b, ex_id, action, 60.0),
                ErrorCode.NOT_FOUND,
            )
        assert await executions.list_executions(conn, env.ws_a, None, None, 10) == (
            [],
            False,
        )
    ex, found = await execution(env, ex_id)
    assert ex.status == "running" and [t.status for t in found] == ["assigned"]


async def test_bad_starts_are_refused_and_store_nothing(env) -> None:
    await register(env, "alice", ["write"])
    flow = await define(env, "refusals", {"type": "sequential", "steps": [step("a")]})
    before = await env.admin.fetchval("SELECT count(*) FROM workflow_executions")
    big = {"blob": "x" * 2000}
    error = await refused(
        start(env, flow, big, max_input_bytes=1000), ErrorCode.LIMIT_EXCEEDED
    )
    assert error.details == {"limit": "max_execution_input_bytes", "value": 1000}
    await refused(start(env, uuid.uuid4()), ErrorCode.NOT_FOUND)
    await refused(
        start(env, flow, agent="beth", tenant=TENANT_B, workspace_id=env.ws_b),
        ErrorCode.NOT_FOUND,
    )
    await refused(start(env, flow, agent="vera"), ErrorCode.FORBIDDEN)
    await refused(start(env, flow, version=7), ErrorCode.NOT_FOUND)
    async with tx(env.pool, "olivia") as conn:
        await workflows.deactivate(conn, "owner", env.ws_a, flow)
    error = await refused(start(env, flow), ErrorCode.CONFLICT)
    assert error.details == {"workflow_id": str(flow), "active": False}
    assert (
        await env.admin.fetchval("SELECT count(*) FROM workflow_executions") == before
    )
    assert (
        await env.admin.fetchval(
            "SELECT count(*) FROM tasks WHERE execution_id IS NOT NULL"
        )
        == 0
    )


async def test_a_step_task_that_times_out_is_retried_by_the_sweep_s_transaction(
    env,
) -> None:
    await register(env, "alice", ["write"])
    flow = await define(env, "slow", {"type": "sequential", "steps": [
        step("slow", task={"title": "slow", "timeout_s": 1, "max_retries": 1}),
    ]})  # fmt: skip
    first = (await start(env, flow)).tasks[0][0]
    await act(env, "alice", first.task_id, "accept")
    await act(env, "alice", first.task_id, "start")
    await env.admin.execute(
        "UPDATE tasks SET started_at = started_at - interval '1 hour' WHERE id = $1",
        first.task_id,
    )
    async with tx(
        env.pool, "system"
    ) as conn:  # what each node's sweep does, tenant by tenant
        [(task_id, _)] = await tasks.sweep_timeouts(conn, 10)
        out = await executions.after_outcome(
            conn, await tasks.get_task(conn, task_id), "timeout", SEEN_S
        )
    [(retry, action, _)] = out.tasks
    assert (retry.step_id, retry.attempt, action) == ("slow", 2, "create")
    assert out.execution.step_states["slow"]["status"] == "running"
    assert out.execution.step_states["slow"]["attempt"] == 2
    done = await finish(env, retry, ok=True)
    assert done.execution.status == "completed"
