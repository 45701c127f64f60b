-- migrate:up
-- Shared collaboration spaces.
CREATE TABLE workspaces (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL,
    name varchar(255) NOT NULL CONSTRAINT workspace_name_not_empty CHECK (btrim(name, E' \t\r\n') <> ''),
    type varchar(50) DEFAULT 'general',

    -- Ownership and access
    owner_id varchar(255) NOT NULL,
    visibility workspace_visibility DEFAULT 'private',

    -- Workspace state with optimistic locking
    state jsonb DEFAULT '{}' NOT NULL,
    state_version integer DEFAULT 1,
    last_activity_at timestamptz DEFAULT CURRENT_TIMESTAMP,

    -- Configuration
    config jsonb DEFAULT '{}' NOT NULL,
    max_members integer DEFAULT 100 CONSTRAINT valid_max_members CHECK (max_members > 0 AND max_members <= 1000),

    created_at timestamptz DEFAULT CURRENT_TIMESTAMP,
    updated_at timestamptz DEFAULT CURRENT_TIMESTAMP,
    deleted_at timestamptz,

    -- NOTES 8: target of the members' and documents' composite foreign keys.
    CONSTRAINT workspaces_id_tenant_id_key UNIQUE (id, tenant_id),
    CONSTRAINT valid_state CHECK (jsonb_typeof(state) = 'object'),
    CONSTRAINT valid_config CHECK (jsonb_typeof(config) = 'object')
);

CREATE INDEX idx_workspaces_tenant_id ON workspaces (tenant_id);
CREATE INDEX idx_workspaces_owner_id ON workspaces (owner_id);
CREATE INDEX idx_workspaces_type ON workspaces (type) WHERE deleted_at IS NULL;
CREATE INDEX idx_workspaces_last_activity ON workspaces (last_activity_at DESC) WHERE deleted_at IS NULL;

CREATE TRIGGER update_workspaces_updated_at
    BEFORE UPDATE ON workspaces
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

ALTER TABLE workspaces ENABLE ROW LEVEL SECURITY;
ALTER TABLE workspaces FORCE ROW LEVEL SECURITY;

CREATE POLICY workspaces_tenant_isolation ON workspaces
    FOR ALL
    USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id());

GRANT SELECT, INSERT, UPDATE, DELETE ON workspaces TO tandem_app;

-- migrate:down
REVOKE SELECT, INSERT, UPDATE, DELETE ON workspaces FROM tandem_app;
DROP POLICY workspaces_tenant_isolation ON workspaces;
ALTER TABLE workspaces NO FORCE ROW LEVEL SECURITY;
ALTER TABLE workspaces DISABLE ROW LEVEL SECURITY;
DROP TRIGGER update_workspaces_updated_at ON workspaces;
DROP TABLE workspaces;
