"""Micro-benchmark of `Document.apply`, the server's per-update hot path.

Pre-generates two logs of small edits (seeded): 5,000 updates from 5 clients and 5,000 from
100 clients. Each update is a 3-character insert at a random position by a random client that
first syncs with everything written so far. Then times, per update, a bare pycrdt
`Doc.apply_update`, `Document.apply`, and `Document.apply` followed by reading the stored clock
(`Applied.clock_json()`, or `Applied.clock.to_json()` on code that predates it), each on a
fresh document. Prints the median of --repeat interleaved repetitions in microseconds per
update; asserts nothing.
Pure CPU: no database, no network. Bounded by --updates and --repeat.

    .venv/bin/python bench/bench_apply.py [--updates 5000] [--repeat 5] [--seed 3]

To compare with older code, put its `crdt` package first on the path; `-S` skips the editable
install's import hook, which would otherwise win (the first line printed says which was used):
`PYTHONPATH=/tmp/before:.venv/lib/python3.11/site-packages .venv/bin/python -S bench/bench_apply.py`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from pycrdt import Doc, Text

import crdt
from crdt.document import CONTENT, Document


def generate(n_updates: int, n_clients: int, seed: int) -> list[bytes]:
    """Updates as a hub received them: each client syncs from the hub, inserts 3 chars, sends."""
    rng = random.Random(seed)
    hub: Doc = Doc(client_id=1)
    hub[CONTENT] = Text()
    clients = []
    for _ in range(n_clients):
        doc: Doc = Doc(client_id=rng.randrange(2, 2**32))  # Yjs ids: random uint32
        doc[CONTENT] = Text()
        clients.append(doc)
    updates: list[bytes] = []
    for _ in range(n_updates):
        doc = rng.choice(clients)
        doc.apply_update(hub.get_update(doc.get_state()))
        text: Text = doc[CONTENT]
        before = doc.get_state()
        text.insert(rng.randrange(len(text) + 1), "".join(rng.choices("abcdefghij", k=3)))
        update = doc.get_update(before)
        hub.apply_update(update)
        updates.append(update)
    return updates


def bare(updates: list[bytes]) -> None:
    doc: Doc = Doc()
    doc[CONTENT] = Text()
    for update in updates:
        doc.apply_update(update)


def document_apply(updates: list[bytes]) -> None:
    document = Document()
    for update in updates:
        document.apply(update)


def document_apply_clock(updates: list[bytes]) -> None:
    document = Document()
    for update in updates:
        applied = document.apply(update)
        if hasattr(applied, "clock_json"):
            applied.clock_json()
        else:
            applied.clock.to_json()


def median_us_per_update(
    runs: dict[str, Callable[[list[bytes]], None]], updates: list[bytes], repeat: int
) -> dict[str, float]:
    """Median time per update of each run; repetitions interleave the runs, so a burst of load
    from other processes on the machine does not land on one run only."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run(updates)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) / len(updates) * 1e6 for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    runs = {
        "bare pycrdt apply": bare,
        "Document.apply": document_apply,
        "Document.apply + clock_json": document_apply_clock,
    }
    print(f"crdt from {Path(crdt.__file__).parent}")
    for n_clients in (5, 100):
        updates = generate(args.updates, n_clients, args.seed)
        print(f"{n_clients} clients, {len(updates)} updates (median of {args.repeat}):")
        for name, us in median_us_per_update(runs, updates, args.repeat).items():
            print(f"  {name:30s} {us:7.1f} us/update")

if __name__ == "__main__":
    main()
