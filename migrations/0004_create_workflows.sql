-- migrate:up
-- Workflow definitions for multi-agent orchestration.
CREATE TABLE workflows (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL,
    name varchar(255) NOT NULL CONSTRAINT name_not_empty CHECK (btrim(name, E' \t\r\n') <> ''),
    type workflow_type NOT NULL DEFAULT 'sequential',
    version integer DEFAULT 1 CONSTRAINT version_positive CHECK (version > 0),

    -- Workflow definition
    created_by varchar(255) NOT NULL,
    agents jsonb NOT NULL DEFAULT '{}' CONSTRAINT valid_agents_jsonb CHECK (jsonb_typeof(agents) = 'object'),
    steps jsonb NOT NULL DEFAULT '[]' CONSTRAINT valid_steps_jsonb CHECK (jsonb_typeof(steps) = 'array'),
    config jsonb DEFAULT '{}' NOT NULL CONSTRAINT valid_config_jsonb CHECK (jsonb_typeof(config) = 'object'),

    -- Metadata
    description text,
    tags text[] DEFAULT '{}',
    is_active boolean DEFAULT true,

    created_at timestamptz DEFAULT CURRENT_TIMESTAMP,
    updated_at timestamptz DEFAULT CURRENT_TIMESTAMP,
    deleted_at timestamptz,

    -- NOTES 8: target of workflow_executions' composite foreign key.
    CONSTRAINT workflows_id_tenant_id_key UNIQUE (id, tenant_id)
);

CREATE INDEX idx_workflows_tenant_id ON workflows (tenant_id);
CREATE INDEX idx_workflows_name ON workflows (name) WHERE deleted_at IS NULL;
CREATE INDEX idx_workflows_type ON workflows (type);
CREATE INDEX idx_workflows_tenant_active_type ON workflows (tenant_id, is_active, type)
    WHERE is_active = true AND deleted_at IS NULL;
CREATE INDEX idx_workflows_tags ON workflows USING gin (tags);

CREATE TRIGGER update_workflows_updated_at
    BEFORE UPDATE ON workflows
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

ALTER TABLE workflows ENABLE ROW LEVEL SECURITY;
ALTER TABLE workflows FORCE ROW LEVEL SECURITY;

CREATE POLICY workflows_tenant_isolation ON workflows
    FOR ALL
    USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id());

GRANT SELECT, INSERT, UPDATE, DELETE ON workflows TO tandem_app;

-- migrate:down
REVOKE SELECT, INSERT, UPDATE, DELETE ON workflows FROM tandem_app;
DROP POLICY workflows_tenant_isolation ON workflows;
ALTER TABLE workflows NO FORCE ROW LEVEL SECURITY;
ALTER TABLE workflows DISABLE ROW LEVEL SECURITY;
DROP TRIGGER update_workflows_updated_at ON workflows;
DROP TABLE workflows;
