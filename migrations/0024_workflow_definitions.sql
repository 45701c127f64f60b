-- migrate:up
-- Versioned workflow definitions (docs/protocol.md section 12.8). A workflow is one `workflows`
-- row per name and workspace: a stable id, its latest version's definition and the active flag.
-- Every version is a `workflow_versions` row the application may insert but never change or
-- delete, so an execution that names (workflow_id, version) always finds what it ran.

-- Workflows belong to a workspace, whose roles decide who defines them (nullable: the seed's
-- row has none and is reachable by no workspace).
ALTER TABLE workflows ADD COLUMN workspace_id uuid;
ALTER TABLE workflows ADD CONSTRAINT workflows_workspace_id_fkey FOREIGN KEY (workspace_id, tenant_id)
    REFERENCES workspaces (id, tenant_id) ON DELETE CASCADE;
-- One live workflow per name in a workspace: defining that name again makes a new version.
CREATE UNIQUE INDEX idx_workflows_workspace_name ON workflows (tenant_id, workspace_id, name)
    WHERE deleted_at IS NULL;

CREATE TABLE workflow_versions (
    workflow_id uuid NOT NULL,
    tenant_id uuid NOT NULL,
    version integer NOT NULL CONSTRAINT workflow_version_positive CHECK (version > 0),
    type workflow_type NOT NULL,
    steps jsonb NOT NULL CONSTRAINT valid_version_steps CHECK (jsonb_typeof(steps) = 'array'),
    config jsonb NOT NULL DEFAULT '{}' CONSTRAINT valid_version_config CHECK (jsonb_typeof(config) = 'object'),
    description text,
    created_by varchar(255) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,

    PRIMARY KEY (workflow_id, version),
    -- NOTES 8: a version belongs to a workflow of its own tenant.
    CONSTRAINT workflow_versions_workflow_id_fkey FOREIGN KEY (workflow_id, tenant_id)
        REFERENCES workflows (id, tenant_id) ON DELETE CASCADE,
    -- Target of workflow_executions' foreign key (workflow, tenant, version).
    CONSTRAINT workflow_versions_workflow_tenant_version_key UNIQUE (workflow_id, tenant_id, version)
);

CREATE INDEX idx_workflow_versions_tenant_id ON workflow_versions (tenant_id);

ALTER TABLE workflow_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE workflow_versions FORCE ROW LEVEL SECURITY;

CREATE POLICY workflow_versions_tenant_isolation ON workflow_versions
    FOR ALL
    USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id());

-- Versions are immutable: the application role reads and adds them, nothing more.
GRANT SELECT, INSERT ON workflow_versions TO tandem_app;

CREATE TRIGGER audit_workflow_versions AFTER INSERT OR UPDATE OR DELETE ON workflow_versions
    FOR EACH ROW EXECUTE FUNCTION audit_trigger_function('workflow_id');

COMMENT ON TABLE workflow_versions IS 'Immutable versions of workflow definitions';

-- An execution runs one version (nullable until executions are started by the engine).
ALTER TABLE workflow_executions ADD COLUMN workflow_version integer;
ALTER TABLE workflow_executions ADD CONSTRAINT workflow_executions_workflow_version_fkey
    FOREIGN KEY (workflow_id, tenant_id, workflow_version)
    REFERENCES workflow_versions (workflow_id, tenant_id, version);

-- migrate:down
ALTER TABLE workflow_executions DROP CONSTRAINT workflow_executions_workflow_version_fkey;
ALTER TABLE workflow_executions DROP COLUMN workflow_version;

COMMENT ON TABLE workflow_versions IS NULL;
DROP TRIGGER audit_workflow_versions ON workflow_versions;
REVOKE SELECT, INSERT ON workflow_versions FROM tandem_app;
DROP POLICY workflow_versions_tenant_isolation ON workflow_versions;
ALTER TABLE workflow_versions NO FORCE ROW LEVEL SECURITY;
ALTER TABLE workflow_versions DISABLE ROW LEVEL SECURITY;
DROP TABLE workflow_versions;

DROP INDEX idx_workflows_workspace_name;
ALTER TABLE workflows DROP CONSTRAINT workflows_workspace_id_fkey;
ALTER TABLE workflows DROP COLUMN workspace_id;
