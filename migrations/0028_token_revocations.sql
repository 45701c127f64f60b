-- migrate:up
-- Token revocation (docs/protocol.md section 2.3). Two tables, both scoped to a tenant by forced
-- row-level security like every other:
-- - token_revocations: revoked token ids (the `jti` claim). `expires_at` is the revoked token's
--   own expiry when the revoker knew it (null: unknown); past it the row matters no more (the
--   token is refused as expired) and the sweep below deletes it.
-- - agent_token_revocations: one cut-off per agent; every token of the agent issued (`iat`)
--   before `revoked_before` is revoked. A later revocation moves it forward, never back, so the
--   table holds at most one row per agent and needs no sweep.
-- Each node keeps both in memory (server/core/revocations.py), loaded at start through
-- live_token_revocations() and kept current by the NOTIFY that commits with each revocation.
CREATE TABLE token_revocations (
    tenant_id uuid NOT NULL,
    jti uuid NOT NULL,
    agent_id varchar(255),  -- whose token it is, when the revoker said (the API always does)
    revoked_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    expires_at timestamptz,

    PRIMARY KEY (tenant_id, jti)
);

CREATE INDEX idx_token_revocations_expires_at ON token_revocations (expires_at);

ALTER TABLE token_revocations ENABLE ROW LEVEL SECURITY;
ALTER TABLE token_revocations FORCE ROW LEVEL SECURITY;

CREATE POLICY token_revocations_tenant_isolation ON token_revocations
    FOR ALL
    USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id());

GRANT SELECT, INSERT, UPDATE ON token_revocations TO tandem_app;

CREATE TABLE agent_token_revocations (
    tenant_id uuid NOT NULL,
    agent_id varchar(255) NOT NULL,
    revoked_before timestamptz NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,

    PRIMARY KEY (tenant_id, agent_id)
);

ALTER TABLE agent_token_revocations ENABLE ROW LEVEL SECURITY;
ALTER TABLE agent_token_revocations FORCE ROW LEVEL SECURITY;

CREATE POLICY agent_token_revocations_tenant_isolation ON agent_token_revocations
    FOR ALL
    USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id());

GRANT SELECT, INSERT, UPDATE ON agent_token_revocations TO tandem_app;

-- A node's load crosses tenants, so it runs as the owner (SECURITY DEFINER), which FORCE binds to
-- the policies too: these let the owner read both tables and delete expired token ids. The app
-- role gains nothing.
CREATE POLICY token_revocations_load_select ON token_revocations
    FOR SELECT
    TO tandem_owner
    USING (true);

CREATE POLICY token_revocations_sweep_delete ON token_revocations
    FOR DELETE
    TO tandem_owner
    USING (expires_at < CURRENT_TIMESTAMP);

CREATE POLICY agent_token_revocations_load_select ON agent_token_revocations
    FOR SELECT
    TO tandem_owner
    USING (true);

-- Deletes the token ids whose tokens have expired, then returns every revocation still in force,
-- of every tenant: jti null for an agent's cut-off. Bounded by the unexpired token ids and the
-- agents ever revoked.
CREATE FUNCTION live_token_revocations()
    RETURNS TABLE (tenant_id uuid, agent_id varchar(255), jti uuid, revoked_before timestamptz,
                   expires_at timestamptz)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
BEGIN
    DELETE FROM public.token_revocations r WHERE r.expires_at < CURRENT_TIMESTAMP;
    RETURN QUERY
        SELECT r.tenant_id, r.agent_id, r.jti, NULL::timestamptz, r.expires_at
          FROM public.token_revocations r
        UNION ALL
        SELECT a.tenant_id, a.agent_id, NULL::uuid, a.revoked_before, NULL::timestamptz
          FROM public.agent_token_revocations a;
END;
$$;

REVOKE ALL ON FUNCTION live_token_revocations() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION live_token_revocations() TO tandem_app;

-- migrate:down
REVOKE EXECUTE ON FUNCTION live_token_revocations() FROM tandem_app;
DROP FUNCTION live_token_revocations();
DROP POLICY agent_token_revocations_load_select ON agent_token_revocations;
DROP POLICY token_revocations_sweep_delete ON token_revocations;
DROP POLICY token_revocations_load_select ON token_revocations;

REVOKE SELECT, INSERT, UPDATE ON agent_token_revocations FROM tandem_app;
DROP POLICY agent_token_revocations_tenant_isolation ON agent_token_revocations;
ALTER TABLE agent_token_revocations NO FORCE ROW LEVEL SECURITY;
ALTER TABLE agent_token_revocations DISABLE ROW LEVEL SECURITY;
DROP TABLE agent_token_revocations;

REVOKE SELECT, INSERT, UPDATE ON token_revocations FROM tandem_app;
DROP POLICY token_revocations_tenant_isolation ON token_revocations;
ALTER TABLE token_revocations NO FORCE ROW LEVEL SECURITY;
ALTER TABLE token_revocations DISABLE ROW LEVEL SECURITY;
DROP INDEX idx_token_revocations_expires_at;
DROP TABLE token_revocations;
