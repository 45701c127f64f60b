"""The node's revocation set (server/core/revocations.py): which tokens a revocation reaches. Pure."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

from server.core.auth import Principal
from server.core.revocations import Revocation, Revocations

TENANT = uuid.UUID("00000000-0000-0000-0000-00000000000a")
OTHER_TENANT = uuid.UUID("00000000-0000-0000-0000-00000000000b")
ISSUED = 1_767_268_800.0


def principal(
    agent_id: str = "writer", jti: uuid.UUID | None = None, issued_at: float = ISSUED
) -> Principal:
    return Principal(
        TENANT,
        agent_id,
        frozenset(),
        datetime.fromtimestamp(ISSUED + 3600, UTC),
        jti,
        issued_at,
    )


def test_a_token_id_revokes_that_token_of_its_tenant_only() -> None:
    jti = uuid.uuid4()
    revocations = Revocations()
    revocations.add(Revocation(TENANT, "writer", jti, None, ISSUED + 3600))
    assert revocations.revoked(principal(jti=jti))
    assert not revocations.revoked(principal(jti=uuid.uuid4()))
    assert not revocations.revoked(principal(jti=None))
    assert not revocations.revoked(replace(principal(jti=jti), tenant_id=OTHER_TENANT))
    assert Revocation(TENANT, "writer", jti).matches(principal(jti=jti))
    assert not Revocation(TENANT, "writer", jti).matches(principal(jti=uuid.uuid4()))


def test_an_agent_cut_off_revokes_its_tokens_issued_before_it_with_or_without_an_id() -> (
    None
):
    revocations = Revocations()
    cut_off = Revocation(TENANT, "writer", None, ISSUED + 1)
    revocations.add(cut_off)
    for revoked in (principal(), principal(jti=uuid.uuid4())):
        assert revocations.revoked(revoked) and cut_off.matches(revoked)
    later = principal(jti=uuid.uuid4(), issued_at=ISSUED + 1)
    assert not revocations.revoked(later) and not cut_off.matches(later)
    assert not revocations.revoked(principal(agent_id="reader"))
    assert not revocations.revoked(replace(principal(), tenant_id=OTHER_TENANT))


def test_a_cut_off_only_moves_forward() -> None:
    revocations = Revocations()
    revocations.add_all(
        [
            Revocation(TENANT, "writer", None, ISSUED + 10),
            Revocation(TENANT, "writer", None, ISSUED + 1),
        ]
    )
    assert revocations.revoked(principal(issued_at=ISSUED + 5))
    assert len(revocations) == 1


def test_ids_of_expired_tokens_are_forgotten() -> None:
    revocations = Revocations()
    expired, unknown = uuid.uuid4(), uuid.uuid4()
    revocations.add_all(
        [
            Revocation(TENANT, None, expired, None, ISSUED),
            Revocation(TENANT, None, unknown),
        ]
    )
    assert revocations.forget_expired(now=ISSUED + 1) == 1
    assert not revocations.revoked(principal(jti=expired))
    assert revocations.revoked(principal(jti=unknown))
