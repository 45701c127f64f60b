-- migrate:up
-- The task timeout sweep acts on the calling tenant only: `sweep_task_timeouts` runs as its
-- caller, so the tasks' tenant policy scopes it like every other statement of the app role, and
-- it names `current_tenant_id()` itself so that no tenant set means no row. A node sweeps every
-- tenant by first asking which tenants have overdue tasks (`tenants_with_overdue_tasks`, the only
-- cross-tenant step, and it returns tenant ids only), then sweeping each in that tenant's
-- transaction.
CREATE OR REPLACE FUNCTION sweep_task_timeouts(max_rows integer)
    RETURNS TABLE (task_id uuid, tenant_id uuid, workspace_id uuid)
    LANGUAGE sql
    SET search_path = pg_catalog, public
AS $$
    WITH due AS MATERIALIZED (
        SELECT d.id FROM public.tasks d
         WHERE d.tenant_id = public.current_tenant_id()
           AND d.status = 'in_progress' AND d.deleted_at IS NULL
           AND d.started_at + d.timeout_seconds * interval '1 second' < CURRENT_TIMESTAMP
         ORDER BY d.started_at
         LIMIT max_rows
         FOR UPDATE SKIP LOCKED)
    UPDATE public.tasks t
       SET status = 'timeout',
           completed_at = CURRENT_TIMESTAMP,
           error = 'timed out after ' || t.timeout_seconds || ' s'
      FROM due
     WHERE t.id = due.id AND t.status = 'in_progress'
    RETURNING t.id, t.tenant_id, t.workspace_id
$$;

-- The owner no longer updates tasks for the sweep; it only reads which tenants have overdue
-- ones, through tasks_timeout_sweep_select (migration 0017).
DROP POLICY tasks_timeout_sweep_update ON tasks;

-- At most max_tenants tenants that have a task in progress past its timeout. Runs as the owner
-- (the one step that crosses tenants) and returns ids only: no task is read or changed.
CREATE FUNCTION tenants_with_overdue_tasks(max_tenants integer)
    RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
    SELECT DISTINCT d.tenant_id FROM public.tasks d
     WHERE d.status = 'in_progress' AND d.deleted_at IS NULL
       AND d.started_at + d.timeout_seconds * interval '1 second' < CURRENT_TIMESTAMP
     LIMIT max_tenants
$$;

REVOKE ALL ON FUNCTION tenants_with_overdue_tasks(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenants_with_overdue_tasks(integer) TO tandem_app;

-- migrate:down
REVOKE EXECUTE ON FUNCTION tenants_with_overdue_tasks(integer) FROM tandem_app;
DROP FUNCTION tenants_with_overdue_tasks(integer);

CREATE POLICY tasks_timeout_sweep_update ON tasks
    FOR UPDATE
    TO tandem_owner
    USING (status = 'in_progress' AND deleted_at IS NULL)
    WITH CHECK (status = 'timeout');

CREATE OR REPLACE FUNCTION sweep_task_timeouts(max_rows integer)
    RETURNS TABLE (task_id uuid, tenant_id uuid, workspace_id uuid)
    LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
    WITH due AS MATERIALIZED (
        SELECT d.id FROM public.tasks d
         WHERE d.status = 'in_progress' AND d.deleted_at IS NULL
           AND d.started_at + d.timeout_seconds * interval '1 second' < CURRENT_TIMESTAMP
         ORDER BY d.started_at
         LIMIT max_rows
         FOR UPDATE SKIP LOCKED)
    UPDATE public.tasks t
       SET status = 'timeout',
           completed_at = CURRENT_TIMESTAMP,
           error = 'timed out after ' || t.timeout_seconds || ' s'
      FROM due
     WHERE t.id = due.id AND t.status = 'in_progress'
    RETURNING t.id, t.tenant_id, t.workspace_id
$$;
