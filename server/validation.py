"""Check untrusted CRDT updates in a worker process before they reach a room's document.

yrs holds the GIL while it decodes, and some short random inputs cost hundreds of
milliseconds of CPU (and one grew memory by 256 MB) before failing, so decoding client bytes on
the event loop lets one hostile client stall a node. Each update is first applied to a fresh
document in a worker process whose memory is capped (RLIMIT_AS); a batch that takes longer
than `timeout_s` gets the worker killed and its updates retried one by one, so the costly one
is found and refused (`invalid_update`) while the others pass. Updates queued at the same time,
from any connection, share one round trip to the worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import multiprocessing
import os
import resource
import signal
import sys
from collections.abc import Sequence

import structlog

log = structlog.get_logger("tandem.validation")

PR_SET_PDEATHSIG = 1  # linux/prctl.h
TOO_COSTLY = "the update took too long or too much memory to decode"


def _init_worker(max_bytes: int) -> None:
    """Cap the worker's memory, and make it die with its server: a server killed with SIGKILL
    must not leave its worker behind (the worker holds both ends of its pipes, so it would
    never notice)."""
    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the server died before prctl took effect
            os._exit(1)


def check_updates(updates: Sequence[bytes]) -> list[str | None]:
    """In the worker: None for each update that decodes and applies to an empty document, else
    why not. Pure and importable, so tests can call it directly."""
    from pycrdt import Doc, Text

    verdicts: list[str | None] = []
    for update in updates:
        doc = Doc()
        doc["content"] = Text()
        try:
            doc.apply_update(update)
            verdicts.append(None)
        except BaseException as exc:  # yrs panics surface as pyo3 PanicException (BaseException)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            verdicts.append(f"{type(exc).__name__}: {exc}"[:200])
    return verdicts


class Validator:
    """`await check(update)` -> None (valid) or the reason it is refused.

    Bounds: at most `max_batch` updates per round trip; one worker process (`workers`) per core
    you can spare; `timeout_s` per batch.
    """

    def __init__(self, workers: int = 1, timeout_s: float = 1.0, max_memory_bytes: int = 1 << 30, max_batch: int = 256) -> None:
        self.workers = workers
        self.timeout_s = timeout_s
        self.max_memory_bytes = max_memory_bytes
        self.max_batch = max_batch
        self._pools: list[concurrent.futures.ProcessPoolExecutor] = []
        self._queue: asyncio.Queue[tuple[bytes, asyncio.Future[str | None]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.restarts = 0

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.max_memory_bytes,),
        )

    async def start(self) -> None:
        self._pools = [self._new_pool() for _ in range(self.workers)]
        # Warm each worker up so the first client does not pay for the spawn.
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(p, check_updates, []) for p in self._pools))
        self._tasks = [asyncio.create_task(self._dispatch(i)) for i in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)

    async def check(self, update: bytes) -> str | None:
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((update, future))
        return await future

    async def _dispatch(self, index: int) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            verdicts = await self._run(index, [u for u, _ in batch])
            if verdicts is None:  # the batch was too costly: find the culprit one by one
                verdicts = []
                for update, _ in batch:
                    single = await self._run(index, [update])
                    verdicts.append(TOO_COSTLY if single is None else single[0])
            for (_, future), verdict in zip(batch, verdicts):
                if not future.done():
                    future.set_result(verdict)

    async def _run(self, index: int, updates: list[bytes]) -> list[str | None] | None:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pools[index], check_updates, updates), self.timeout_s)
        except (TimeoutError, concurrent.futures.process.BrokenProcessPool):
            self._restart(index)
            return None

    def _restart(self, index: int) -> None:
        """Kill the worker (a timed-out decode cannot be interrupted) and start a fresh one."""
        self.restarts += 1
        old = self._pools[index]
        for process in list(getattr(old, "_processes", {}).values()):
            process.kill()
        old.shutdown(wait=False, cancel_futures=True)
        self._pools[index] = self._new_pool()
        log.warning("validation.worker_restarted", restarts=self.restarts)
