-- migrate:up
-- Tasks: the seed's columns, checks and indexes. Not partitioned (NOTES 18): other tables hold
-- foreign keys to it, and a partitioned table's keys must include the partition column.
CREATE TABLE tasks (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL,
    type varchar(100) NOT NULL,
    status task_status NOT NULL DEFAULT 'pending',
    priority task_priority DEFAULT 'normal',

    -- Agent relationships
    created_by varchar(255) NOT NULL,
    assigned_to varchar(255),

    -- Task hierarchy: a sub-task lives in its parent's tenant (composite key below, NOTES 8)
    parent_task_id uuid,

    -- Task data
    title varchar(500) NOT NULL CONSTRAINT title_not_empty CHECK (btrim(title, E' \t\r\n') <> ''),
    description text,
    parameters jsonb DEFAULT '{}' NOT NULL,
    result jsonb,
    error text,

    -- Execution control
    max_retries integer DEFAULT 3 CONSTRAINT valid_max_retries CHECK (max_retries >= 0 AND max_retries <= 10),
    retry_count integer DEFAULT 0,
    timeout_seconds integer DEFAULT 3600 CONSTRAINT valid_timeout CHECK (timeout_seconds > 0),

    -- Timestamps
    created_at timestamptz DEFAULT CURRENT_TIMESTAMP,
    assigned_at timestamptz,
    started_at timestamptz,
    completed_at timestamptz,
    updated_at timestamptz DEFAULT CURRENT_TIMESTAMP,
    deleted_at timestamptz,

    -- NOTES 8: children reference (id, tenant_id), so no row can point at another tenant's task.
    CONSTRAINT tasks_id_tenant_id_key UNIQUE (id, tenant_id),
    CONSTRAINT tasks_parent_task_id_fkey FOREIGN KEY (parent_task_id, tenant_id)
        REFERENCES tasks (id, tenant_id) ON DELETE CASCADE,
    CONSTRAINT retry_count_valid CHECK (retry_count >= 0 AND retry_count <= max_retries),
    CONSTRAINT parameters_is_object CHECK (jsonb_typeof(parameters) = 'object'),
    CONSTRAINT result_is_object CHECK (result IS NULL OR jsonb_typeof(result) = 'object')
) WITH (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 10
);

CREATE INDEX idx_tasks_tenant_id ON tasks (tenant_id);
CREATE INDEX idx_tasks_assigned_to ON tasks (assigned_to) WHERE assigned_to IS NOT NULL AND deleted_at IS NULL;
CREATE INDEX idx_tasks_status ON tasks (status)
    WHERE status NOT IN ('completed', 'failed', 'cancelled') AND deleted_at IS NULL;
CREATE INDEX idx_tasks_tenant_status_priority ON tasks (tenant_id, status, priority)
    WHERE status IN ('pending', 'assigned') AND deleted_at IS NULL;
CREATE INDEX idx_tasks_parent_id ON tasks (parent_task_id) WHERE parent_task_id IS NOT NULL;
CREATE INDEX idx_tasks_created_at ON tasks (created_at DESC);
CREATE INDEX idx_tasks_list_covering ON tasks (tenant_id, assigned_to, status)
    INCLUDE (title, priority, created_at)
    WHERE deleted_at IS NULL;

CREATE TRIGGER update_tasks_updated_at
    BEFORE UPDATE ON tasks
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

-- NOTES 9: FORCE, so the owning role is bound by the policies too.
ALTER TABLE tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE tasks FORCE ROW LEVEL SECURITY;

CREATE POLICY tasks_tenant_isolation ON tasks
    FOR ALL
    USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id());

-- NOTES 1: RESTRICTIVE, so it narrows the tenant policy instead of OR-ing every tenant's rows in.
-- Only for the app role: an UPDATE with a WHERE clause must leave the row visible under the
-- SELECT policies, so the app cannot set deleted_at itself; soft_delete_task() below does it.
CREATE POLICY tasks_soft_delete ON tasks
    AS RESTRICTIVE
    FOR SELECT
    TO tandem_app
    USING (deleted_at IS NULL);

-- Soft-deletes one task of the current tenant; false when there is no such live task.
-- Runs as the owner, which the soft-delete policy does not filter; the tenant policy still does.
CREATE FUNCTION soft_delete_task(task_id uuid) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
BEGIN
    UPDATE public.tasks t
       SET deleted_at = CURRENT_TIMESTAMP
     WHERE t.id = soft_delete_task.task_id
       AND t.tenant_id = public.current_tenant_id()
       AND t.deleted_at IS NULL;
    RETURN FOUND;
END;
$$;

-- NOTES 11: the app's privileges, explicitly.
REVOKE ALL ON FUNCTION soft_delete_task(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION soft_delete_task(uuid) TO tandem_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON tasks TO tandem_app;

-- migrate:down
REVOKE SELECT, INSERT, UPDATE, DELETE ON tasks FROM tandem_app;
REVOKE EXECUTE ON FUNCTION soft_delete_task(uuid) FROM tandem_app;
DROP FUNCTION soft_delete_task(uuid);
DROP POLICY tasks_soft_delete ON tasks;
DROP POLICY tasks_tenant_isolation ON tasks;
ALTER TABLE tasks NO FORCE ROW LEVEL SECURITY;
ALTER TABLE tasks DISABLE ROW LEVEL SECURITY;
DROP TRIGGER update_tasks_updated_at ON tasks;
DROP TABLE tasks;
