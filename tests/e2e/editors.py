"""Stock Yjs editors for end-to-end tests: y-websocket's WebsocketProvider in Node processes
(tests/node/yclient.mjs), driven over stdin/stdout (fixtures `node_clients` and `editors` in
tests/e2e/conftest.py)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests import wsclient
from tests.conftest import TENANT_A
from tests.nodejs import NODE, node_env


class YClient:
    """One Yjs editor in a Node process; its JSON-line events are folded into attributes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.text = ""
        self.synced = 0  # times the provider reported synced
        self.awareness: dict[str, Any] = {}
        self.closes: list[tuple[int | None, str | None]] = []
        self.closed: tuple[int, str] | None = None  # closed for good (no reconnect)
        self.denied: list[str] = []
        self.replies: dict[int, dict[str, Any]] = {}
        self.typed = 0  # characters typed by "type" commands so far
        self.changed = asyncio.Event()
        self.stderr = b""
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            event = json.loads(line)
            kind = event["event"]
            if kind == "text":
                self.text = event["text"]
            elif kind == "synced":
                self.synced += 1
                self.text = event["text"]
            elif kind == "awareness":
                self.awareness = event["states"]
            elif kind == "close":
                self.closes.append((event["code"], event["reason"]))
            elif kind == "closed":
                self.closed = (event["code"], event["reason"])
            elif kind == "denied":
                self.denied.append(event["reason"])
            elif kind == "reply":
                self.replies[event["id"]] = event
            elif kind == "typed":
                self.typed += event["count"]
            self.changed.set()

    async def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()

    async def insert(self, text: str, index: int | str | None = None) -> None:
        await self.send(cmd="insert", index=index, text=text)

    async def type(self, text: str) -> None:
        """Append `text` one character (one update) at a time, as fast as the editor can."""
        typed = self.typed + len(text)
        await self.send(cmd="type", text=text)
        await self.wait_for(lambda c: c.typed >= typed)

    async def state(self) -> dict[str, Any]:
        rid = len(self.replies) + 1
        await self.send(cmd="state", id=rid)
        await self.wait_for(lambda c: rid in c.replies)
        return self.replies[rid]

    async def wait_for(self, predicate: Callable[[YClient], bool], timeout_s: float = 30) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate(self):
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"Yjs client: condition not met within {timeout_s}s (text={self.text[:200]!r}, "
                                 f"closes={self.closes}, closed={self.closed}, stderr={self.stderr[-500:]!r})") from None

    async def stop(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.send(cmd="exit")
                await asyncio.wait_for(self.proc.wait(), 5)
            except (TimeoutError, ConnectionError):
                self.proc.kill()
                await self.proc.wait()
        if self.proc.stderr is not None:
            self.stderr = await self.proc.stderr.read()
        await asyncio.wait_for(self._reader, 5)


class Editors:
    """Starts Yjs editors against a server; stops them all (by pid) at the end of the test."""

    def __init__(self, node_dir: Path) -> None:
        self.node_dir = node_dir
        self.started: list[YClient] = []

    async def start(self, base: str, ws_id: str, doc_id: str, token: str, synced: bool = True) -> YClient:
        """An editor of `doc_id` at `base` (`ws://host:port`); waits until it synced unless told not to."""
        return await self.start_at(f"{base}/yjs/{ws_id}", doc_id, token, synced)

    async def start_at(self, server_url: str, room: str, token: str, synced: bool = True) -> YClient:
        """An editor given y-websocket's own arguments: `serverUrl` (`ws://host:port/yjs/WORKSPACE`) and room."""
        proc = await asyncio.create_subprocess_exec(
            NODE, str(self.node_dir / "yclient.mjs"), server_url, room, token,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.node_dir, env=node_env(),
            limit=1 << 24,
        )
        client = YClient(proc)
        self.started.append(client)
        if synced:
            await client.wait_for(lambda c: c.synced > 0)
        return client

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.started), return_exceptions=True)


def base_url(tandem: Any, server: Any = None) -> str:
    server = server or tandem.server
    return f"ws://{server.host}:{server.port}"


def tok(agent_id: str, tenant: uuid.UUID = TENANT_A, **kw: Any) -> str:
    return wsclient.token(tenant, agent_id, **kw)


