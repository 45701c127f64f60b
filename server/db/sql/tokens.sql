-- ============================================================================================
-- Token revocation (server/workspaces/revocations.py, migration 0028)
-- Run as the application role inside tenant_transaction(), except revocations_live (every
-- tenant's, through the owner's function).
-- ============================================================================================

-- name: revoke_token
-- Revoke token id $1 of the current tenant (agent $2 and expiry $3 when known); a second
-- revocation of the same id keeps the first's time. Returns the row.
INSERT INTO token_revocations (tenant_id, jti, agent_id, expires_at)
VALUES (current_tenant_id(), $1, $2, $3)
ON CONFLICT (tenant_id, jti) DO UPDATE
SET agent_id = coalesce(token_revocations.agent_id, EXCLUDED.agent_id),
    expires_at = coalesce(token_revocations.expires_at, EXCLUDED.expires_at)
RETURNING agent_id, jti, revoked_at, expires_at;

-- name: revoke_agent
-- Revoke every token of agent $1 of the current tenant issued before now, rounded up to the next
-- whole second (`iat` has whole seconds: a token issued in this second is revoked too). The
-- cut-off only moves forward. Returns it.
INSERT INTO agent_token_revocations (tenant_id, agent_id, revoked_before)
VALUES (current_tenant_id(), $1, date_trunc('second', CURRENT_TIMESTAMP) + interval '1 second')
ON CONFLICT (tenant_id, agent_id) DO UPDATE
SET revoked_before = greatest(agent_token_revocations.revoked_before, EXCLUDED.revoked_before),
    revoked_at = CURRENT_TIMESTAMP
RETURNING agent_id, revoked_before, revoked_at;

-- name: revocations_live
-- Every revocation in force, of every tenant (expired token ids are deleted first).
SELECT tenant_id, agent_id, jti, revoked_before, expires_at FROM live_token_revocations();
