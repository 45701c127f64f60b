"""Workflow executions (docs/protocol.md section 12.9): a started execution as a `Run` to follow,
and the `workflow.execution.changed` events of a workspace. Imports nothing of the server.

    run = await ws.workflows.start(flow, input={"topic": "cats"})
    done = await run.wait(timeout_s=60)      # the execution once completed, failed or cancelled
    done.step_results, done.output

Events are the client's view of a run as it moves on any node; `wait` opens an event stream
before it reads the execution, so an end that happens meanwhile is not missed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tandem_client import wire

if TYPE_CHECKING:
    from tandem_client.workflows import Workflows


@dataclass(frozen=True)
class ExecutionEvent:
    """A `workflow.execution.changed` event: `action` is start, advance, pause, resume, cancel,
    complete or fail; `execution` is the execution after it."""

    execution: wire.Execution
    action: str
    previous_status: str | None
    agent_id: str | None
    raw: wire.Frame = field(repr=False, compare=False)

    @classmethod
    def from_wire(cls, frame: wire.Frame) -> ExecutionEvent:
        return cls(
            wire.Execution.from_wire(frame["execution"]),
            str(frame.get("action")),
            frame.get("previous_status"),
            frame.get("agent_id"),
            frame,
        )


class Run:
    """One execution started by `ws.workflows.start`: `execution` as last seen, `wait` for its
    end, `pause`/`resume`/`cancel` it, `refresh` to read it again."""

    def __init__(self, workflows: Workflows, execution: wire.Execution) -> None:
        self._workflows = workflows
        self.execution = execution

    @property
    def execution_id(self) -> str:
        return self.execution.execution_id

    async def refresh(self) -> wire.Execution:
        self.execution, _ = await self._workflows.execution(self.execution_id)
        return self.execution

    async def wait(self, timeout_s: float | None = None) -> wire.Execution:
        """The execution once it completed, failed or was cancelled (TimeoutError after
        `timeout_s`). Reads it again after a dropped event stream (events may be missed)."""
        async with asyncio.timeout(timeout_s):
            while True:
                async with self._workflows.events() as events:
                    if (await self.refresh()).finished:
                        return self.execution
                    async for event in events:
                        if event.execution.execution_id == self.execution_id:
                            self.execution = event.execution
                            if self.execution.finished:
                                return self.execution
                        if events.dropped:
                            break

    async def pause(self) -> wire.Execution:
        self.execution = await self._workflows.pause(self.execution_id)
        return self.execution

    async def resume(self) -> wire.Execution:
        self.execution = await self._workflows.resume(self.execution_id)
        return self.execution

    async def cancel(self) -> wire.Execution:
        self.execution = await self._workflows.cancel(self.execution_id)
        return self.execution

    def __repr__(self) -> str:
        return f"Run({self.execution_id}, {self.execution.status})"
