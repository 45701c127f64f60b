"""tandem-client: the async Python SDK of Tandem.

    async with tandem_client.connect(urls, token) as client:
        ws = await client.join(workspace_id)
        doc = await ws.open("spec")          # a pycrdt document, kept in sync both ways
        doc.text.insert(len(doc.text), "Hello")
        await doc.flushed()                   # the server has acknowledged every edit
        async with doc.lock(ttl=30):          # every edit in the block carries the lock's fence
            doc.text.insert(0, "# Spec\n")
        await ws.state.update(lambda s: {**s, "done": s.get("done", 0) + 1})
        task = await ws.tasks.create("Write section 2")

Errors are typed: one class per wire error code (`NotFound`, `Forbidden`, `DocNotOpen`, ...),
all subclasses of `TandemError`. The wire protocol is the server's docs/protocol.md.
"""

__version__ = "0.1.0"

from tandem_client import errors  # noqa: E402
from tandem_client.agents import Agents  # noqa: E402
from tandem_client.client import Client, connect  # noqa: E402
from tandem_client.coordination import EventStream, Lock  # noqa: E402
from tandem_client.members import Members  # noqa: E402
from tandem_client.document import REMOTE, Document  # noqa: E402
from tandem_client.errors import *  # noqa: E402,F403  (one class per error code)
from tandem_client.options import Options  # noqa: E402
from tandem_client.state import StateChange, WorkspaceState  # noqa: E402
from tandem_client.tasks import TaskEvent, Tasks  # noqa: E402
from tandem_client.wire import (  # noqa: E402
    Agent,
    Delegation,
    DocumentInfo,
    Hello,
    LockInfo,
    Member,
    Task,
    Execution,
    Workflow,
    WorkflowSummary,
    WorkspaceInfo,
)
from tandem_client.executions import ExecutionEvent, Run  # noqa: E402
from tandem_client.workflows import Workflows  # noqa: E402
from tandem_client.workspace import Workspace  # noqa: E402
from tandem_client.work import AssignedTasks  # noqa: E402

__all__ = [
    "Agent",
    "AssignedTasks",
    "Agents",
    "REMOTE",
    "Client",
    "Delegation",
    "Document",
    "DocumentInfo",
    "EventStream",
    "Hello",
    "Lock",
    "LockInfo",
    "Member",
    "Members",
    "Options",
    "StateChange",
    "Task",
    "TaskEvent",
    "Tasks",
    "Execution",
    "ExecutionEvent",
    "Run",
    "Workflow",
    "WorkflowSummary",
    "Workflows",
    "Workspace",
    "WorkspaceInfo",
    "WorkspaceState",
    "connect",
    "errors",
    *errors.__all__,
]
