-- migrate:up
-- The execution engine (docs/protocol.md section 12.9). An execution runs in its workflow's
-- workspace and keeps, beside step_results, the state of each step (`step_states`: status,
-- attempt, task id, error), which the engine reads and writes under the execution's row lock,
-- so whichever node handles a task's outcome advances the execution exactly once.
ALTER TABLE workflow_executions ADD CONSTRAINT workflow_executions_id_tenant_id_key UNIQUE (id, tenant_id);
ALTER TABLE workflow_executions ADD COLUMN workspace_id uuid;
ALTER TABLE workflow_executions ADD CONSTRAINT workflow_executions_workspace_id_fkey
    FOREIGN KEY (workspace_id, tenant_id) REFERENCES workspaces (id, tenant_id) ON DELETE CASCADE;
ALTER TABLE workflow_executions ADD COLUMN step_states jsonb NOT NULL DEFAULT '{}'
    CONSTRAINT valid_step_states CHECK (jsonb_typeof(step_states) = 'object');
CREATE INDEX idx_executions_workspace_started ON workflow_executions (workspace_id, started_at DESC);

-- A step's task: one per (execution, step, attempt); a retry is a new attempt, never a second
-- task for the same attempt. The composite key keeps it in its execution's tenant.
ALTER TABLE tasks ADD COLUMN execution_id uuid;
ALTER TABLE tasks ADD COLUMN step_id varchar(64);
ALTER TABLE tasks ADD COLUMN attempt integer;
ALTER TABLE tasks ADD CONSTRAINT tasks_execution_id_fkey FOREIGN KEY (execution_id, tenant_id)
    REFERENCES workflow_executions (id, tenant_id) ON DELETE CASCADE;
ALTER TABLE tasks ADD CONSTRAINT tasks_execution_step_attempt_key UNIQUE (execution_id, step_id, attempt);
ALTER TABLE tasks ADD CONSTRAINT tasks_execution_step_complete CHECK (
    (execution_id IS NULL AND step_id IS NULL AND attempt IS NULL)
    OR (execution_id IS NOT NULL AND step_id IS NOT NULL AND attempt >= 1));
-- Tasks waiting for a free agent, oldest first (assigned when a slot frees).
CREATE INDEX idx_tasks_execution_waiting ON tasks (tenant_id, created_at)
    WHERE execution_id IS NOT NULL AND status = 'pending' AND assigned_to IS NULL AND deleted_at IS NULL;

CREATE TRIGGER audit_workflow_executions AFTER INSERT OR UPDATE OR DELETE ON workflow_executions
    FOR EACH ROW EXECUTE FUNCTION audit_trigger_function('id');

-- migrate:down
DROP TRIGGER audit_workflow_executions ON workflow_executions;
DROP INDEX idx_tasks_execution_waiting;
ALTER TABLE tasks DROP CONSTRAINT tasks_execution_step_complete;
ALTER TABLE tasks DROP CONSTRAINT tasks_execution_step_attempt_key;
ALTER TABLE tasks DROP CONSTRAINT tasks_execution_id_fkey;
ALTER TABLE tasks DROP COLUMN attempt;
ALTER TABLE tasks DROP COLUMN step_id;
ALTER TABLE tasks DROP COLUMN execution_id;
DROP INDEX idx_executions_workspace_started;
ALTER TABLE workflow_executions DROP COLUMN step_states;
ALTER TABLE workflow_executions DROP CONSTRAINT workflow_executions_workspace_id_fkey;
ALTER TABLE workflow_executions DROP COLUMN workspace_id;
ALTER TABLE workflow_executions DROP CONSTRAINT workflow_executions_id_tenant_id_key;
