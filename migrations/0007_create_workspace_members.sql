-- migrate:up
-- Workspace membership and permissions.
CREATE TABLE workspace_members (
    workspace_id uuid NOT NULL,
    agent_id varchar(255) NOT NULL,
    tenant_id uuid NOT NULL,

    -- Membership details
    role member_role DEFAULT 'member',
    permissions jsonb DEFAULT '["read", "write"]' NOT NULL,

    -- Activity tracking
    joined_at timestamptz DEFAULT CURRENT_TIMESTAMP,
    last_seen_at timestamptz DEFAULT CURRENT_TIMESTAMP,

    -- Member-specific state
    member_state jsonb DEFAULT '{}' NOT NULL,

    PRIMARY KEY (workspace_id, agent_id),

    -- NOTES 8: a member row belongs to a workspace of its own tenant.
    CONSTRAINT workspace_members_workspace_id_fkey FOREIGN KEY (workspace_id, tenant_id)
        REFERENCES workspaces (id, tenant_id) ON DELETE CASCADE,
    CONSTRAINT valid_permissions CHECK (jsonb_typeof(permissions) = 'array'),
    CONSTRAINT valid_member_state CHECK (jsonb_typeof(member_state) = 'object')
);

CREATE INDEX idx_workspace_members_agent_id ON workspace_members (agent_id);
CREATE INDEX idx_workspace_members_tenant_id ON workspace_members (tenant_id);
CREATE INDEX idx_workspace_members_role ON workspace_members (role);
CREATE INDEX idx_workspace_members_last_seen ON workspace_members (last_seen_at DESC);

ALTER TABLE workspace_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE workspace_members FORCE ROW LEVEL SECURITY;

CREATE POLICY members_tenant_isolation ON workspace_members
    FOR ALL
    USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id());

GRANT SELECT, INSERT, UPDATE, DELETE ON workspace_members TO tandem_app;

-- migrate:down
REVOKE SELECT, INSERT, UPDATE, DELETE ON workspace_members FROM tandem_app;
DROP POLICY members_tenant_isolation ON workspace_members;
ALTER TABLE workspace_members NO FORCE ROW LEVEL SECURITY;
ALTER TABLE workspace_members DISABLE ROW LEVEL SECURITY;
DROP TABLE workspace_members;
