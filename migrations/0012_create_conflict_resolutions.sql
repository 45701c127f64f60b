-- migrate:up
-- Conflicts met and how they were resolved, for analysis.
CREATE TABLE conflict_resolutions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL,
    resource_type varchar(50) NOT NULL,
    resource_id uuid NOT NULL,
    conflict_type varchar(50) NOT NULL,
    description text,
    resolution_strategy varchar(50),
    details jsonb DEFAULT '{}' NOT NULL,
    resolved_by varchar(255),
    resolved_at timestamptz,
    created_at timestamptz DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT valid_details CHECK (jsonb_typeof(details) = 'object')
);

CREATE INDEX idx_conflicts_tenant_id ON conflict_resolutions (tenant_id);
CREATE INDEX idx_conflicts_resource ON conflict_resolutions (resource_type, resource_id);
CREATE INDEX idx_conflicts_created_at ON conflict_resolutions (created_at DESC);

ALTER TABLE conflict_resolutions ENABLE ROW LEVEL SECURITY;
ALTER TABLE conflict_resolutions FORCE ROW LEVEL SECURITY;

CREATE POLICY conflicts_tenant_isolation ON conflict_resolutions
    FOR ALL
    USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id());

-- Recorded, then marked resolved; never deleted by the app.
GRANT SELECT, INSERT, UPDATE ON conflict_resolutions TO tandem_app;

-- migrate:down
REVOKE SELECT, INSERT, UPDATE ON conflict_resolutions FROM tandem_app;
DROP POLICY conflicts_tenant_isolation ON conflict_resolutions;
ALTER TABLE conflict_resolutions NO FORCE ROW LEVEL SECURITY;
ALTER TABLE conflict_resolutions DISABLE ROW LEVEL SECURITY;
DROP TABLE conflict_resolutions;
