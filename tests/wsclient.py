"""A small client of the JSON protocol for end-to-end tests (the SDK in clients/ is the real one).

`Agent` sends requests with ids and matches replies by `re`; other frames go to an event queue.
`SyncedDoc` keeps a pycrdt text in sync with an open document: local edits become `doc.update`s,
`doc.op` events are applied, and every seq is recorded so tests can check order and gaps.
`refused` connects and collects what a server that refuses the session sends before closing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets
from pycrdt import Doc, Text

from server.core import auth

SECRET = "tandem-test-secret-0123456789abcdef0123456789"

Frame = dict[str, Any]


def token(tenant_id: uuid.UUID, agent_id: str, ttl_s: float = 3600, secret: str = SECRET) -> str:
    return auth.issue_token(secret, tenant_id, agent_id, ttl_s)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class ReplyError(Exception):
    def __init__(self, frame: Frame) -> None:
        super().__init__(f"{frame['code']}: {frame['message']}")
        self.code = frame["code"]
        self.frame = frame


@dataclass
class Agent:
    url: str
    token: str | None
    ws: Any = None
    hello: Frame | None = None
    events: asyncio.Queue[Frame] = field(default_factory=asyncio.Queue)
    docs: dict[str, "SyncedDoc"] = field(default_factory=dict)
    _pending: dict[int, asyncio.Future[Frame]] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _reader: asyncio.Task[None] | None = None
    closed: asyncio.Future[tuple[int | None, str | None]] | None = None
    batch: bool = False  # ask for batched frames in a hello (docs/protocol.md section 3)
    batched_frames: int = 0  # frames that held a JSON array of messages
    connect_options: dict[str, Any] = field(default_factory=dict)  # more arguments of websockets.connect

    async def connect(self) -> "Agent":
        query = f"?token={self.token}" if self.token is not None else ""
        self.ws = await websockets.connect(f"{self.url}{query}", max_size=None, open_timeout=10, **self.connect_options)
        self.hello = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        if self.hello.get("type") != "hello":
            raise ReplyError(self.hello)
        self.closed = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        if self.batch:
            await self.request("hello", protocol=1, batch=True)
        return self

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                value = json.loads(raw)
                if isinstance(value, list):
                    self.batched_frames += 1
                for frame in value if isinstance(value, list) else [value]:
                    await self._on_frame(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            if self.closed is not None and not self.closed.done():
                self.closed.set_result((self.ws.close_code, self.ws.close_reason))
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed"))
                    fut.exception()  # marked retrieved: requests nobody awaits any more are not logged

    async def _on_frame(self, frame: Frame) -> None:
        doc = self.docs.get(frame.get("doc_id", ""))
        # Applied here, in arrival order (a task woken by a reply would run too late).
        if doc is not None and frame["type"] in ("doc.open.ok", "doc.resync.ok"):
            doc.on_open(frame)
        elif doc is not None and frame["type"] == "doc.op":
            doc.on_op(frame)
        elif doc is not None and frame["type"] == "doc.update.ok":
            doc.on_ack(frame)
        re = frame.get("re")
        if "re" in frame and re in self._pending:
            self._pending.pop(re).set_result(frame)
        else:
            await self.events.put(frame)

    async def send(self, message: Frame) -> None:
        await self.ws.send(json.dumps(message))

    async def send_raw(self, data: str | bytes) -> None:
        """Send one frame as is: a `str` as a text frame, `bytes` as a binary frame."""
        await self.ws.send(data)

    async def send_request(self, type_: str, **fields: Any) -> tuple[int, asyncio.Future[Frame]]:
        """Send a request without waiting: its id and the future of its reply frame (error or not)."""
        rid = next(self._ids)
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        await self.send({"type": type_, "id": rid, **fields})
        return rid, fut

    async def send_batch(self, messages: list[Frame]) -> list[asyncio.Future[Frame]]:
        """Send requests as one batched frame (a JSON array, docs/protocol.md section 3), each
        with a fresh id; the futures of their replies, in order."""
        futures = []
        batch = []
        for message in messages:
            rid = next(self._ids)
            self._pending[rid] = future = asyncio.get_running_loop().create_future()
            futures.append(future)
            batch.append({**message, "id": rid})
        await self.ws.send(json.dumps(batch))
        return futures

    async def request(self, type_: str, *, wait_s: float = 30, **fields: Any) -> Frame:
        """Send a request and wait (at most `wait_s`) for its reply; an `error` reply raises
        `ReplyError`. (`wait_s`, not `timeout_s`: `task.create` has a `timeout_s` field.)"""
        _, fut = await self.send_request(type_, **fields)
        frame = await asyncio.wait_for(fut, wait_s)
        if frame["type"] == "error":
            raise ReplyError(frame)
        return frame

    async def error(self, type_: str, *, wait_s: float = 30, **fields: Any) -> Frame:
        """Send a request that must fail; returns its `error` frame."""
        try:
            reply = await self.request(type_, wait_s=wait_s, **fields)
        except ReplyError as exc:
            return exc.frame
        raise AssertionError(f"{type_} succeeded: {reply}")

    async def event(self, predicate: Callable[[Frame], bool], timeout_s: float = 10) -> Frame:
        """The next event (a frame that is not a reply to a pending request) matching `predicate`;
        events before it that do not match are dropped."""
        async with asyncio.timeout(timeout_s):
            while True:
                frame = await self.events.get()
                if predicate(frame):
                    return frame

    async def wait_closed(self, timeout_s: float = 10) -> tuple[int | None, str | None]:
        assert self.closed is not None
        return await asyncio.wait_for(asyncio.shield(self.closed), timeout_s)

    async def open(self, doc_id: str, doc: "SyncedDoc | None" = None) -> "SyncedDoc":
        """Open `doc_id`, catching up `doc` (a SyncedDoc kept from an earlier session) or a new one."""
        doc = doc or SyncedDoc(doc_id)
        doc.attach(self)
        self.docs[doc_id] = doc
        await self.request("doc.open", doc_id=doc_id, state_vector=b64(doc.doc.get_state()))
        return doc  # the reader applied the reply

    async def stop_reading(self) -> None:
        """Stop reading the socket altogether, as a client that cannot keep up does: frames
        stay in the kernel's buffers and the server's writes to this client back up."""
        assert self._reader is not None
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self._reader = None
        self.ws.transport.pause_reading()  # websockets resumes only when frames are read

    async def read_until_closed(self, timeout_s: float = 30) -> int | None:
        """After `stop_reading`: read (and drop) what arrives until the connection ends;
        its close code."""
        self.ws.transport.resume_reading()
        async with asyncio.timeout(timeout_s):
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    await self.ws.recv()
        return self.ws.close_code

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)

    async def __aenter__(self) -> "Agent":
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SyncedDoc:
    """A pycrdt text kept in sync with one open document over an `Agent`."""

    def __init__(self, doc_id: str) -> None:
        self.agent: Agent | None = None
        self.doc_id = doc_id
        self.doc = Doc()
        self.text = self.doc.get("content", type=Text)
        self.changed = asyncio.Event()
        self.attach(None)

    def attach(self, agent: Agent | None) -> None:
        """Start a new subscription (a new session, or a reopen): the per-session records restart."""
        self.agent = agent
        self.open_reply: Frame | None = None
        self.synced_seq: int | None = None  # the open reply's seq; None until it arrived
        self.seqs: list[int] = []  # every seq seen after the open reply, in arrival order
        self.early: list[Frame] = []  # doc.op / doc.update.ok frames that overtook the open reply
        self.acked: dict[Any, int | None] = {}

    @property
    def last_seq(self) -> int:
        """The highest seq seen in this subscription (frames that overtook the reply included)."""
        early = [f["seq"] for f in self.early if f["seq"] is not None]
        return max([self.synced_seq or 0, *self.seqs, *early])

    def on_open(self, reply: Frame) -> None:
        self.open_reply = reply
        self.doc.apply_update(base64.b64decode(reply["update"]))
        self.synced_seq = reply["seq"]
        self.changed.set()

    def on_op(self, frame: Frame) -> None:
        if self.synced_seq is None:
            self.early.append(frame)
        elif frame["seq"] <= self.synced_seq:
            return  # already in the open reply's update (docs/protocol.md#62)
        else:
            self.seqs.append(frame["seq"])
        self.doc.apply_update(base64.b64decode(frame["update"]))
        self.changed.set()

    def on_ack(self, frame: Frame) -> None:
        if self.synced_seq is None:
            self.early.append(frame)
        elif frame["seq"] is not None:
            self.seqs.append(frame["seq"])
        self.acked[frame["re"]] = frame["seq"]
        self.changed.set()

    def local_update(self, fn: Callable[[Text], Any]) -> bytes:
        """Apply `fn(text)` locally; returns the update it made."""
        before = self.doc.get_state()
        fn(self.text)
        return self.doc.get_update(before)

    async def send_edit(self, fn: Callable[[Text], Any]) -> tuple[int, bytes, asyncio.Future[Frame]]:
        """Apply `fn(text)` locally and send the update without waiting: (request id, update, reply future)."""
        assert self.agent is not None
        update = self.local_update(fn)
        rid, fut = await self.agent.send_request("doc.update", doc_id=self.doc_id, update=b64(update))
        return rid, update, fut

    async def edit(self, fn: Callable[[Text], Any]) -> Frame:
        """Apply `fn(text)` locally and send the resulting update; returns the server's ack."""
        assert self.agent is not None
        update = self.local_update(fn)
        return await self.agent.request("doc.update", doc_id=self.doc_id, update=b64(update))

    async def wait_for(self, predicate: Callable[["SyncedDoc"], bool], timeout_s: float = 30) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Refusal:
    """What a server that refuses a session sent: its frames, then the close code and reason."""

    frames: list[Frame]
    code: int | None
    reason: str | None


async def refused(url: str, token_: str | None, timeout_s: float = 10) -> Refusal:
    """Connect with `token_` (None: no token) and read until the server closes the connection."""
    query = f"?token={token_}" if token_ is not None else ""
    frames: list[Frame] = []
    async with asyncio.timeout(timeout_s):
        async with websockets.connect(f"{url}{query}", open_timeout=timeout_s) as ws:
            try:
                async for raw in ws:
                    frames.append(json.loads(raw))
            except websockets.ConnectionClosed:
                pass
            return Refusal(frames, ws.close_code, ws.close_reason)
