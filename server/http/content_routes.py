"""A document's content, history and blame over HTTP (docs/http.md), read from its snapshots and
log by the same code as `tandem replay` (server/documents/log_reader.py).

Content is served as the document's text (`text/plain`; `application/json` for a `json` document
whose text parses), or as one Yjs update of the whole state when `Accept` asks for
`application/octet-stream`. `ETag` is the seq served (`"12"`); an `If-None-Match` naming it gets
304 without a replay when the seq is known beforehand (the head, or `?seq=`).

The head is served from the node's room of the document (server/documents/rooms.py), opened
if it is not (the snapshot and the log after it read once, then kept current by the fan-out
and unloaded when idle, as for a WebSocket reader), so a head read does not replay the log:
the room first reads what the log holds past the head this request saw, and serves its
document when it holds exactly operations 1..its head (nothing of this node in flight). A room
that is not settled so (writes of this node in flight, being rebuilt) leaves the read to a
replay, as for `?seq=` and `?at=`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from server.core.auth import Principal
from server.core.errors import ErrorCode, TandemError
from server.core.logs import get_logger
from server.documents import log_reader
from server.http.access import node_of, principal, readable_document, transaction
from server.http.models import Blame, BlameSpan, HistoryItem, HistoryPage
from server.http.problems import PROBLEMS

log = get_logger("tandem.http")

router = APIRouter(responses=PROBLEMS)
Caller = Annotated[Principal, Depends(principal)]
OCTET = "application/octet-stream"
DOC = "/workspaces/{workspace_id}/documents/{doc_id}"
MAX_HISTORY_LIMIT = 1000

CONTENT_RESPONSES = {
    200: {
        "description": "The content at the seq named by `ETag`",
        "content": {
            "text/plain": {},
            "application/json": {},
            OCTET: {"schema": {"type": "string", "format": "binary"}},
        },
    },
    304: {
        "description": "Not modified: `If-None-Match` names the seq that would be served"
    },
}


@contextmanager
def _log_errors(doc_id: uuid.UUID) -> Iterator[None]:
    """The log reader's refusals as problems: a missing document or a seq past the head is
    `not_found`; a log that cannot be replayed is the server's fault (`internal_error`)."""
    try:
        yield
    except (log_reader.DocumentMissing, log_reader.PastHead) as exc:
        raise TandemError(
            ErrorCode.NOT_FOUND,
            str(exc) if isinstance(exc, log_reader.PastHead) else None,
        ) from None
    except log_reader.LogError as exc:
        log.error("http.replay_failed", doc_id=str(doc_id), error=str(exc))
        raise TandemError(ErrorCode.INTERNAL_ERROR) from None


def etag(seq: int) -> str:
    return f'"{seq}"'


def not_modified(request: Request, seq: int) -> bool:
    """`If-None-Match` names `seq` (weak or strong, in a list, or `*`)."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        if tag.removeprefix("W/").strip('"') == str(seq):
            return True
    return False


def _wants_update(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return any(
        part.split(";", 1)[0].strip().lower() == OCTET for part in accept.split(",")
    )


def _representation(content_type: str, text: str) -> tuple[str, bytes]:
    if content_type == "json":
        try:
            json.loads(text)
        except ValueError:
            pass
        else:
            return "application/json", text.encode()
    return "text/plain; charset=utf-8", text.encode()


async def _from_room(
    request: Request, who: Principal, doc_id: uuid.UUID, head: int
) -> tuple[int, str | bytes] | None:
    """The head from the node's room: its seq and its text (or its state as one Yjs update,
    when asked for), read in one step with no await between; None when the room is not settled
    at `head` or past it."""
    rooms = node_of(request).rooms
    try:
        room = await rooms.get(who.tenant_id, doc_id)
    except LookupError:
        raise TandemError(ErrorCode.NOT_FOUND) from None
    if room.head_seq < head:
        await rooms.catch_up(room)
    if room.broken or not room.quiet or room.head_seq < head:
        return None
    if not room.subscriptions and room.idle_since is not None:
        room.idle_since = time.monotonic()  # read: stays open for the next read a while
    if _wants_update(request):
        return room.head_seq, room.document.encode_state()
    return room.head_seq, room.document.text()


@router.get(
    DOC + "/content",
    response_class=Response,
    responses=CONTENT_RESPONSES,
    summary="A document's content",
)
async def content(
    request: Request,
    workspace_id: uuid.UUID,
    doc_id: uuid.UUID,
    who: Caller,
    seq: Annotated[
        int | None, Query(ge=0, description="The content after this operation")
    ] = None,
    at: Annotated[
        datetime | None,
        Query(description="The content at this time (RFC 3339, with a zone)"),
    ] = None,
) -> Response:
    if seq is not None and at is not None:
        raise TandemError(ErrorCode.INVALID_MESSAGE, "give seq or at, not both")
    if at is not None and at.tzinfo is None:
        raise TandemError(
            ErrorCode.INVALID_MESSAGE,
            "at: must carry a time zone (RFC 3339, e.g. 2026-01-02T03:04:05Z)",
        )
    async with transaction(request, who) as conn:
        info = await readable_document(conn, who.agent_id, workspace_id, doc_id)
    known = seq if seq is not None else (info.head_seq if at is None else None)
    if seq is not None and seq > info.head_seq:
        raise TandemError(
            ErrorCode.NOT_FOUND,
            f"seq {seq} is past the head of the document (seq {info.head_seq})",
        )
    vary = {"Vary": "Accept"}
    if known is not None and not_modified(request, known):
        return Response(status_code=304, headers={"ETag": etag(known), **vary})
    if seq is None and at is None:
        served = await _from_room(request, who, doc_id, info.head_seq)
        if served is not None:
            served_seq, payload = served
            headers = {"ETag": etag(served_seq), **vary}
            if isinstance(payload, bytes):
                return Response(payload, media_type=OCTET, headers=headers)
            media_type, body = _representation(info.content_type, payload)
            return Response(body, media_type=media_type, headers=headers)
    with _log_errors(doc_id):
        replayed = await log_reader.replay(
            node_of(request).pool,
            who.tenant_id,
            doc_id,
            actor=who.agent_id,
            at_seq=known,
            at_time=at,
        )
    headers = {"ETag": etag(replayed.seq), **vary}
    if known is None and not_modified(request, replayed.seq):
        return Response(status_code=304, headers=headers)
    if _wants_update(request):
        return Response(
            replayed.document.encode_state(), media_type=OCTET, headers=headers
        )
    media_type, body = _representation(info.content_type, replayed.document.text())
    return Response(body, media_type=media_type, headers=headers)


@router.get(
    DOC + "/history",
    response_model=HistoryPage,
    summary="A document's operations, a page at a time",
)
async def history(
    request: Request,
    response: Response,
    workspace_id: uuid.UUID,
    doc_id: uuid.UUID,
    who: Caller,
    after_seq: Annotated[int, Query(ge=0, description="Operations after this seq")] = 0,
    limit: Annotated[
        int,
        Query(ge=1, le=MAX_HISTORY_LIMIT, description="Most operations in the page"),
    ] = 100,
) -> HistoryPage:
    async with transaction(request, who) as conn:
        await readable_document(conn, who.agent_id, workspace_id, doc_id)
    items: list[HistoryItem] = []
    with _log_errors(doc_id):
        entries = log_reader.history(
            node_of(request).pool,
            who.tenant_id,
            doc_id,
            actor=who.agent_id,
            from_seq=after_seq + 1,
            limit=limit + 1,
        )
        async for entry in entries:
            items.append(HistoryItem(**entry.to_json()))
    more = len(items) > limit
    items = items[:limit]
    next_after = items[-1].seq if more else None
    next_url = None
    if next_after is not None:
        next_url = str(
            request.url.include_query_params(after_seq=next_after, limit=limit)
        )
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return HistoryPage(
        doc_id=doc_id, operations=items, next_after_seq=next_after, next=next_url
    )


@router.get(
    DOC + "/blame",
    response_model=Blame,
    summary="Who wrote each run of a document's text",
)
async def blame(
    request: Request,
    workspace_id: uuid.UUID,
    doc_id: uuid.UUID,
    who: Caller,
    seq: Annotated[
        int | None,
        Query(ge=0, description="The text after this operation (default: the head)"),
    ] = None,
) -> Blame:
    async with transaction(request, who) as conn:
        await readable_document(conn, who.agent_id, workspace_id, doc_id)
    with _log_errors(doc_id):
        _doc, served, spans = await log_reader.blame(
            node_of(request).pool, who.tenant_id, doc_id, actor=who.agent_id, at_seq=seq
        )
    return Blame(
        doc_id=doc_id,
        seq=served,
        spans=[BlameSpan(text=s.text, agent_id=s.agent_id) for s in spans],
    )
