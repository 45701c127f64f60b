"""Updates are decoded in a worker process first (server/validation.py): a costly or corrupt
update is refused there, and the event loop never decodes client bytes it has not seen pass."""

from __future__ import annotations

import asyncio
import os

from pycrdt import Doc, Text

from server.validation import TOO_COSTLY, Validator, check_updates


def _valid_update() -> bytes:
    doc = Doc()
    doc["content"] = text = Text()
    text.insert(0, "hello")
    return doc.get_update()


def test_check_updates_accepts_real_updates_and_names_what_is_wrong_with_garbage() -> None:
    verdicts = check_updates([_valid_update(), b"\xff\xff\xff\xff", _valid_update()[:-3]])
    assert verdicts[0] is None
    assert verdicts[1] is not None and verdicts[2] is not None


async def test_validator_passes_valid_and_refuses_corrupt_updates_in_one_round_trip() -> None:
    validator = Validator(workers=1, timeout_s=10)
    await validator.start()
    try:
        garbage = [os.urandom(40) for _ in range(20)]
        verdicts = await asyncio.gather(validator.check(_valid_update()), *(validator.check(g) for g in garbage))
        assert verdicts[0] is None
        assert sum(v is not None for v in verdicts[1:]) >= 15  # random bytes are almost never an update
    finally:
        await validator.stop()


async def test_a_batch_over_the_time_budget_restarts_the_worker_and_refuses_each_costly_update() -> None:
    validator = Validator(workers=1, timeout_s=0.000_001)
    await validator.start()
    try:
        verdicts = await asyncio.gather(*(validator.check(_valid_update()) for _ in range(3)))
        assert verdicts == [TOO_COSTLY] * 3
        assert validator.restarts >= 1
        validator.timeout_s = 10  # the fresh worker serves again
        assert await validator.check(_valid_update()) is None
    finally:
        await validator.stop()
