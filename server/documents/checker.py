"""Check untrusted CRDT updates in a worker process before they reach a room's document.

yrs holds the GIL while it decodes, and some short hostile inputs cost hundreds of milliseconds
of CPU (or 512 MB of memory) before failing, so decoding client bytes on the event loop lets one
hostile client stall a node. Each update is first applied to a fresh document in a worker process
(`python -m server.documents.checker MAX_BYTES`) whose memory is capped (RLIMIT_AS), which also counts
its clients; an update that may cost more against the room's real document is applied there to
a copy of the room's state and timed (`check_against`; the bounds are server/documents/update_bounds.py).
A round trip that takes longer than `timeout_s`, or whose worker dies, gets the worker killed
and replaced and its updates retried one by one, so the costly one is found and refused while
the others pass. Updates queued at the same time, from any connection, share one round trip.

A small update of plain structs (up to `inline_max_bytes`: text and deletions, the bulk of what
editors send) needs no worker: `crdt.cost.plain_measures` reads all of it in Python, every count
bounded by the bytes left, and it holds no content only yrs parses (types, JSON, `any`, embeds),
so its verdict is given on the event loop in microseconds instead of a round trip (0.4-1.6 ms of
an update's latency here). Anything else, or anything that reads wrong, goes to the worker.

The worker speaks a small binary protocol over its stdin/stdout (server/documents/checker_wire.py).
The server side uses the event loop's pipes only: no helper threads, no pickle.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import struct
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from server.documents.checker_wire import (
    U32,
    Measured,
    Verdict,
    decode_reply,
    encode_reply,
    encode_request,
    read_request,
)

# The worker process (python -m server.documents.checker) needs none of them: they double its start-up time.
if __name__ != "__main__":
    import asyncio

    import structlog

    from crdt.cost import plain_measures

    log = structlog.get_logger("tandem.checker")

PR_SET_PDEATHSIG = 1  # linux/prctl.h
TOO_COSTLY = "the update took too long or too much memory to decode"
SPAWN_TIMEOUT_S = 30.0  # a fresh worker's start-up (interpreter + pycrdt import) on a busy host
STOP_TIMEOUT_S = 1.0  # after its stdin closes, a worker exits at once unless it is mid-decode


def check_updates(items: Sequence[tuple[bytes, bytes]]) -> list[Verdict]:
    """In the worker: the verdict on each (state, update). With an empty state, the update is
    applied to an empty document (whose root is the Y.Text `content`, as in a room); otherwise
    it is applied to a document holding `state` and timed. Either way its clients and deletion
    reach are measured (crdt/cost.py). A reason when it does not apply. Pure and importable,
    so tests can call it.

    On pycrdt's native document and transaction (`pycrdt._pycrdt`, what `pycrdt.Doc` wraps):
    the wrapper builds locks, origin tables and a root-type object per document: 18.5 us of
    worker CPU per update here against 4.0 this way (bench/bench_checker.py, medians of 3)."""
    from pycrdt._pycrdt import Doc

    from crdt.cost import apply_cpu_s, deletion_reach, struct_groups

    verdicts: list[Verdict] = []
    for state, update in items:
        try:
            if state:
                timed = apply_cpu_s(state, update)
                verdicts.append(Measured(struct_groups(update), timed, tuple(deletion_reach(update).items())))
                continue
            doc = Doc(None, None, None)  # client id, skip_gc, guid: the defaults
            txn = doc.create_transaction()
            try:
                doc.get_or_insert_text(txn, "content")
                doc.apply_update(txn, update)
                txn.commit()
            finally:
                txn.drop()
            verdicts.append(Measured(struct_groups(update), None, tuple(deletion_reach(update).items())))
        except BaseException as exc:  # yrs panics surface as pyo3 PanicException (BaseException)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            verdicts.append(f"{type(exc).__name__}: {exc}"[:200])
    return verdicts


# --- the worker process ------------------------------------------------------------------------


def _init_worker(max_bytes: int) -> None:
    """Cap the worker's memory, and make it die with its server: a server killed with SIGKILL
    must not leave its worker behind. A worker killed by the cap leaves no core file."""
    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the server died before prctl took effect
            os._exit(1)


def main(argv: Sequence[str]) -> int:
    """`python -m server.documents.checker MAX_BYTES`: answer requests on stdin until it closes."""
    _init_worker(int(argv[1]))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (items := read_request(stdin)) is not None:
        stdout.write(encode_reply(check_updates(items)))
        stdout.flush()
    return 0


# --- the server side ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Request:
    """One `check_many` call: its (state, update) items may be spread over several round trips
    (and workers)."""

    updates: Sequence[tuple[bytes, bytes]]
    future: asyncio.Future[list[Verdict]]
    verdicts: list[Verdict] = field(init=False)
    taken: int = 0  # updates already handed to a dispatcher
    pending: int = field(init=False)  # updates without a verdict yet

    def __post_init__(self) -> None:
        self.verdicts = [TOO_COSTLY] * len(self.updates)
        self.pending = len(self.updates)


# Signs that a worker is stuck, gone or garbled (asyncio.IncompleteReadError is an EOFError):
# it is killed and replaced.
_WORKER_FAILURES = (TimeoutError, EOFError, ConnectionError, ValueError, struct.error)


class UpdateChecker:
    """The update checker: worker processes that decode client updates before a room applies
    them (`Room.apply_update`). `await check(update)` / `await check_many(updates)`: each
    update's `Measured` (it applies to an empty document) or why it is refused;
    `await check_against(state, update)`: the same, applied to a document holding `state` and
    timed.

    Bounds: at most `max_batch` updates per round trip; `workers` worker processes (one per core
    you can spare), each with its own dispatcher on the shared queue; `timeout_s` per round trip;
    `max_memory_bytes` of address space per worker. Plain updates up to `inline_max_bytes` are
    judged on the event loop (0: every update goes to a worker).
    """

    def __init__(
        self, workers: int = 1, timeout_s: float = 1.0, max_memory_bytes: int = 1 << 30, max_batch: int = 256,
        inline_max_bytes: int = 0,
    ) -> None:
        self.inline_max_bytes = inline_max_bytes
        self.inline = 0  # updates judged on the event loop
        self.workers = workers
        self.timeout_s = timeout_s
        self.max_memory_bytes = max_memory_bytes
        self.max_batch = max_batch
        self.restarts = 0
        self._procs: list[asyncio.subprocess.Process] = []
        self._queue: deque[_Request] = deque()
        self._queued = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pids(self) -> list[int]:
        """The worker processes' pids, in dispatcher order."""
        return [proc.pid for proc in self._procs]

    async def start(self) -> None:
        """Start every worker, warmed up so the first client does not pay for the spawn."""
        started = await asyncio.gather(*(self._spawn() for _ in range(self.workers)), return_exceptions=True)
        failures = [result for result in started if isinstance(result, BaseException)]
        if failures:  # leave no worker behind
            await asyncio.gather(*(self._end(r, kill=True) for r in started if not isinstance(r, BaseException)))
            raise failures[0]
        self._procs = [r for r in started if not isinstance(r, BaseException)]
        self._tasks = [asyncio.create_task(self._dispatch(i)) for i in range(self.workers)]

    async def stop(self) -> None:
        """Stop the dispatchers, cancel the checks still queued and end every worker."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        while self._queue:
            self._queue.popleft().future.cancel()
        await asyncio.gather(*(self._end(proc, kill=False) for proc in self._procs))
        self._procs = []

    async def check(self, update: bytes) -> Verdict:
        return (await self.check_many([update]))[0]

    async def check_against(self, state: bytes, update: bytes) -> Verdict:
        """`update` applied to a copy of a room's `state` (its `encode_state()`), timed: the
        worker pays for loading the state too, so keep this for updates that need it."""
        return (await self._submit([(state, update)]))[0]

    async def check_many(self, updates: Sequence[bytes]) -> list[Verdict]:
        """The verdicts of `updates`, in order: the plain small ones at once, the others in
        one future for the call, whatever its size."""
        verdicts: list[Verdict | None] = [self._inline(update) for update in updates]
        rest = [i for i, verdict in enumerate(verdicts) if verdict is None]
        if rest:
            for i, verdict in zip(rest, await self._submit([(b"", updates[i]) for i in rest])):
                verdicts[i] = verdict
        self.inline += len(updates) - len(rest)
        return verdicts  # type: ignore[return-value]  # every None was filled

    def _inline(self, update: bytes) -> Measured | None:
        if len(update) > self.inline_max_bytes:
            return None
        measured = plain_measures(update)
        if measured is None:
            return None
        clients, reach = measured
        return Measured(clients, None, tuple(reach.items()))

    async def _submit(self, items: list[tuple[bytes, bytes]]) -> list[Verdict]:
        if not items:
            return []
        request = _Request(items, asyncio.get_running_loop().create_future())
        self._queue.append(request)
        self._queued.set()
        return await request.future

    async def _dispatch(self, index: int) -> None:
        while True:
            while not self._queue:
                self._queued.clear()
                await self._queued.wait()
            parts = self._take_batch()
            updates = [u for request, start, end in parts for u in request.updates[start:end]]
            if not updates:  # only cancelled calls were queued
                continue
            verdicts = await self._run(index, updates)
            if isinstance(verdicts, TimeoutError) and len(updates) == 1:
                verdicts = [TOO_COSTLY]  # it alone outran the time: running it again costs as much
            elif isinstance(verdicts, BaseException):  # too costly, or the worker died: one by one
                verdicts = []
                for update in updates:
                    single = await self._run(index, [update])
                    verdicts.append(TOO_COSTLY if isinstance(single, BaseException) else single[0])
            offset = 0
            for request, start, end in parts:
                request.verdicts[start:end] = verdicts[offset : offset + end - start]
                offset += end - start
                request.pending -= end - start
                if request.pending == 0 and not request.future.done():
                    request.future.set_result(request.verdicts)

    def _take_batch(self) -> list[tuple[_Request, int, int]]:
        """Up to `max_batch` updates from the head of the queue, as (call, start, end) slices;
        a call left unfinished stays at the head for the next round trip (or another worker)."""
        parts = []
        room = self.max_batch
        while self._queue and room > 0:
            request = self._queue[0]
            if request.future.done():  # its caller is gone (cancelled): skip the rest of it
                self._queue.popleft()
                continue
            start = request.taken
            end = min(len(request.updates), start + room)
            request.taken = end
            parts.append((request, start, end))
            room -= end - start
            if end == len(request.updates):
                self._queue.popleft()
        return parts

    async def _run(self, index: int, updates: list[tuple[bytes, bytes]]) -> list[Verdict] | BaseException:
        """One round trip to worker `index`, or why it failed (the worker was replaced)."""
        proc = self._procs[index]
        try:
            async with asyncio.timeout(self.timeout_s):
                return await _round_trip(proc, updates)
        except _WORKER_FAILURES as exc:
            await self._restart(index, exc)
            return exc

    async def _restart(self, index: int, cause: BaseException) -> None:
        """Kill the worker (a decode under way cannot be interrupted) and start a fresh one."""
        self.restarts += 1
        old = self._procs[index]
        await self._end(old, kill=True)
        log.warning(
            "checker.worker_restarted",
            restarts=self.restarts,
            pid=old.pid,
            returncode=old.returncode,
            cause=type(cause).__name__,
        )
        try:
            self._procs[index] = await self._spawn()
        except (*_WORKER_FAILURES, OSError) as exc:
            # Keep the dead one: the next round trip fails at once and tries again.
            log.error("checker.worker_start_failed", error=repr(exc))

    async def _spawn(self) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server.documents.checker",
            str(self.max_memory_bytes),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(SPAWN_TIMEOUT_S):
                await _round_trip(proc, [])  # imports pycrdt in the worker
        except BaseException:
            await self._end(proc, kill=True)
            raise
        return proc

    @staticmethod
    async def _end(proc: asyncio.subprocess.Process, *, kill: bool) -> None:
        """End the worker: close its stdin (it exits at end of input) or kill it by pid, then
        reap it. Killed anyway if it does not exit within STOP_TIMEOUT_S."""
        if kill and proc.returncode is None:
            proc.kill()
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _round_trip(proc: asyncio.subprocess.Process, updates: list[tuple[bytes, bytes]]) -> list[Verdict]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(encode_request(updates))
    await proc.stdin.drain()
    (length,) = U32.unpack(await proc.stdout.readexactly(4))
    return decode_reply(await proc.stdout.readexactly(length), len(updates))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
