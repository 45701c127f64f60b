"""What `Document.apply` spends refusing an update that restates clocks the document holds
otherwise than it holds them (crdt/overlap.py reads the held id back through a diff).

Builds one client's history of `--edits` single-character inserts (a third of them followed by
a deletion, seeded), loads it, then times, per update, applying a forged item that straddles
the document's clock for that client (refused), and `encode_state` for scale. Prints the
median of --repeat runs of --count calls each in milliseconds; asserts nothing. Pure CPU.

    .venv/bin/python bench/bench_overlap.py [--edits 20000] [--count 50] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from pycrdt import Doc, Text, write_var_uint

from crdt.document import CONTENT, CorruptUpdate, Document


def history(edits: int, seed: int) -> bytes:
    rng = random.Random(seed)
    doc = Doc(client_id=7)
    doc[CONTENT] = text = Text()
    for i in range(edits):
        text.insert(rng.randint(0, len(text)), "x")
        if i % 3 == 0 and len(text) > 2:
            del text[rng.randint(0, len(text) - 2)]
    return doc.get_update(b"\x00")


def forged(client: int, clock: int) -> bytes:
    """Another client's "ab" at the root, written as `client`'s clocks from `clock` on."""
    other = Doc(client_id=55)
    other[CONTENT] = text = Text()
    text.insert(0, "ab")
    update = other.get_update(b"\x00")  # 1 group, 1 struct, client 55, clock 0: one byte each
    return update[:2] + write_var_uint(client) + write_var_uint(clock) + update[4:]


def per_call_ms(call, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - start) / count * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=20000)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    state = history(args.edits, args.seed)
    document = Document.from_state(state)
    update = forged(7, document.clock().get(7) - 1)

    def refuse() -> None:
        try:
            document.apply(update)
        except CorruptUpdate:
            return
        raise SystemExit("the forged update was taken: this code predates the check")

    refusing = statistics.median(per_call_ms(refuse, args.count) for _ in range(args.repeat))
    encoding = statistics.median(per_call_ms(document.encode_state, args.count) for _ in range(args.repeat))
    print(f"{args.edits} edits, state {len(state)} bytes, text {len(document.text())} characters")
    print(f"  refusing a forged straddling update  {refusing:7.2f} ms/update")
    print(f"  encode_state (for scale)             {encoding:7.2f} ms")


if __name__ == "__main__":
    main()
