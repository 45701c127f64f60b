"""Revoked tokens as a node holds them: a set of token ids and a cut-off per agent.

A token is revoked when its `jti` is listed for its tenant, or when its agent has a cut-off
(`revoked_before`, seconds since the epoch) and the token was issued (`iat`) before it. The
node loads the unexpired rows at start and after every reconnect of its LISTEN connection, and
adds each revocation it hears of (migration 0028, server/cluster/hints.py), so checking a token
reads no database. Pure: no I/O, no asyncio.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from uuid import UUID

from server.core.auth import Principal


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revocation: of the token `jti`, or (jti None) of every token of `agent_id` issued
    before `revoked_before`. `expires_at` (seconds since the epoch; None: unknown) is when a
    revoked token id stops mattering, the token having expired."""

    tenant_id: UUID
    agent_id: str | None
    jti: UUID | None = None
    revoked_before: float | None = None
    expires_at: float | None = None

    def matches(self, principal: Principal) -> bool:
        """Whether this revocation revokes the token `principal` came from."""
        if principal.tenant_id != self.tenant_id:
            return False
        if self.jti is not None:
            return principal.jti == self.jti
        return (
            principal.agent_id == self.agent_id
            and self.revoked_before is not None
            and principal.issued_at < self.revoked_before
        )


class Revocations:
    """The revocations this node knows, checked for every token it admits."""

    def __init__(self) -> None:
        self._jtis: dict[tuple[UUID, UUID], float | None] = {}
        self._agents: dict[tuple[UUID, str], float] = {}

    def __len__(self) -> int:
        return len(self._jtis) + len(self._agents)

    def add(self, revocation: Revocation) -> None:
        """Remember `revocation`; a later cut-off for an agent replaces an earlier one."""
        if revocation.jti is not None:
            self._jtis[(revocation.tenant_id, revocation.jti)] = revocation.expires_at
        elif revocation.agent_id is not None and revocation.revoked_before is not None:
            key = (revocation.tenant_id, revocation.agent_id)
            self._agents[key] = max(
                self._agents.get(key, revocation.revoked_before),
                revocation.revoked_before,
            )

    def add_all(self, revocations: list[Revocation]) -> None:
        """What the database holds (a load). Added, never replacing: a revocation is never undone,
        and one heard while the load read an older snapshot must stay."""
        for revocation in revocations:
            self.add(revocation)

    def revoked(self, principal: Principal) -> bool:
        """Whether the token `principal` came from is revoked. Two dictionary lookups."""
        if (
            principal.jti is not None
            and (principal.tenant_id, principal.jti) in self._jtis
        ):
            return True
        cut_off = self._agents.get((principal.tenant_id, principal.agent_id))
        return cut_off is not None and principal.issued_at < cut_off

    def forget_expired(self, now: float | None = None) -> int:
        """Drop token ids whose tokens have expired (they are refused as expired anyway)."""
        at = time.time() if now is None else now
        gone = [
            key
            for key, expires_at in self._jtis.items()
            if expires_at is not None and expires_at < at
        ]
        for key in gone:
            del self._jtis[key]
        return len(gone)
