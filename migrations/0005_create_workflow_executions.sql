-- migrate:up
-- Individual workflow runs and their state.
CREATE TABLE workflow_executions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workflow_id uuid NOT NULL,
    tenant_id uuid NOT NULL,

    -- Execution state
    status workflow_status NOT NULL DEFAULT 'pending',
    current_step_index integer DEFAULT 0,
    current_step_id varchar(255),

    -- Execution data
    triggered_by varchar(255) NOT NULL,
    input jsonb DEFAULT '{}' NOT NULL,
    context jsonb DEFAULT '{}' NOT NULL,
    step_results jsonb DEFAULT '{}' NOT NULL,
    output jsonb,
    error text,

    -- Timing
    started_at timestamptz DEFAULT CURRENT_TIMESTAMP,
    completed_at timestamptz,

    -- Execution metadata
    execution_metadata jsonb DEFAULT '{}' NOT NULL,

    -- NOTES 8: an execution runs a workflow of its own tenant.
    CONSTRAINT workflow_executions_workflow_id_fkey FOREIGN KEY (workflow_id, tenant_id)
        REFERENCES workflows (id, tenant_id),
    CONSTRAINT valid_input CHECK (jsonb_typeof(input) = 'object'),
    CONSTRAINT valid_context CHECK (jsonb_typeof(context) = 'object'),
    CONSTRAINT valid_step_results CHECK (jsonb_typeof(step_results) = 'object')
) WITH (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.05
);

CREATE INDEX idx_executions_workflow_id ON workflow_executions (workflow_id);
CREATE INDEX idx_executions_tenant_id ON workflow_executions (tenant_id);
CREATE INDEX idx_executions_status ON workflow_executions (status)
    WHERE status NOT IN ('completed', 'failed', 'cancelled');
CREATE INDEX idx_executions_triggered_by ON workflow_executions (triggered_by);
CREATE INDEX idx_executions_started_at ON workflow_executions (started_at DESC);

ALTER TABLE workflow_executions ENABLE ROW LEVEL SECURITY;
ALTER TABLE workflow_executions FORCE ROW LEVEL SECURITY;

CREATE POLICY executions_tenant_isolation ON workflow_executions
    FOR ALL
    USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id());

GRANT SELECT, INSERT, UPDATE, DELETE ON workflow_executions TO tandem_app;

-- migrate:down
REVOKE SELECT, INSERT, UPDATE, DELETE ON workflow_executions FROM tandem_app;
DROP POLICY executions_tenant_isolation ON workflow_executions;
ALTER TABLE workflow_executions NO FORCE ROW LEVEL SECURITY;
ALTER TABLE workflow_executions DISABLE ROW LEVEL SECURITY;
DROP TABLE workflow_executions;
