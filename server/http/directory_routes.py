"""/v1/workspaces and /v1/workspaces/{workspace_id}/documents: list, create, get (docs/http.md).

Each request is one tenant transaction of the caller's tenant; the rules are the directory's
(server/workspaces/directory.py), exactly as `workspace.*` and `doc.*` messages apply them.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from server.core.auth import Principal
from server.core.errors import ErrorCode, TandemError
from server.http.access import (
    admit,
    may_read,
    node_of,
    principal,
    readable_document,
    transaction,
)
from server.http.models import (
    DocumentCreate,
    DocumentList,
    DocumentMeta,
    WorkspaceCreate,
    WorkspaceList,
    WorkspaceOne,
)
from server.http.problems import PROBLEMS
from server.wire.messages import DocumentInfo, WorkspaceInfo
from server.workspaces import directory

router = APIRouter(responses=PROBLEMS)
Caller = Annotated[Principal, Depends(principal)]


def _limit(request: Request, limit: int | None) -> int:
    most = node_of(request).settings.max_list_items
    if limit is None:
        return most
    if limit > most:
        raise TandemError(
            ErrorCode.INVALID_MESSAGE,
            f"limit: at most {most}",
            {
                "errors": [
                    {
                        "field": "query.limit",
                        "type": "less_than_equal",
                        "message": f"must be at most {most}",
                    }
                ]
            },
        )
    return limit


Limit = Annotated[
    int | None,
    Query(ge=1, description="Most items returned (default and most: max_list_items)."),
]


@router.get(
    "/workspaces",
    response_model=WorkspaceList,
    summary="Workspaces the caller may join",
)
async def list_workspaces(
    request: Request, who: Caller, limit: Limit = None
) -> WorkspaceList:
    async with transaction(request, who) as conn:
        found, truncated = await directory.list_workspaces(
            conn, who.agent_id, _limit(request, limit)
        )
    return WorkspaceList(
        workspaces=[WorkspaceInfo(**w.to_wire()) for w in found], truncated=truncated
    )


@router.post(
    "/workspaces",
    status_code=201,
    response_model=WorkspaceOne,
    summary="Create a workspace",
)
async def create_workspace(
    request: Request, response: Response, who: Caller, body: WorkspaceCreate
) -> WorkspaceOne:
    async with transaction(request, who) as conn:
        created = await directory.create_workspace(
            conn,
            who.tenant_id,
            who.agent_id,
            body.name,
            body.workspace_type,
            body.visibility,
            body.max_members,
        )
    response.headers["Location"] = (
        f"{request.scope.get('root_path', '')}/workspaces/{created.workspace_id}"
    )
    return WorkspaceOne(workspace=WorkspaceInfo(**created.to_wire()), role="owner")


@router.get(
    "/workspaces/{workspace_id}", response_model=WorkspaceOne, summary="One workspace"
)
async def get_workspace(
    request: Request, workspace_id: uuid.UUID, who: Caller
) -> WorkspaceOne:
    """A member, or any agent of the tenant for a team or public workspace (`role` null: not a
    member); reading it joins nobody."""
    async with transaction(request, who) as conn:
        workspace, member = await may_read(conn, who.agent_id, workspace_id)
    return WorkspaceOne(
        workspace=WorkspaceInfo(**workspace.to_wire()),
        role=member.role if member is not None else None,
    )


@router.get(
    "/workspaces/{workspace_id}/documents",
    response_model=DocumentList,
    summary="Documents of a workspace",
)
async def list_documents(
    request: Request, workspace_id: uuid.UUID, who: Caller, limit: Limit = None
) -> DocumentList:
    async with transaction(request, who) as conn:
        await may_read(conn, who.agent_id, workspace_id)
        docs, truncated = await directory.list_documents(
            conn, workspace_id, _limit(request, limit)
        )
    return DocumentList(
        workspace_id=workspace_id,
        documents=[DocumentInfo(**d.to_wire()) for d in docs],
        truncated=truncated,
    )


@router.post(
    "/workspaces/{workspace_id}/documents",
    status_code=201,
    response_model=DocumentMeta,
    summary="Create a document",
)
async def create_document(
    request: Request,
    response: Response,
    workspace_id: uuid.UUID,
    who: Caller,
    body: DocumentCreate,
) -> DocumentMeta:
    """A viewer (or a member without "write") gets `forbidden`, as `doc.create` answers."""
    async with transaction(request, who) as conn:
        await admit(conn, who.agent_id, workspace_id)
        created = await directory.create_document(
            conn,
            who.agent_id,
            workspace_id,
            body.title,
            body.content_type,
            body.language,
        )
    root = request.scope.get("root_path", "")
    response.headers["Location"] = (
        f"{root}/workspaces/{workspace_id}/documents/{created.doc_id}"
    )
    return DocumentMeta(**created.to_wire(), head_seq=created.head_seq)


@router.get(
    "/workspaces/{workspace_id}/documents/{doc_id}",
    response_model=DocumentMeta,
    summary="A document's metadata",
)
async def get_document(
    request: Request, workspace_id: uuid.UUID, doc_id: uuid.UUID, who: Caller
) -> DocumentMeta:
    async with transaction(request, who) as conn:
        info = await readable_document(conn, who.agent_id, workspace_id, doc_id)
    return DocumentMeta(**info.to_wire(), head_seq=info.head_seq)
