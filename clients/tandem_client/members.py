"""Members and roles of a workspace (docs/protocol.md section 12.5): a sequence of the members,
kept current by `member.changed` events, and thin wrappers of `member.*`. Imports nothing of the
server.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

from tandem_client import wire
from tandem_client.errors import ERROR_CLASSES

if TYPE_CHECKING:
    from tandem_client.workspace import Workspace


class Members(Sequence[wire.Member]):
    """The workspace's members: a sequence of `Member` (as of the join, kept current by
    `member.changed` events and `list()`), and thin wrappers of `member.*` (section 12.5).
    Owners and admins manage members; violations raise `Forbidden`."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._items: builtins.list[wire.Member] = []

    @overload
    def __getitem__(self, index: int) -> wire.Member: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[wire.Member]: ...
    def __getitem__(self, index: int | slice) -> wire.Member | Sequence[wire.Member]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[wire.Member]:
        return iter(builtins.list(self._items))

    async def list(self) -> builtins.list[wire.Member]:
        """`member.list`: the members with their permissions (at most `max_list_items`)."""
        self.workspace._check()
        frame = await self.workspace.client._idempotent("member.list", {"workspace_id": self.workspace.workspace_id})
        self._items = [wire.Member.from_wire(m) for m in frame["members"]]
        return builtins.list(self._items)

    async def add(self, agent_id: str, role: str = "member", permissions: builtins.list[str] | None = None) -> wire.Member:
        return await self._change("member.add", agent_id, role=role, permissions=permissions)

    async def update(self, agent_id: str, role: str | None = None, permissions: builtins.list[str] | None = None) -> wire.Member:
        return await self._change("member.update", agent_id, role=role, permissions=permissions)

    async def remove(self, agent_id: str) -> wire.Member:
        return await self._change("member.remove", agent_id)

    async def _change(self, type_: str, agent_id: str, **fields: Any) -> wire.Member:
        """Not retried after a dropped connection (`ConnectionLost`: it may or may not have happened)."""
        self.workspace._check()
        frame = await self.workspace.client._conn.request(
            type_, {"workspace_id": self.workspace.workspace_id, "agent_id": agent_id, **wire.given(**fields)}
        )
        return wire.Member.from_wire(frame["member"])

    def _replace(self, members: Sequence[wire.Member]) -> None:
        self._items = builtins.list(members)

    def _on_event(self, frame: wire.Frame) -> None:
        member = wire.Member.from_wire(frame["member"])
        self._items = [m for m in self._items if m.agent_id != member.agent_id]
        if frame.get("change") != "removed":
            self._items.append(member)
        me = self.workspace.client.agent_id
        if frame.get("change") == "removed" and member.agent_id == me:
            # The server made this session leave the workspace (section 12.5).
            self.workspace._fail(ERROR_CLASSES["not_member"]("This agent was removed from the workspace."))
