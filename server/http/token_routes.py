"""Revoking tokens over HTTP: `POST /tokens/revoke` (docs/http.md, docs/protocol.md#23).

A caller revokes its own tokens only: by `jti`, the token it presents (the server keeps no list
of the tokens it issued, so another id is `not_found`: unknown); by `agent_id`, its own agent's
tokens issued up to now, this one included (another agent is `forbidden`). Scopes are not
enforced by Tandem (protocol section 2.1), so there is no admin scope: an operator revokes any
token or agent with `tandem token revoke`. The revocation and its NOTIFY commit together; this
node then applies it at once, the others when they hear it.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from pydantic import Field, StringConstraints, model_validator

from server.core.auth import Principal
from server.core.errors import ErrorCode, TandemError
from server.http.access import node_of, principal, transaction
from server.http.problems import PROBLEMS
from server.wire.fields import Out
from server.wire.fields import Request as Body
from server.workspaces import revocations
from server.workspaces.directory import rfc3339

router = APIRouter(responses=PROBLEMS)
Caller = Annotated[Principal, Depends(principal)]
AgentId = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00]+$")
]


class TokenRevoke(Body):
    """Exactly one of `jti` (the presented token's id) and `agent_id` (the caller's agent)."""

    jti: Annotated[UUID, Field(strict=False)] | None = None
    agent_id: AgentId | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TokenRevoke:
        if (self.jti is None) == (self.agent_id is None):
            raise ValueError("give exactly one of jti and agent_id")
        return self


class TokenRevoked(Out):
    """What was revoked: one token (`jti`, `expires_at`) or an agent's tokens issued before
    `revoked_before`."""

    tenant_id: UUID
    agent_id: str | None
    jti: UUID | None = None
    revoked_before: str | None = None
    expires_at: str | None = None


@router.post(
    "/tokens/revoke",
    response_model=TokenRevoked,
    summary="Revoke the caller's token or its agent's tokens",
)
async def revoke(request: Request, who: Caller, body: TokenRevoke) -> TokenRevoked:
    node = node_of(request)
    if body.jti is not None:
        if body.jti != who.jti:
            raise TandemError(
                ErrorCode.NOT_FOUND,
                "unknown token id: revoke by jti only the token you present, or every token of your agent by agent_id",
            )
        async with transaction(request, who) as conn:
            revocation, _at = await revocations.revoke_token(
                conn,
                node.node_id,
                who.tenant_id,
                body.jti,
                who.agent_id,
                who.expires_at,
            )
        node.on_revoked(revocation)
        return TokenRevoked(
            tenant_id=who.tenant_id,
            agent_id=who.agent_id,
            jti=body.jti,
            expires_at=rfc3339(who.expires_at),
        )
    if body.agent_id != who.agent_id:
        raise TandemError(
            ErrorCode.FORBIDDEN,
            "an agent revokes only its own tokens; operators use tandem token revoke",
        )
    async with transaction(request, who) as conn:
        revocation, before = await revocations.revoke_agent(
            conn, node.node_id, who.tenant_id, who.agent_id
        )
    node.on_revoked(revocation)
    return TokenRevoked(
        tenant_id=who.tenant_id, agent_id=who.agent_id, revoked_before=rfc3339(before)
    )
