"""A /yjs connection's rights follow its agent's membership live (docs/protocol.md#112, #114).

The connection listens to workspace events naming its agent (server/cluster/events.py: this node's
changes directly, other nodes' through NOTIFY), as an agent session does, and applies a
`member.changed` about its own membership of the document's workspace at once: demoted, its
next update is refused; promoted, the editor is asked for what the server lacks; removed, it
stops hearing the document and closes with `not_member`. A deleted document (or workspace) closes
it with `not_found` (`document_deleted`, called by the node's coordination). Mixed into
`yws.YjsConnection`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.core.errors import ErrorCode
from server.wire import protocol_coordination as pc
from server.workspaces import directory as workspaces

if TYPE_CHECKING:
    from server.transport.yws import YjsConnection

    _Base = YjsConnection
else:
    _Base = object


class LiveRights(_Base):
    """`follow_membership` before the membership is read at connect, `membership_read` once the
    connection is open (events heard in between are applied then, after the read, so a change
    that committed after it is not lost), `unfollow_membership` at the end."""

    _held_changes: list[pc.MemberChanged] | None

    def follow_membership(self) -> None:
        assert self.principal is not None
        self._held_changes = []
        self.node.coordination.events.connect(self, self.principal.tenant_id, self.principal.agent_id)

    def membership_read(self) -> None:
        held, self._held_changes = self._held_changes or [], None
        for message in held:
            self._membership_changed(message)

    def unfollow_membership(self) -> None:
        assert self.principal is not None
        self.node.coordination.events.disconnect(self.conn_id, self.principal.tenant_id, self.principal.agent_id, [])

    def on_event(self, message: pc.WorkspaceEvent, frame: str) -> None:
        """An event naming this agent (the Listener of server/cluster/events.py); only changes of its
        membership concern an editor."""
        assert self.principal is not None
        if not isinstance(message, pc.MemberChanged) or message.member["agent_id"] != self.principal.agent_id:
            return
        if self._held_changes is not None:
            self._held_changes.append(message)
        else:
            self._membership_changed(message)

    def document_deleted(self) -> None:
        """Its document or workspace was deleted (server/workspaces/coordination.py observes it)."""
        self.can_write = False
        self.end(ErrorCode.NOT_FOUND, "the document was deleted")
        self.leave_document()
        self.log.info("yws.document_deleted")

    def _membership_changed(self, message: pc.MemberChanged) -> None:
        room = self.room
        if room is None or message.workspace_id != room.workspace_id:
            return
        could_write = self.can_write
        if message.change == "removed":
            self.can_write = False  # what was read and not yet applied is refused too
            self.end(ErrorCode.NOT_MEMBER, "removed from the workspace")
            self.leave_document()
        else:
            self.can_write = workspaces.wire_can_write(message.member)
            if self.can_write and not could_write:
                # As at connect: the editor sends what the server lacks, including what it kept
                # locally while it could not write (its later updates build on it).
                self.ask_for_missing()
        self.log.info("yws.membership_changed", change=message.change, can_write=self.can_write)
