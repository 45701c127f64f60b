"""The workspace's shared JSON state with its version (docs/protocol.md section 12.3).

`ws.state.update(fn)` is optimistic concurrency: `fn` runs on the state the client knows, the
result goes out as `state.update` (`mode: replace`) with that version, and on `Conflict` it runs
again on the state the conflict carries, after a jittered backoff (tenacity), a bounded number
of times. `value` and `version` follow every reply and `state.changed` event (the highest
version wins: events and replies may arrive in any order). Imports nothing of the server.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from tandem_client import wire
from tandem_client.coordination import EventStream, Streams
from tandem_client.errors import ERROR_CLASSES

if TYPE_CHECKING:
    from tandem_client.workspace import Workspace

Conflict = ERROR_CLASSES["conflict"]
State = dict[str, Any]


@dataclass(frozen=True)
class StateChange:
    """A `state.changed` event: the state at `version`, changed by `agent_id`."""

    workspace_id: str
    version: int
    state: State
    agent_id: str | None
    raw: wire.Frame = field(repr=False, compare=False)


class WorkspaceState:
    """`ws.state`: `get()`, `update(fn)`, `merge(partial)`, `patch(ops)`, `changes()`, and the
    last known `value` and `version` (`value` is None until the client has seen the state)."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.version: int | None = None
        self.value: State | None = None
        self._streams: Streams[StateChange] = Streams(workspace.client.options.max_event_queue)

    async def get(self) -> tuple[State, int]:
        """`state.get`: (state, version)."""
        self.workspace._check()
        frame = await self.workspace.client._idempotent("state.get", {"workspace_id": self.workspace.workspace_id})
        self._observe(frame["version"], frame["state"])
        return frame["state"], frame["version"]

    async def update(self, fn: Callable[[State], State | None], attempts: int = 10) -> tuple[State, int]:
        """Set the state to `fn(state)` (a deep copy: `fn` may change it in place and return None),
        based on the version it was computed from. On `Conflict`, `fn` runs again on the current
        state from the conflict's details, after a random exponential backoff
        (`state_retry_initial_s` .. `state_retry_max_s`), at most `attempts` times in all; then
        the last `Conflict` is raised. Returns the new (state, version).

        `ConnectionLost` is raised, not retried: the update may or may not have happened, and
        running `fn` again could apply it twice."""
        if self.value is None or self.version is None:
            await self.get()
        o = self.workspace.client.options
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Conflict),
            stop=stop_after_attempt(attempts),
            wait=wait_random_exponential(multiplier=o.state_retry_initial_s, max=o.state_retry_max_s),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                # The freshest state known: the last conflict's, or newer from state.changed
                # events that arrived during the backoff.
                if self.value is None or self.version is None:
                    await self.get()
                assert self.value is not None and self.version is not None
                version, current = self.version, copy.deepcopy(self.value)
                new = fn(current)
                try:
                    return await self._send(version, mode="replace", value=current if new is None else new)
                except Conflict as conflict:
                    details = conflict.details or {}
                    if isinstance(details.get("version"), int) and isinstance(details.get("state"), dict):
                        self._observe(details["version"], details["state"])
                    else:  # not the documented details: read the state again on the next attempt
                        self.value = None
                    raise
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def merge(
        self, partial: State, *, on_conflict: str = "merge", expected_version: int | None = None
    ) -> tuple[State, int]:
        """`mode: merge`: `partial` merged recursively into the state (objects key by key).
        With `on_conflict="merge"` the server applies it to the current state even if it changed
        since `expected_version` (default: the last version this client knows); with "fail" a
        changed state raises `Conflict`."""
        return await self._send(await self._expected(expected_version), mode="merge", value=partial, on_conflict=on_conflict)

    async def patch(
        self, ops: list[dict[str, Any]], expected_version: int | None = None, on_conflict: str = "fail"
    ) -> tuple[State, int]:
        """`mode: patch`: an RFC 6902 JSON Patch, all operations or none (`InvalidPatch`).
        `expected_version` defaults to the last version this client knows; `on_conflict="merge"`
        applies the patch to the current state instead of raising `Conflict`."""
        return await self._send(await self._expected(expected_version), mode="patch", patch=ops, on_conflict=on_conflict)

    def changes(self, max_queue: int | None = None) -> EventStream[StateChange]:
        """`state.changed` events from now on (bounded; see `EventStream`):
        `async with ws.state.changes() as changes: async for change in changes:`."""
        return self._streams.new(max_queue)

    # --- internals -------------------------------------------------------------------------------

    async def _expected(self, expected_version: int | None) -> int:
        if expected_version is not None:
            return expected_version
        if self.version is None:
            await self.get()
        assert self.version is not None
        return self.version

    async def _send(self, expected_version: int, **fields: Any) -> tuple[State, int]:
        """One `state.update`; not retried after a dropped connection (`ConnectionLost`)."""
        self.workspace._check()
        frame = await self.workspace.client._conn.request(
            "state.update", {"workspace_id": self.workspace.workspace_id, "expected_version": expected_version, **wire.given(**fields)}
        )
        self._observe(frame["version"], frame["state"])
        return frame["state"], frame["version"]

    def _observe(self, version: int, state: State | None) -> None:
        if self.version is None or version > self.version or (version == self.version and self.value is None):
            self.version = version
            if state is not None:
                self.value = state
            self.workspace.client._conn.changed.notify()

    def _observe_version(self, version: int | None) -> None:
        """The version a join reported (without the state)."""
        if version is not None and (self.version is None or version > self.version):
            self.version, self.value = version, None

    def _on_event(self, frame: wire.Frame) -> None:
        self._observe(frame["version"], frame.get("state"))
        self._streams.put(
            StateChange(frame.get("workspace_id", ""), frame["version"], frame.get("state") or {}, frame.get("agent_id"), frame)
        )
