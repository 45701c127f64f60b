"""Locks, workspace state and tasks: the places where issue 6 plugs into the SDK.

The server does not speak `lock.*`, `state.*` or `task.*` yet (docs/protocol.md section 10), so
every operation here raises NotImplementedError; the shapes are the API the SDK will keep:
`async with doc.lock(ttl=30):`, `await ws.state.update(fn)` (retried on `Conflict`),
`await ws.tasks.create(...)`, `async for event in ws.tasks.events():`. No wire message is
invented here: each will follow the protocol document once the server ships it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tandem_client.document import Document
    from tandem_client.workspace import Workspace

PENDING = "arrives with the server's {family}.* messages (issue 6); protocol 1 servers do not speak them yet"


def _pending(family: str) -> NotImplementedError:
    return NotImplementedError(PENDING.format(family=family))


class Lock:
    """`async with doc.lock(ttl=30):` holds an exclusive lock on a document (or a section of it),
    renewed while the block runs and released at its end. Raises `Locked` if another agent holds it."""

    def __init__(self, document: Document, ttl_s: float, section: str | None) -> None:
        self.document = document
        self.ttl_s = ttl_s
        self.section = section

    async def __aenter__(self) -> Lock:
        raise _pending("lock")

    async def __aexit__(self, *exc: object) -> None:
        raise _pending("lock")


class WorkspaceState:
    """The workspace's shared JSON state with its `state_version`."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    async def get(self) -> tuple[Any, int]:
        """(state, version)."""
        raise _pending("state")

    async def update(self, fn: Callable[[Any], Any], attempts: int = 10) -> tuple[Any, int]:
        """Apply `fn(state) -> new state` with optimistic concurrency, retrying on `Conflict`."""
        raise _pending("state")


class Tasks:
    """Task assignment: create, accept, complete, delegate, and a stream of task events."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    async def create(self, title: str, **fields: Any) -> Any:
        raise _pending("task")

    async def accept(self, task_id: str) -> Any:
        raise _pending("task")

    async def complete(self, task_id: str, **result: Any) -> Any:
        raise _pending("task")

    async def delegate(self, task_id: str, agent_id: str) -> Any:
        raise _pending("task")

    def events(self) -> AsyncIterator[Any]:
        raise _pending("task")
