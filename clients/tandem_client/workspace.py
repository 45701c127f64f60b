"""A joined workspace: its documents, presence, locks, shared state, tasks and members.

Joined workspaces belong to the client, not to one session: after a reconnect the client joins
them again, renews the locks it holds there, then reopens their documents (docs/protocol.md
sections 6.3 and 12.1). Coordination events (section 12.6) are routed here by the client.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

from pycrdt import Doc

from tandem_client import wire
from tandem_client.coordination import Lock, LockKey
from tandem_client.members import Members
from tandem_client.document import Document
from tandem_client.errors import ClientClosed, ClientError, TandemError, error_from_code
from tandem_client.presence import Presence
from tandem_client.state import WorkspaceState
from tandem_client.tasks import Tasks
from tandem_client.workflows import Workflows

if TYPE_CHECKING:
    from tandem_client.client import Client


class Workspace:
    """Get one from `Client.join`. `presence` is the live view of who is here, `state` the
    shared JSON state, `tasks` the task board, `members` the members, `workflows` the workflow
    definitions; `lock(name)` a named lock."""

    def __init__(self, client: Client, reply: wire.JoinReply, task_events: wire.TaskEvents = "all") -> None:
        self.client = client
        self.task_events = task_events  # which task.changed of the workspace reach this client (`Client.join`)
        self.failure: ClientError | None = None
        self.left = False
        self.state = WorkspaceState(self)
        self.tasks = Tasks(self)
        self.members = Members(self)
        self.workflows = Workflows(self)
        self.presence = Presence(self)
        self._locks: dict[LockKey, Lock] = {}  # held by this client
        self._lock_releases: dict[LockKey, int] = {}  # `lock.released` events seen, per resource
        self._awareness: tuple[dict[str, Any] | None, str | None] = (None, None)  # (state, doc_id) to publish again
        self._documents: dict[str, Document] = {}
        self._open_lock = asyncio.Lock()  # one find-or-create by title at a time
        self._apply(reply)

    def _apply(self, reply: wire.JoinReply) -> None:
        self.info = reply.workspace
        self.role = reply.role
        self.state_version = reply.state_version
        self.state._observe_version(reply.state_version)
        self.members._replace(reply.members)
        self.document_infos = reply.documents  # as of the last join; list_documents() for fresh ones

    @property
    def workspace_id(self) -> str:
        return self.info.workspace_id

    @property
    def documents(self) -> dict[str, Document]:
        """The documents this client has open in the workspace, by doc_id."""
        return dict(self._documents)

    async def create_document(self, title: str, content_type: str = "text", language: str | None = None) -> wire.DocumentInfo:
        """A new empty document (not opened). Not retried after a dropped connection: on
        `ConnectionLost` it may or may not exist."""
        self._check()
        frame = await self.client._conn.request(
            "doc.create",
            wire.given(workspace_id=self.workspace_id, title=title, content_type=content_type, language=language),
        )
        return wire.DocumentInfo.from_wire(frame["document"])

    async def list_documents(self) -> list[wire.DocumentInfo]:
        """The workspace's documents (at most the server's `max_list_items`)."""
        self._check()
        frame = await self.client._idempotent("doc.list", {"workspace_id": self.workspace_id})
        return [wire.DocumentInfo.from_wire(d) for d in frame["documents"]]

    async def open(
        self,
        doc: str,
        *,
        create: bool = True,
        content_type: str = "text",
        language: str | None = None,
        ydoc: Doc | None = None,
    ) -> Document:
        """Open a document by doc_id, or by title (the oldest with that title; created when there
        is none and `create`). Returns it caught up; edits flow both ways from then on.

        `ydoc`: a pycrdt Doc to sync (for example one kept from an earlier run); its content the
        server lacks is sent. Two clients creating the same new title at once can make two
        documents: create it once, then open it by title or id.
        """
        self._check()
        async with self._open_lock:
            info = await self._resolve(doc, create, content_type, language)
            existing = self._documents.get(info.doc_id)
            if existing is not None:
                return existing
            document = Document(self.client, self, info, ydoc)
            self._documents[info.doc_id] = document  # a reconnect meanwhile reopens it too
        try:
            await self.client._retry_lost(document._sync)
        except BaseException:
            document._shutdown()
            raise
        return document

    async def _resolve(self, doc: str, create: bool, content_type: str, language: str | None) -> wire.DocumentInfo:
        try:
            doc_id = str(uuid.UUID(doc))
        except ValueError:
            doc_id = None
        if doc_id is not None:
            known = [d for d in (*self.document_infos, *(o.info for o in self._documents.values())) if d.doc_id == doc_id]
            if known:
                return known[0]
            for info in await self.list_documents():
                if info.doc_id == doc_id:
                    return info
            # Not listed (a longer list than max_list_items): the open itself decides.
            return wire.DocumentInfo.from_wire({"doc_id": doc_id, "workspace_id": self.workspace_id, "title": doc_id})
        matches = sorted((d for d in await self.list_documents() if d.title == doc), key=lambda d: (d.created_at, d.doc_id))
        if matches:
            return matches[0]
        if not create:
            raise error_from_code("not_found", f"No document titled {doc!r}.")
        return await self.create_document(doc, content_type, language)

    async def set_awareness(self, state: dict[str, Any] | None, doc: str | Document | None = None) -> None:
        """Publish this session's awareness state in the workspace (a cursor, a status; a JSON
        object of at most the server's `max_awareness_bytes`), about `doc` (an open document or
        its id) or the workspace as a whole; None clears it. Published again after a reconnect.
        Raises `AwarenessTooLarge`, or `DocNotOpen` when `doc` is not open."""
        self._check()
        doc_id = doc.doc_id if isinstance(doc, Document) else doc
        await self.client._retry_lost(
            lambda: self.client._conn.request(
                "awareness.set", {"workspace_id": self.workspace_id, **wire.given(doc_id=doc_id), "state": state}
            )
        )
        self._awareness = (state, doc_id)

    def lock(self, name: str, ttl: float = 30.0, *, wait: bool = False, timeout: float | None = None, renew: bool = True) -> Lock:
        """`async with ws.lock("deploy", ttl=30) as lock:` a named lock of the workspace (1 to 100
        characters), with `lock.fence` to hand to whatever it guards. Same semantics as
        `Document.lock` (see `Lock`): `Locked`, `wait`/`timeout`, renewal every ttl/3, `lost`."""
        return Lock(self, name=name, ttl_s=ttl, wait=wait, timeout_s=timeout, renew=renew)

    async def list_locks(self) -> list[wire.LockInfo]:
        """`lock.list`: the workspace's live locks, documents' and named ones."""
        self._check()
        frame = await self.client._idempotent("lock.list", {"workspace_id": self.workspace_id})
        return [wire.LockInfo.from_wire(lock) for lock in frame["locks"]]

    async def leave(self) -> None:
        """Close this workspace's documents (after flushing them) and leave the workspace."""
        if self.left:
            return
        for document in list(self._documents.values()):
            await document.close()
        for lock in list(self._locks.values()):
            await lock.release()
        self.left = True
        self._close_streams()
        self.client._workspaces.pop(self.workspace_id, None)
        if self.client._conn.ready:
            try:
                await self.client._conn.request("workspace.leave", {"workspace_id": self.workspace_id})
            except (ClientError, TimeoutError):
                pass  # the session ends the subscription anyway

    async def _rejoin(self) -> None:
        """Join again on a new session; a refusal fails the workspace and its documents."""
        try:
            fields = wire.join_fields(self.workspace_id, self.task_events)
            frame = await self.client._conn.request("workspace.join", fields, restore=True)
        except TandemError as exc:
            self._fail(exc)
            return
        self._apply(wire.JoinReply.from_wire(frame))

    async def _restore_locks(self) -> None:
        """After a reconnect, before documents resend their edits: renew every held lock."""
        results = await asyncio.gather(*(lock._restore() for lock in list(self._locks.values())), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # ConnectionLost, TimeoutError: the supervisor reconnects again

    async def _restore_presence(self) -> None:
        """After a reconnect: publish the awareness state again, and list presence anew."""
        state, doc_id = self._awareness
        if state is not None and (doc_id is None or doc_id in self._documents):
            try:
                await self.client._conn.request(
                    "awareness.set", {"workspace_id": self.workspace_id, **wire.given(doc_id=doc_id), "state": state}, restore=True
                )
            except TandemError:
                self._awareness = (None, None)
        self.presence._schedule_refresh()  # waits for the restore to finish

    def _forget_document(self, doc_id: str) -> None:
        self._documents.pop(doc_id, None)
        if self._awareness[1] == doc_id:  # closing the document clears the state about it (section 5.7)
            self._awareness = (None, None)

    # --- coordination events (docs/protocol.md section 12.6) ------------------------------------

    def _on_event(self, frame: wire.Frame) -> None:
        kind = frame["type"]
        if kind.startswith("lock."):
            self._on_lock_event(kind, wire.LockInfo.from_wire(frame["lock"]))
        elif kind == "state.changed":
            self.state._on_event(frame)
        elif kind == "member.changed":
            self.members._on_event(frame)
        self.client._conn.changed.notify()

    def _on_lock_event(self, kind: str, info: wire.LockInfo) -> None:
        key: LockKey = ("doc", info.doc_id) if info.doc_id is not None else ("name", str(info.name))
        held = self._locks.get(key)
        if held is not None:
            held._on_event(kind, info)
        if kind == "lock.released":
            self._lock_releases[key] = self._lock_releases.get(key, 0) + 1
            document = self._documents.get(info.doc_id or "")
            if document is not None:
                document._on_lock_released()

    def _fail(self, error: ClientError) -> None:
        """The workspace is unusable (this agent was removed from it): fail it and its documents."""
        self.failure = error
        for document in self._documents.values():
            document._fail(error)
        self._close_streams()

    def _close_streams(self) -> None:
        self.presence._close()
        self.state._streams.close()
        self.tasks._streams.close()
        self.workflows._streams.close()

    def _check(self) -> None:
        if self.left:
            raise ClientClosed(f"workspace {self.workspace_id} was left")
        if self.failure is not None:
            raise self.failure

    def __repr__(self) -> str:
        return f"<Workspace {self.info.name!r} {self.workspace_id} role={self.role}>"

