"""The node's task supervisor (server/core/supervisor.py): a task that raises is logged, counted and
started again with a growing backoff; cancellation is the only way one ends for good."""

from __future__ import annotations

import asyncio

from server.core.metrics import Metrics
from server.core.supervisor import Supervisor

DEADLINE_S = 10.0


async def eventually(condition, timeout_s: float = DEADLINE_S) -> None:
    """Wait for `condition()` under a deadline; the pause between checks yields to the tasks."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


def restarts_metric(metrics: Metrics, task: str) -> float:
    value = metrics.registry.get_sample_value("tandem_task_restarts_total", {"task": task})
    return value or 0.0


async def test_a_task_that_raises_is_restarted_counted_and_shown_up_again() -> None:
    metrics = Metrics()
    supervisor = Supervisor(metrics, initial_s=0.01, max_s=0.05)
    runs: list[int] = []
    running = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs) + 1)
        if len(runs) <= 2:
            raise RuntimeError(f"crash {len(runs)}")
        running.set()
        await asyncio.Event().wait()  # runs until cancelled

    entry = supervisor.start("flaky", flaky)
    try:
        async with asyncio.timeout(DEADLINE_S):
            await running.wait()
        assert runs == [1, 2, 3]
        assert supervisor.view()["flaky"] == {"up": True, "restarts": 2, "last_error": "RuntimeError: crash 2"}
        assert restarts_metric(metrics, "flaky") == 2
        assert metrics.registry.get_sample_value("tandem_task_up", {"task": "flaky"}) == 1
    finally:
        await supervisor.stop()
    assert entry.task is not None and entry.task.cancelled()
    assert supervisor.view()["flaky"]["up"] is False
    assert metrics.registry.get_sample_value("tandem_task_up", {"task": "flaky"}) == 0


async def test_a_task_that_keeps_failing_backs_off_up_to_the_maximum() -> None:
    metrics = Metrics()
    initial_s, max_s = 0.01, 0.08
    supervisor = Supervisor(metrics, initial_s=initial_s, max_s=max_s)
    waits: list[float] = []  # the backoff that preceded each restart

    async def broken() -> None:
        if entry.retry_in_s is not None:
            waits.append(entry.retry_in_s)
        raise ValueError("always")

    entry = supervisor.start("broken", broken)
    try:
        await eventually(lambda: len(waits) >= 6)
    finally:
        await supervisor.stop()
    # Exponential over the run of crashes (jitter adds at most initial_s), capped at max_s.
    assert waits[0] < 2 * initial_s
    assert waits[1] >= 2 * initial_s and waits[2] >= 4 * initial_s
    assert max(waits) >= max_s and all(w <= max_s + initial_s for w in waits)
    assert entry.restarts == restarts_metric(metrics, "broken") >= 6
    assert entry.up is False


async def test_a_run_that_lasted_starts_the_backoff_over() -> None:
    supervisor = Supervisor(initial_s=0.01, max_s=5.0, healthy_after_s=0.02)
    waits: list[float] = []

    async def crashes_after_a_while() -> None:
        if entry.retry_in_s is not None:
            waits.append(entry.retry_in_s)
        await asyncio.sleep(0.03)  # a healthy run (longer than healthy_after_s), then a crash
        raise RuntimeError("late crash")

    entry = supervisor.start("late", crashes_after_a_while)
    try:
        await eventually(lambda: len(waits) >= 4)
    finally:
        await supervisor.stop()
    assert all(w < 2 * 0.01 for w in waits), waits  # never past the first step of the backoff


async def test_a_task_that_returns_is_not_restarted_and_stop_is_idempotent() -> None:
    supervisor = Supervisor(initial_s=0.01)
    runs: list[int] = []

    async def once() -> None:
        runs.append(1)

    entry = supervisor.start("once", once)
    await eventually(lambda: entry.task is not None and entry.task.done())
    assert runs == [1] and entry.restarts == 0 and entry.up is False
    await entry.stop()
    await supervisor.stop()
    assert runs == [1]
