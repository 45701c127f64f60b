"""The worker processes of bench/bench_documents.py: each runs the jobs it is sent over a pipe
(bench/doc_load.py) and sends back its results; `Workers` starts them (spawn), gathers their
replies under a deadline and stops them.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from bench.common import raise_fd_limit
from bench.doc_load import (
    CONNECT_CONCURRENCY,
    PHASE_TIMEOUT_S,
    READER_TIMEOUT_S,
    ConnSpec,
    Job,
    Reader,
    Role,
    Writer,
    connect_role,
)


async def recv(pipe: Connection, expected: str, timeout_s: float) -> tuple[Any, ...]:
    def blocking() -> tuple[Any, ...]:
        if not pipe.poll(timeout_s):
            raise TimeoutError(f"no {expected!r} from the coordinator within {timeout_s}s")
        return pipe.recv()

    msg = await asyncio.to_thread(blocking)
    if msg[0] != expected:
        raise RuntimeError(f"expected {expected!r}, got {msg[0]!r}")
    return msg


async def run_job(job: Job, pipe: Connection) -> dict[str, Any]:
    roles: list[Role] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(spec: ConnSpec) -> Role:
        async with gate:
            return await connect_role(job, spec)

    try:
        for b, batch in enumerate(job.batches):
            if b > 0:
                await recv(pipe, "next", PHASE_TIMEOUT_S)
            t0 = time.monotonic()
            async with asyncio.timeout(PHASE_TIMEOUT_S):
                outcomes = await asyncio.gather(*(connect(spec) for spec in batch), return_exceptions=True)
            roles += [o for o in outcomes if isinstance(o, Role)]  # closed in `finally` either way
            failures = [o for o in outcomes if isinstance(o, BaseException)]
            if failures:
                raise failures[0]
            pipe.send(("ready", b, time.monotonic() - t0))
        writers = [r for r in roles if isinstance(r, Writer)]
        readers = [r for r in roles if isinstance(r, Reader)]
        if job.load:
            _, start_at, stop_at = await recv(pipe, "go", PHASE_TIMEOUT_S)
            await asyncio.gather(*(w.run(start_at, stop_at) for w in writers))
            heads: dict[int, int] = {}
            for w in writers:
                for d, seq, _s, _a in w.acks:
                    if seq is not None and seq > heads.get(d, 0):
                        heads[d] = seq
            pipe.send(("drained", heads))
            _, targets = await recv(pipe, "targets", PHASE_TIMEOUT_S)
            for r in readers:
                r.wait_for(targets)
            try:
                async with asyncio.timeout(READER_TIMEOUT_S):
                    await asyncio.gather(*(r.caught_up.wait() for r in readers))
            except TimeoutError:
                pass
        else:
            await recv(pipe, "finish", PHASE_TIMEOUT_S)
        errors: Counter[str] = Counter()
        closings: Counter[str] = Counter()
        for r in roles:
            errors.update(r.errors)
            if r.closing:
                closings[r.closing] += 1
        return {
            "acks": [a for w in writers for a in w.acks],
            "records": [rec for r in readers for rec in r.records],
            "sent": sum(len(w.send_times) for w in writers),
            "ops_to_writers": sum(w.ops_received for w in writers),
            "exhausted": sum(w.exhausted for w in writers),
            "undrained": sum(w.undrained for w in writers),
            "readers_behind": sum(not r.caught_up.is_set() for r in readers) if job.load else 0,
            "errors": dict(errors),
            "closings": dict(closings),
        }
    finally:
        await asyncio.gather(*(r.agent.close() for r in roles), return_exceptions=True)


def worker_main(pipe: Connection) -> None:
    """A load-generating process: runs jobs until told to exit (or an hour of silence)."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    raise_fd_limit(65536)
    while pipe.poll(3600):
        msg = pipe.recv()
        if msg[0] == "exit":
            return
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                result = runner.run(run_job(msg[1], pipe))
            pipe.send(("result", result))
        except BaseException:
            pipe.send(("failed", traceback.format_exc()))


# --- the coordinator's side -------------------------------------------------------------------


class WorkerFailed(RuntimeError):
    pass


@dataclass
class Workers:
    count: int
    procs: list[mp.process.BaseProcess] = field(default_factory=list)
    pipes: list[Connection] = field(default_factory=list)

    def start(self) -> Workers:
        ctx = mp.get_context("spawn")
        for _ in range(self.count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child,), daemon=True)
            proc.start()
            self.procs.append(proc)
            self.pipes.append(parent)
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def send(self, msg: tuple[Any, ...]) -> None:
        for pipe in self.pipes:
            pipe.send(msg)

    def gather(self, expected: str, timeout_s: float, pipes: Sequence[Connection] | None = None) -> list[tuple[Any, ...]]:
        out = []
        deadline = time.monotonic() + timeout_s
        for pipe in pipes if pipes is not None else self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise WorkerFailed(f"no {expected!r} from a worker within {timeout_s}s")
            msg = pipe.recv()
            if msg[0] == "failed":
                raise WorkerFailed(msg[1])
            if msg[0] != expected:
                raise WorkerFailed(f"expected {expected!r}, got {msg[0]!r}")
            out.append(msg)
        return out

    def stop(self) -> None:
        for pipe, proc in zip(self.pipes, self.procs):
            try:
                pipe.send(("exit",))
            except OSError:
                pass
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(10)
