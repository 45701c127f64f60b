"""Changing a document over HTTP (docs/http.md): a Yjs update, or text edits, written through the
rooms' write path (server/documents/one_write.py) as a short-lived writer of the token's agent,
answered once committed with the operation's seq (`ETag`). `If-Match: "<seq>"` refuses with
412 when the head is another seq, storing nothing.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request, Response

from server.core.auth import Principal
from server.core.errors import ErrorCode, TandemError
from server.documents import one_write, text_edits
from server.documents.update_bounds import UpdateBounds
from server.http.access import (
    admit,
    node_of,
    principal,
    readable_document,
    transaction,
)
from server.http.body import OCTET, media_type
from server.http.models import (
    MAX_EDITS,
    DeleteEdit,
    InsertEdit,
    TextEdit,
    Written,
)
from server.http.problems import PROBLEMS, WRITE_PROBLEMS, Stale
from server.workspaces import directory

router = APIRouter(responses={**PROBLEMS, **WRITE_PROBLEMS})
Caller = Annotated[Principal, Depends(principal)]
DOC = "/workspaces/{workspace_id}/documents/{doc_id}"


def if_match(request: Request) -> int | None:
    """The seq (or version) `If-Match` names; None without one. `*` is any: None too."""
    header = request.headers.get("if-match")
    if header is None or header.strip() == "*":
        return None
    tag = header.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise TandemError(
            ErrorCode.INVALID_MESSAGE,
            'If-Match: one entity tag, a quoted number ("12")',
            {"errors": [{"field": "header.if-match", "type": "int_parsing", "message": "must be a quoted number"}]},
        )  # fmt: skip
    return int(tag)


async def _write(
    request: Request,
    response: Response,
    who: Principal,
    workspace_id: uuid.UUID,
    doc_id: uuid.UUID,
    *,
    update: bytes | None = None,
    edits: list[text_edits.Edit] | None = None,
) -> Written:
    expect = if_match(request)
    async with transaction(request, who) as conn:
        await readable_document(conn, who.agent_id, workspace_id, doc_id)
        member = await admit(conn, who.agent_id, workspace_id)
    if not directory.can_write(member):
        raise TandemError(
            ErrorCode.FORBIDDEN, "a viewer (or a member without write) cannot edit"
        )
    node = node_of(request)
    try:
        room = await node.rooms.get(who.tenant_id, doc_id)
    except LookupError:
        raise TandemError(ErrorCode.NOT_FOUND) from None
    build = (
        None
        if edits is None
        else (lambda document: text_edits.build_update(document, edits))
    )
    try:
        seq = await one_write.write(
            node.rooms,
            node.checker,
            UpdateBounds.from_settings(node.settings),
            node.metrics,
            room,
            who.agent_id,
            update=update,
            build=build,
            expect_head=expect,
            unavailable_after_s=node.settings.commit_unavailable_after_s,
        )
    except one_write.HeadMoved as moved:
        raise Stale(
            f"If-Match names {expect}; the head is {moved.head}",
            {"head_seq": moved.head},
        ) from None
    changed = seq is not None
    served = seq if seq is not None else room.head_seq
    response.status_code = 201 if changed else 200
    response.headers["ETag"] = f'"{served}"'
    return Written(doc_id=doc_id, seq=served, changed=changed)


@router.post(
    DOC + "/updates",
    status_code=201,
    response_model=Written,
    summary="Apply a Yjs update to a document",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {OCTET: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def post_update(
    request: Request,
    response: Response,
    workspace_id: uuid.UUID,
    doc_id: uuid.UUID,
    who: Caller,
) -> Written:
    """201 with the new seq once committed; 200 when the update changed nothing."""
    given = request.headers.get("content-type", "")
    if media_type(given) != OCTET:
        raise TandemError(
            ErrorCode.UNSUPPORTED_FRAME,
            f"the body must be {OCTET}, not {given or 'none'}",
        )
    update = await request.body()
    if not update:
        raise TandemError(
            ErrorCode.INVALID_UPDATE, "the body is empty", {"reason": "empty update"}
        )
    return await _write(request, response, who, workspace_id, doc_id, update=update)


def _edit(edit: TextEdit) -> text_edits.Edit:
    if isinstance(edit, InsertEdit):
        return text_edits.Insert(edit.insert.index, edit.insert.text)
    if isinstance(edit, DeleteEdit):
        return text_edits.Delete(edit.delete.index, edit.delete.length)
    return text_edits.Replace(edit.replace.text)


@router.post(
    DOC + "/edits",
    status_code=201,
    response_model=Written,
    summary="Edit a document's text (insert, delete, replace)",
)
async def post_edits(
    request: Request,
    response: Response,
    workspace_id: uuid.UUID,
    doc_id: uuid.UUID,
    who: Caller,
    edits: Annotated[list[TextEdit], Body(min_length=1, max_length=MAX_EDITS)],
) -> Written:
    """Indexes in Unicode code points, each against the text the edits before it left;
    `replace` becomes the minimal edit (common prefix and suffix kept)."""
    return await _write(
        request, response, who, workspace_id, doc_id, edits=[_edit(e) for e in edits]
    )
