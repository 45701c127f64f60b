"""Small plain updates are judged on the event loop (server/documents/checker.py, `inline_max_bytes`):
their measures, read in Python by `crdt.cost.plain_measures`, are the worker's to the letter, and
everything else still goes to the worker. Real worker processes; every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import random
import signal

from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from crdt.cost import plain_measures
from server.documents.checker import UpdateChecker, check_updates
from server.documents.checker_wire import Measured
from tests.costly_updates import deletion_only_update, deletions_ahead, many_clients_update, one_item_state

ALPHABET = "abcdefgh é漢字🙂\n"  # one, two, three and four UTF-8 bytes (the last two UTF-16 units)


def editing_session(seed: int, steps: int = 300) -> list[bytes]:
    """The updates three editors of one Y.Text send while typing, deleting (their own text and
    each other's) and syncing: every incremental update, and each editor's whole state."""
    rng = random.Random(seed)
    docs = [Doc(client_id=100 + i) for i in range(3)]
    texts = [doc.get("content", type=Text) for doc in docs]
    updates: list[bytes] = []
    for _ in range(steps):
        i = rng.randrange(3)
        doc, text = docs[i], texts[i]
        before = doc.get_state()
        current = str(text)  # pycrdt's indexes count UTF-8 bytes: cut only between characters

        def at(chars: int, current: str = current) -> int:
            return len(current[:chars].encode())

        if current and rng.random() < 0.4:
            start = rng.randrange(len(current))
            del text[at(start) : at(start + rng.randint(1, 4))]
        else:
            text.insert(at(rng.randint(0, len(current))), "".join(rng.choices(ALPHABET, k=rng.randint(1, 6))))
        update = doc.get_update(before)
        updates.append(update)
        if rng.random() < 0.5:  # another editor receives it
            docs[(i + 1) % 3].apply_update(update)
    return updates + [doc.get_update() for doc in docs]


def test_plain_measures_are_the_worker_s_for_real_editing() -> None:
    updates = [u for seed in range(4) for u in editing_session(seed)]
    worker = check_updates([(b"", u) for u in updates])
    plain = 0
    for update, verdict in zip(updates, worker):
        measured = plain_measures(update)
        if measured is None:
            continue
        plain += 1
        assert isinstance(verdict, Measured)
        clients, reach = measured
        assert (clients, sorted(reach.items())) == (verdict.clients, sorted(verdict.reach)), update.hex()
    assert plain >= 0.95 * len(updates)  # text and deletions: what editors send


def test_deletion_updates_measure_as_the_worker_does() -> None:
    for update in (deletion_only_update(one_item_state(100), 20), deletions_ahead(7, 100, 50), b"\x00\x01\x05\x01\x03\x00"):
        (verdict,) = check_updates([(b"", update)])
        assert isinstance(verdict, Measured)
        assert plain_measures(update) == (verdict.clients, dict(verdict.reach)), update.hex()
    (verdict,) = check_updates([(b"", many_clients_update(300))])
    assert plain_measures(many_clients_update(300)) == (300, {}) and verdict == Measured(300)


def _update_of(build) -> bytes:  # type: ignore[no-untyped-def]
    doc = Doc(client_id=5)
    build(doc)
    return doc.get_update()


def test_everything_but_plain_structs_is_left_to_the_worker() -> None:
    def formatted(doc: Doc) -> None:
        doc.get("content", type=Text).insert(0, "bold", attrs={"bold": True})

    def json_values(doc: Doc) -> None:
        doc.get("content", type=Array).extend([1, "two", {"three": [3]}])

    def map_entry(doc: Doc) -> None:
        doc.get("meta", type=Map)["title"] = "x"

    def subdocument(doc: Doc) -> None:
        doc.get("content", type=Map)["sub"] = Doc()

    for build in (formatted, json_values, map_entry, subdocument):
        assert plain_measures(_update_of(build)) is None, build.__name__
    # Garbage, a group count that cannot fit (yrs would allocate 512 MB for it), trailing bytes.
    for update in (b"\xff\xff\xff\xff", b"\x80\x80\x80\x80\x01" + b"\x00" * 20, _update_of(lambda d: d.get("content", type=Text).insert(0, "x")) + b"\x00"):
        assert plain_measures(update) is None


def test_typing_into_an_xml_paragraph_is_plain_and_making_the_paragraph_is_not() -> None:
    doc = Doc(client_id=5)
    fragment = doc.get("prosemirror", type=XmlFragment)
    paragraph = fragment.children.append(XmlElement("paragraph"))
    text = paragraph.children.append(XmlText())
    made = doc.get_update()
    before = doc.get_state()
    text.insert(0, "hello")
    typed = doc.get_update(before)
    assert plain_measures(made) is None  # type structs: the worker's
    (verdict,) = check_updates([(b"", typed)])
    assert isinstance(verdict, Measured) and plain_measures(typed) == (verdict.clients, dict(verdict.reach))


async def test_the_checker_judges_small_plain_updates_without_a_round_trip() -> None:
    checker = UpdateChecker(inline_max_bytes=256)
    typed = editing_session(9, steps=20)[:20]
    large = _update_of(lambda d: d.get("content", type=Text).insert(0, "x" * 300))
    formatted = _update_of(lambda d: d.get("content", type=Text).insert(0, "b", attrs={"bold": True}))
    async with asyncio.timeout(60):
        await checker.start()
        try:
            worker_pid = checker.pids[0]
            verdicts = await checker.check_many(typed)
            assert checker.inline == len(typed) and verdicts == check_updates([(b"", u) for u in typed])
            # The worker, stopped, answers nothing: the plain updates are judged all the same.
            os.kill(worker_pid, signal.SIGSTOP)
            try:
                assert await asyncio.wait_for(checker.check_many(typed[:5]), 5) == verdicts[:5]
                pending = asyncio.ensure_future(checker.check_many([typed[0], formatted]))
                await asyncio.sleep(0.2)
                assert not pending.done()  # the formatted one waits for the worker
            finally:
                os.kill(worker_pid, signal.SIGCONT)
            assert (await pending)[1] == Measured(1)
            # Larger than the bound, garbage: the worker's verdicts.
            inline_before = checker.inline
            big, garbage = await checker.check_many([large, b"\xff\xff\xff\xff"])
            assert big == Measured(1) and isinstance(garbage, str) and checker.inline == inline_before
        finally:
            await checker.stop()


async def test_an_inline_bound_of_zero_sends_every_update_to_the_worker() -> None:
    checker = UpdateChecker(inline_max_bytes=0)
    async with asyncio.timeout(60):
        await checker.start()
        try:
            assert await checker.check_many(editing_session(3, steps=5)[:5]) and checker.inline == 0
        finally:
            await checker.stop()
