"""The worker helper: the tasks assigned to this agent in a workspace, existing and new
(`ws.tasks.assigned_to_me()`), so a worker runs start / complete in a loop (`start` from
`assigned` accepts the task too, in the same request).

    async with ws.tasks.assigned_to_me() as mine:
        async for task in mine:
            if task.status in ("assigned", "accepted"):
                task = await ws.tasks.start(task)
            ...

The `task.changed` stream is opened first and the open tasks are listed after it, so nothing
assigned in between is missed; then each event that leaves a task `assigned` to this agent
(created for it, assigned, delegated to it, a workflow step handed out or failed over to it)
yields the task once per assignment. Events the bounded stream dropped, or missed while the
client reconnected, are caught up by listing again (at once after a drop, and every
`relist_s` without events). Imports nothing of the server.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Self

from tandem_client import wire
from tandem_client.coordination import EventStream

if TYPE_CHECKING:
    from tandem_client.tasks import TaskEvent, Tasks

OPEN = (
    "assigned",
    "accepted",
    "in_progress",
)  # listed at the start and on each catch-up
MAX_REMEMBERED = (
    10_000  # assignments remembered to yield each once (oldest forgotten first)
)


class AssignedTasks:
    """An async iterator (and context manager) over the tasks assigned to this agent."""

    def __init__(
        self, tasks: Tasks, *, relist_s: float = 30.0, max_queue: int | None = None
    ) -> None:
        self.tasks = tasks
        self.relist_s = relist_s
        self.max_queue = max_queue
        self._stream: EventStream[TaskEvent] | None = None
        self._ready: list[wire.Task] = []
        self._yielded: OrderedDict[tuple[str, str | None], None] = OrderedDict()
        self._dropped = 0

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> wire.Task:
        if self._stream is None:
            await self._open()
        assert self._stream is not None
        while not self._ready:
            try:
                event = await self._stream.next(self.relist_s)
            except TimeoutError:
                await self._relist()
                continue
            if self._stream.dropped != self._dropped:
                self._dropped = self._stream.dropped
                await self._relist()
            self._offer(event.task)
        return self._ready.pop(0)

    async def _open(self) -> None:
        self._stream = self.tasks.events(self.max_queue)
        await self._relist()

    async def _relist(self) -> None:
        me = self.tasks.workspace.client.agent_id
        found = await self.tasks.list(assigned_to=me, status=list(OPEN), limit=1000)
        for task in sorted(found, key=lambda t: (t.assigned_at or "", t.task_id)):
            self._offer(task)

    def _offer(self, task: wire.Task) -> None:
        """Queue `task` when it is this agent's and not yet yielded for this assignment."""
        if (
            task.assigned_to != self.tasks.workspace.client.agent_id
            or task.status not in OPEN
        ):
            return
        key = (task.task_id, task.assigned_at)
        if key in self._yielded:
            return
        self._yielded[key] = None
        if len(self._yielded) > MAX_REMEMBERED:
            self._yielded.popitem(last=False)
        self._ready.append(task)
