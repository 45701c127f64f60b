"""Keeps the node's long-running tasks running: one that raises is logged with its name, counted
in /metrics and started again after a backoff with jitter (tenacity); /healthz shows each one.

A task is a coroutine function meant to run until cancelled. Cancelling it (`stop`) is the only
way it ends for good: any other exception restarts it, and one that returns is logged and left
down. The backoff grows over a run of crashes and starts over once a run lasted `healthy_after_s`.
Imports nothing of Tandem but the metrics.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
)

from server.core.metrics import Metrics

log = structlog.get_logger("tandem.supervisor")

TaskFactory = Callable[[], Awaitable[None]]


class _Attempt(NamedTuple):
    attempt_number: int  # what tenacity's wait strategies read: here, crashes in a row


@dataclass(eq=False)
class Supervised:
    """One supervised task and what /healthz says about it."""

    name: str
    factory: TaskFactory
    task: asyncio.Task[None] | None = None
    up: bool = False  # running now (False while waiting to restart, after stop or a return)
    restarts: int = 0
    streak: int = 0  # crashes without a run of `healthy_after_s` in between
    last_error: str | None = None
    retry_in_s: float | None = None  # the backoff chosen after the last crash
    started_at: float = field(default_factory=time.monotonic)

    async def stop(self) -> None:
        """Cancel the task and wait for it to end; safe to call twice."""
        task = self.task
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # the caller's own cancellation still raises

    def view(self) -> dict[str, Any]:
        return {"up": self.up, "restarts": self.restarts, "last_error": self.last_error}


class Supervisor:
    """Starts tasks and keeps them running until `stop`. One per node (server/app.py)."""

    def __init__(
        self, metrics: Metrics | None = None, *, initial_s: float = 0.1, max_s: float = 30.0, healthy_after_s: float = 60.0
    ) -> None:
        self.metrics = metrics
        self.healthy_after_s = healthy_after_s
        self._backoff = wait_exponential(multiplier=initial_s, max=max_s) + wait_random(0, initial_s)
        self.tasks: dict[str, Supervised] = {}

    def start(self, name: str, factory: TaskFactory) -> Supervised:
        """Run `factory()` as the task `name` (unique per supervisor) until stopped."""
        if name in self.tasks and self.tasks[name].task is not None and not self.tasks[name].task.done():
            raise ValueError(f"a task named {name} is running")
        entry = Supervised(name, factory)
        self.tasks[name] = entry
        entry.task = asyncio.create_task(self._keep(entry), name=name)
        return entry

    async def stop(self) -> None:
        """Stop every task, the last started first."""
        for entry in reversed(list(self.tasks.values())):
            await entry.stop()

    def view(self) -> dict[str, dict[str, Any]]:
        return {name: entry.view() for name, entry in self.tasks.items()}

    async def _keep(self, entry: Supervised) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Exception),  # never CancelledError: that is `stop`
            wait=lambda _state: self._backoff(_Attempt(entry.streak)),  # type: ignore[arg-type]
            after=functools.partial(self._count, entry),
            before_sleep=functools.partial(self._report, entry),
        )
        async for attempt in retrying:
            with attempt:
                self._set_up(entry, True)
                entry.started_at = time.monotonic()
                try:
                    await entry.factory()
                finally:
                    self._set_up(entry, False)
        log.warning("supervisor.task_returned", task=entry.name)

    def _set_up(self, entry: Supervised, up: bool) -> None:
        entry.up = up
        if self.metrics is not None:
            self.metrics.task_up.labels(entry.name).set(1 if up else 0)

    def _count(self, entry: Supervised, state: RetryCallState) -> None:
        """After a crash, before the wait is chosen: a task that ran well starts the backoff over."""
        ran_s = time.monotonic() - entry.started_at
        entry.streak = 1 if ran_s >= self.healthy_after_s else entry.streak + 1
        entry.restarts += 1
        exc = state.outcome.exception() if state.outcome is not None else None
        entry.last_error = f"{type(exc).__name__}: {exc}"[:200] if exc is not None else None
        if self.metrics is not None:
            self.metrics.task_restarts.labels(entry.name).inc()

    def _report(self, entry: Supervised, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_in_s = entry.retry_in_s = state.next_action.sleep if state.next_action is not None else None
        log.error(
            "supervisor.task_crashed", task=entry.name, restarts=entry.restarts, retry_in_s=retry_in_s, exc_info=exc
        )
