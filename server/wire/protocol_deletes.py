"""The deletion events (docs/protocol.md#126): an operator's `tandem document delete` or
`tandem workspace delete` told to every node, whose sessions then stop using what is gone.
Part of `protocol_coordination.WorkspaceEvent`.
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from server.wire.fields import Out


class DocDeleted(Out):
    """The document was deleted: every session that had it open no longer has it."""

    type: Literal["doc.deleted"] = "doc.deleted"
    workspace_id: UUID
    doc_id: UUID
    agent_id: str


class WorkspaceDeleted(Out):
    """The workspace was deleted: every session joined to it has left it, its documents closed."""

    type: Literal["workspace.deleted"] = "workspace.deleted"
    workspace_id: UUID
    agent_id: str
