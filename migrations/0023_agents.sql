-- migrate:up
-- The agent registry (docs/protocol.md section 12.7): one row per agent of a tenant, keyed by the
-- token's `sub` (agent_id, as in every other table). The listed status is derived, not stored
-- alone: `maintenance` and `error` as set win; otherwise an agent seen (a connection's presence
-- heartbeat on any node bumps last_seen_at) within the presence TTL is `active`, else `inactive`.
-- Capabilities are a text[] with a GIN index rather than a table of their own: the list is short
-- and bounded, always read with its agent, and `capabilities @> ARRAY[c]` finds agents by one
-- capability through the index without a join or a second audited table.
CREATE TABLE agents (
    tenant_id uuid NOT NULL,
    agent_id varchar(255) NOT NULL,
    id uuid NOT NULL DEFAULT gen_random_uuid(),  -- the audit trail's record id
    name varchar(255) NOT NULL,
    kind varchar(100) NOT NULL DEFAULT 'general',
    capabilities text[] NOT NULL DEFAULT '{}',
    max_concurrent_tasks integer NOT NULL DEFAULT 1,
    metadata jsonb NOT NULL DEFAULT '{}',
    status varchar(20) NOT NULL DEFAULT 'active',
    last_seen_at timestamptz,
    tasks_completed bigint NOT NULL DEFAULT 0,
    tasks_failed bigint NOT NULL DEFAULT 0,
    consecutive_failures integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,

    PRIMARY KEY (tenant_id, agent_id),
    CONSTRAINT agents_id_key UNIQUE (id),
    CONSTRAINT agent_name_not_blank CHECK (btrim(name, E' \t\r\n') <> ''),
    CONSTRAINT agent_status_known CHECK (status IN ('active', 'inactive', 'error', 'maintenance')),
    CONSTRAINT agent_capabilities_bounded CHECK (cardinality(capabilities) <= 32
                                                 AND array_position(capabilities, NULL) IS NULL),
    CONSTRAINT agent_max_concurrent_tasks_positive CHECK (max_concurrent_tasks > 0),
    CONSTRAINT agent_metadata_object CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT agent_metadata_bounded CHECK (octet_length(metadata::text) <= 8192),
    CONSTRAINT agent_counters_not_negative CHECK (tasks_completed >= 0 AND tasks_failed >= 0
                                                  AND consecutive_failures >= 0)
);

CREATE INDEX idx_agents_capabilities ON agents USING gin (capabilities);

ALTER TABLE agents ENABLE ROW LEVEL SECURITY;
ALTER TABLE agents FORCE ROW LEVEL SECURITY;

CREATE POLICY agents_tenant_isolation ON agents
    FOR ALL
    USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id());

GRANT SELECT, INSERT, UPDATE ON agents TO tandem_app;

CREATE TRIGGER update_agents_updated_at
    BEFORE UPDATE ON agents
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

-- The heartbeat moves last_seen_at every few seconds: an update that changes nothing else (and
-- updated_at, which the trigger above moves with it) is not audited. The WHEN clause lists every
-- other column: a column added later must be added here.
CREATE TRIGGER audit_agents AFTER INSERT OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION audit_trigger_function('id');

CREATE TRIGGER audit_agents_update AFTER UPDATE ON agents
    FOR EACH ROW
    WHEN ((OLD.tenant_id, OLD.agent_id, OLD.id, OLD.name, OLD.kind, OLD.capabilities,
           OLD.max_concurrent_tasks, OLD.metadata, OLD.status, OLD.tasks_completed, OLD.tasks_failed,
           OLD.consecutive_failures, OLD.created_at)
          IS DISTINCT FROM
          (NEW.tenant_id, NEW.agent_id, NEW.id, NEW.name, NEW.kind, NEW.capabilities,
           NEW.max_concurrent_tasks, NEW.metadata, NEW.status, NEW.tasks_completed, NEW.tasks_failed,
           NEW.consecutive_failures, NEW.created_at))
    EXECUTE FUNCTION audit_trigger_function('id');

-- The listed status (see above): plain SQL and IMMUTABLE over its arguments (the caller passes
-- the transaction's now()), so the planner inlines it into a listing's filter.
CREATE FUNCTION agent_listed_status(status text, last_seen_at timestamptz, seen_within_s double precision,
                                    now timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN status IN ('maintenance', 'error') THEN status
        WHEN last_seen_at > now - seen_within_s * interval '1 second' THEN 'active'
        ELSE 'inactive'
    END
$$;
REVOKE ALL ON FUNCTION agent_listed_status(text, timestamptz, double precision, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agent_listed_status(text, timestamptz, double precision, timestamptz) TO tandem_app;

COMMENT ON TABLE agents IS 'The agent registry of a tenant: capabilities, concurrency limit, health counters';

-- migrate:down
REVOKE EXECUTE ON FUNCTION agent_listed_status(text, timestamptz, double precision, timestamptz) FROM tandem_app;
DROP FUNCTION agent_listed_status(text, timestamptz, double precision, timestamptz);
DROP TRIGGER audit_agents_update ON agents;
DROP TRIGGER audit_agents ON agents;
DROP TRIGGER update_agents_updated_at ON agents;
REVOKE SELECT, INSERT, UPDATE ON agents FROM tandem_app;
DROP POLICY agents_tenant_isolation ON agents;
ALTER TABLE agents NO FORCE ROW LEVEL SECURITY;
ALTER TABLE agents DISABLE ROW LEVEL SECURITY;
DROP INDEX idx_agents_capabilities;
DROP TABLE agents;
