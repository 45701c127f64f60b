-- migrate:up
-- Delegation history of a task. NOTES 2: the seed had no tenant_id and no RLS here; the composite
-- key ties each delegation to a task of its own tenant (NOTES 8).
CREATE TABLE task_delegations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL,
    task_id uuid NOT NULL,
    from_agent_id varchar(255) NOT NULL,
    to_agent_id varchar(255) NOT NULL,
    reason text,
    delegation_type delegation_type DEFAULT 'manual',
    metadata jsonb DEFAULT '{}' NOT NULL,
    delegated_at timestamptz DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT task_delegations_task_id_fkey FOREIGN KEY (task_id, tenant_id)
        REFERENCES tasks (id, tenant_id) ON DELETE CASCADE,
    CONSTRAINT metadata_is_object CHECK (jsonb_typeof(metadata) = 'object')
);

CREATE INDEX idx_delegations_task_id ON task_delegations (task_id);
CREATE INDEX idx_delegations_tenant_id ON task_delegations (tenant_id);
CREATE INDEX idx_delegations_from_agent ON task_delegations (from_agent_id);
CREATE INDEX idx_delegations_to_agent ON task_delegations (to_agent_id);
CREATE INDEX idx_delegations_delegated_at ON task_delegations (delegated_at DESC);

ALTER TABLE task_delegations ENABLE ROW LEVEL SECURITY;
ALTER TABLE task_delegations FORCE ROW LEVEL SECURITY;

CREATE POLICY delegations_tenant_isolation ON task_delegations
    FOR ALL
    USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id());

GRANT SELECT, INSERT, UPDATE, DELETE ON task_delegations TO tandem_app;

-- migrate:down
REVOKE SELECT, INSERT, UPDATE, DELETE ON task_delegations FROM tandem_app;
DROP POLICY delegations_tenant_isolation ON task_delegations;
ALTER TABLE task_delegations NO FORCE ROW LEVEL SECURITY;
ALTER TABLE task_delegations DISABLE ROW LEVEL SECURITY;
DROP TABLE task_delegations;
