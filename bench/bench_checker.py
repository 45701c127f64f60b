"""Benchmark of the update checker's worker (server/documents/checker.py) on its own.

Starts an `UpdateChecker` and sends `--updates` small valid updates (a 3-character Y.Text insert each,
generated before the clock starts) in calls of `--call-size` updates with `--in-flight` calls
under way at a time, as connections' update pipelines do. Prints updates/s, the main process's
CPU time per update (`time.process_time`, all its threads) and the workers' (psutil, by pid),
the median of `--runs`.

`--module FILE` loads the checker class from another file (e.g. an older version saved outside the
repo, whose class may be named `Validator`); one without `check_many` gets one `check` task per
update, as its callers did.

    .venv/bin/python bench/bench_checker.py [--module /tmp/old_checker.py]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import psutil
from pycrdt import Doc, Text

REPO = Path(__file__).resolve().parent.parent


def load_checker(path: str | None) -> ModuleType:
    if path is None:
        sys.path.insert(0, str(REPO))
        return importlib.import_module("server.documents.checker")
    # Imported by name from its folder, so a spawned worker can import it too.
    file = Path(path).resolve()
    sys.path.insert(0, str(file.parent))
    return importlib.import_module(file.stem)


def small_updates(count: int) -> list[bytes]:
    updates = []
    for i in range(count):
        doc = Doc()
        doc["content"] = text = Text()
        text.insert(0, f"{i % 1000:03d}")
        updates.append(doc.get_update())
    return updates


async def check_call(checker: object, call: list[bytes]) -> list[str | None]:
    check_many = getattr(checker, "check_many", None)
    if check_many is not None:
        return await check_many(call)
    return list(await asyncio.gather(*(checker.check(u) for u in call)))  # type: ignore[attr-defined]


def workers_cpu_s(checker: object) -> float:
    """CPU seconds used so far by the checker's worker processes (0 for a module without pids)."""
    total = 0.0
    for pid in getattr(checker, "pids", []):
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


async def one_run(
    checker: object, calls: list[list[bytes]], in_flight: int, deadline_s: float
) -> tuple[float, float, float]:
    """(updates/s, main-process and worker CPU seconds per update) for sending every call once."""
    pending = iter(calls)
    count = sum(len(call) for call in calls)

    async def sender() -> None:
        for call in pending:  # each sender keeps one call under way: `in_flight` in all
            verdicts = await check_call(checker, call)
            assert not any(isinstance(v, str) for v in verdicts), verdicts[:3]  # a str: refused

    wall, cpu, worker_cpu = time.perf_counter(), time.process_time(), workers_cpu_s(checker)
    async with asyncio.timeout(deadline_s):
        await asyncio.gather(*(sender() for _ in range(in_flight)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    worker_cpu = workers_cpu_s(checker) - worker_cpu
    return count / wall, cpu / count, worker_cpu / count


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", help="an update checker module file to load instead of server/documents/checker.py")
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--call-size", type=int, default=32)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deadline-s", type=float, default=120.0, help="per run")
    args = parser.parse_args()

    module = load_checker(args.module)
    updates = small_updates(args.updates)
    calls = [updates[i : i + args.call_size] for i in range(0, len(updates), args.call_size)]
    checker_class = getattr(module, "UpdateChecker", None) or module.Validator
    checker = checker_class(workers=args.workers, timeout_s=10)
    await checker.start()
    try:
        await one_run(checker, calls[:20], args.in_flight, args.deadline_s)  # warm-up
        results = [await one_run(checker, calls, args.in_flight, args.deadline_s) for _ in range(args.runs)]
    finally:
        await checker.stop()
    rates = [rate for rate, _, _ in results]
    cpus = [cpu for _, cpu, _ in results]
    worker_cpus = [cpu for _, _, cpu in results]
    print(f"checker: {module.__file__} (workers={args.workers})")
    print(f"{args.updates} updates, calls of {args.call_size}, {args.in_flight} in flight, {args.runs} runs")
    print(f"updates/s: median {statistics.median(rates):,.0f} (runs: {', '.join(f'{r:,.0f}' for r in rates)})")
    print(
        f"main-process CPU per update: median {statistics.median(cpus) * 1e6:.1f} us"
        f" (runs: {', '.join(f'{c * 1e6:.1f}' for c in cpus)})"
    )
    print(
        f"worker CPU per update: median {statistics.median(worker_cpus) * 1e6:.1f} us"
        f" (runs: {', '.join(f'{c * 1e6:.1f}' for c in worker_cpus)})"
    )


if __name__ == "__main__":
    asyncio.run(main())
