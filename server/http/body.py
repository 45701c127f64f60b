"""The rules every /v1 request body follows before a route sees it: at most `http_max_body_bytes`
(`limit_exceeded`, 413) and, when there is one, JSON (`unsupported_frame`, 415).

A plain ASGI wrapper: the body is read here, bounded (a chunked body is read only up to the limit
plus one byte), and handed on whole, so no route can be made to read more. A body over the limit
is read on, unkept, up to `DRAIN_BYTES` before the 413 is sent: a client still writing when the
server answers and closes would otherwise see a reset instead of the problem.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.core.errors import ErrorCode
from server.http.problems import problem_response

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
OCTET = "application/octet-stream"
RAW_SUFFIX = "/updates"  # the one route whose body is a Yjs update, not JSON
DRAIN_BYTES = (
    1 << 20
)  # most of a refused body read (and dropped) so its client hears the 413


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str) -> bool:
    media = media_type(content_type)
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class BodyGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in scope["headers"]
        }
        limit = self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            if declared.isdigit() and int(declared) <= DRAIN_BYTES:
                await _drain(receive, DRAIN_BYTES)
            await self._too_large(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                if more:
                    await _drain(receive, DRAIN_BYTES - len(body))
                await self._too_large(scope, receive, send)
                return
        has_body = body or "content-type" in headers
        if (
            scope["method"] in BODY_METHODS
            and has_body
            and not is_json(headers.get("content-type", ""))
        ):
            given = headers.get("content-type") or "none"
            wanted = "application/json"
            if scope["path"].endswith(RAW_SUFFIX):
                wanted = OCTET
            if media_type(given) == wanted:
                return await self._pass(scope, receive, send, body)
            detail = f"the body must be {wanted}, not {given}"
            await problem_response(ErrorCode.UNSUPPORTED_FRAME, detail)(
                scope, receive, send
            )
            return
        await self._pass(scope, receive, send, body)

    async def _pass(
        self, scope: Scope, receive: Receive, send: Send, body: bytearray
    ) -> None:
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"the body is larger than http_max_body_bytes ({self.max_body_bytes})"
        details = {"limit": "http_max_body_bytes", "value": self.max_body_bytes}
        response = problem_response(
            ErrorCode.LIMIT_EXCEEDED, detail, details, {"Connection": "close"}
        )
        await response(scope, receive, send)


async def _drain(receive: Receive, budget: int) -> None:
    """Read and drop the rest of a request body, at most `budget` bytes of it."""
    while budget > 0:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return
