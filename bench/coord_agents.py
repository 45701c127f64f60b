"""The agents of bench/bench_coordination.py: one connection each (`Client`, counting lock and
state events by their opening bytes), what they tally, and their loops: lock contention, state
replaced, incremented with retries on `conflict`, and merged. Every loop is bounded in time and
in count.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.lean_client import Agent

LOCK_TTL_MS = 5000
JITTER_S = (0.001, 0.005)  # the pause after `locked` before trying again
LOCK_WAIT_MS = 2000  # `one-wait`: how long one acquisition may queue for the lock
MAX_OPS_PER_AGENT = 200_000  # every agent loop is bounded in count as well as in time
MAX_TRIES_PER_INCREMENT = 1000  # attempts of one counter increment before giving up
REQUEST_TIMEOUT_S = 30.0
SETUP_TIMEOUT_S = 180.0  # connecting and joining one scenario's agents
END_TIMEOUT_S = 120.0  # agents finishing their last cycle after the measured window
CONNECT_CONCURRENCY = 20
STATE_AGENTS = 10
# Events are counted by their opening bytes, never parsed: with 100 agents in one workspace every
# lock change reaches 100 sessions (the server writes the type first, compact JSON).
EVENT_PREFIXES = ('{"type":"lock.acquired"', '{"type":"lock.released"', '{"type":"lock.renewed"', '{"type":"state.changed"')


# --- one agent's connection ---------------------------------------------------------------------


class Client:
    """An agent's connection with at most one request in flight: `call` sends and waits for the
    reply (an error frame is returned, not raised); events are counted, not parsed."""

    def __init__(self, agent: Agent, agent_id: str) -> None:
        assert agent.sock is not None
        self.agent = agent
        self.agent_id = agent_id
        self.sock = agent.sock
        self.sock.on_text = self.on_text
        self.rid = 1_000_000  # above the ids `Agent.request` used during setup
        self.waiter: asyncio.Future[dict[str, Any]] | None = None
        self.events = 0
        self.stray = 0

    def on_text(self, text: str) -> None:
        if text.startswith(EVENT_PREFIXES):
            self.events += 1
            return
        frame = json.loads(text)
        waiter = self.waiter
        if waiter is not None and not waiter.done() and frame.get("re") == self.rid:
            waiter.set_result(frame)
        else:
            self.stray += 1  # e.g. session.closing

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        self.rid += 1
        self.waiter = asyncio.get_running_loop().create_future()
        self.sock.send_text(json.dumps({**message, "id": self.rid}, separators=(",", ":")))
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            return await self.waiter


@dataclass
class Tally:
    """What the agents of one run measured (samples only from requests started in the window)."""

    attempts: int = 0
    locked: int = 0
    cycles: int = 0  # locks: acquire + release; state: successful updates
    conflicts: int = 0
    merged: int = 0
    gave_up: int = 0
    total_ok: int = 0  # successful updates over the whole run, warm-up included (state checks)
    errors: Counter[str] = field(default_factory=Counter)
    first_ms: list[float] = field(default_factory=list)  # acquire round trips / update round trips
    cycle_ms: list[float] = field(default_factory=list)  # acquire -> release / first try -> success


def error_code(frame: dict[str, Any]) -> str:
    return str(frame.get("code")) if frame.get("type") == "error" else f"unexpected {frame.get('type')}"


# --- agent loops ----------------------------------------------------------------------------------


async def lock_loop(
    c: Client, target: dict[str, Any], pause_s: tuple[float, float], measure_from: float, stop_at: float, t: Tally,
    wait_ms: int = 0,
) -> None:
    """Poll (`locked`, pause, try again) or, with `wait_ms`, let the server queue the acquisition."""
    acquire = {"type": "lock.acquire", **target, "ttl_ms": LOCK_TTL_MS}
    rng = random.Random(c.agent_id)
    for _ in range(MAX_OPS_PER_AGENT):
        t0 = time.monotonic()
        if t0 >= stop_at:
            return
        if wait_ms:  # never past the end of the window
            acquire["wait_ms"] = max(1, min(wait_ms, int((stop_at - t0) * 1000)))
        reply = await c.call(acquire)
        t1 = time.monotonic()
        measured = t0 >= measure_from
        if measured:
            t.attempts += 1
            t.first_ms.append((t1 - t0) * 1000)
        if reply["type"] == "lock.acquire.ok":
            released = await c.call({"type": "lock.release", **target, "fence": reply["lock"]["fence"]})
            if released["type"] != "lock.release.ok":
                t.errors[error_code(released)] += 1
            elif measured:
                t.cycles += 1
                t.cycle_ms.append((time.monotonic() - t0) * 1000)
            continue
        if reply.get("code") == "locked":
            t.locked += measured
        else:
            t.errors[error_code(reply)] += 1
        if not wait_ms:
            await asyncio.sleep(rng.uniform(*pause_s))  # the back-off under test, not a wait for a condition


def update(workspace_id: str, version: int, mode: str, value: dict[str, Any], on_conflict: str = "fail") -> dict[str, Any]:
    return {"type": "state.update", "workspace_id": workspace_id, "expected_version": version, "mode": mode,
            "value": value, "on_conflict": on_conflict}  # fmt: skip


async def current_state(c: Client, workspace_id: str) -> tuple[int, dict[str, Any]]:
    reply = await c.call({"type": "state.get", "workspace_id": workspace_id})
    if reply["type"] != "state.get.ok":
        raise RuntimeError(f"state.get: {error_code(reply)}")
    return reply["version"], reply["state"]


async def replace_loop(c: Client, workspace_id: str, measure_from: float, stop_at: float, t: Tally) -> None:
    """Sole writer of its workspace: every update names the right version."""
    version, _ = await current_state(c, workspace_id)
    for i in range(MAX_OPS_PER_AGENT):
        t0 = time.monotonic()
        if t0 >= stop_at:
            return
        reply = await c.call(update(workspace_id, version, "replace", {"counter": i, "agent": c.agent_id}))
        t1 = time.monotonic()
        if reply["type"] == "state.update.ok":
            version = reply["version"]
            t.total_ok += 1
            if t0 >= measure_from:
                t.cycles += 1
                t.first_ms.append((t1 - t0) * 1000)
        else:
            t.errors[error_code(reply)] += 1
            if reply.get("code") == "conflict":
                version = reply["details"]["version"]


async def increment_loop(c: Client, workspace_id: str, measure_from: float, stop_at: float, t: Tally) -> None:
    """Read-modify-write of one shared counter; a `conflict` carries the current state to retry from."""
    version, state = await current_state(c, workspace_id)
    counter = state.get("counter", 0)
    for _ in range(MAX_OPS_PER_AGENT):
        t0 = time.monotonic()
        if t0 >= stop_at:
            return
        measured = t0 >= measure_from
        for _try in range(MAX_TRIES_PER_INCREMENT):
            sent = time.monotonic()
            reply = await c.call(update(workspace_id, version, "replace", {"counter": counter + 1}))
            done = time.monotonic()
            if measured:
                t.attempts += 1
                t.first_ms.append((done - sent) * 1000)
            if reply["type"] == "state.update.ok":
                version, counter = reply["version"], reply["state"]["counter"]
                t.total_ok += 1
                if measured:
                    t.cycles += 1
                    t.cycle_ms.append((done - t0) * 1000)
                break
            if reply.get("code") != "conflict":
                t.errors[error_code(reply)] += 1
                version, state = await current_state(c, workspace_id)
                counter = state.get("counter", 0)
                break
            t.conflicts += measured
            version, counter = reply["details"]["version"], reply["details"]["state"].get("counter", 0)
        else:
            t.gave_up += 1


async def merge_loop(c: Client, workspace_id: str, measure_from: float, stop_at: float, t: Tally) -> None:
    """Merges its own key, naming the last version it saw; the server merges over any newer one."""
    version, _ = await current_state(c, workspace_id)
    for i in range(MAX_OPS_PER_AGENT):
        t0 = time.monotonic()
        if t0 >= stop_at:
            return
        reply = await c.call(update(workspace_id, version, "merge", {"agents": {c.agent_id: i}}, "merge"))
        t1 = time.monotonic()
        if reply["type"] == "state.update.ok":
            version = reply["version"]
            t.total_ok += 1
            if t0 >= measure_from:
                t.cycles += 1
                t.merged += bool(reply["merged"])
                t.first_ms.append((t1 - t0) * 1000)
        else:
            t.errors[error_code(reply)] += 1
