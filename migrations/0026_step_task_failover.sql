-- migrate:up
-- Failover of workflow step tasks (docs/protocol.md section 12.9). Every node's sweep first asks
-- which tenants have open step tasks, then, in each tenant's transaction (RLS applies there),
-- fails over those held by an agent that is gone or out of service and hands out those waiting
-- for an agent (one may have come back without registering again). This function is the one
-- step across tenants: it runs as the owner and returns tenant ids only, in id order from just
-- after `after` (null: the first), so a sweep that stops at max_tenants goes on from there next
-- time. Whether an agent is gone is decided in the tenant's transaction, from the registry.
CREATE FUNCTION tenants_with_open_step_tasks(after uuid, max_tenants integer)
    RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
    SELECT DISTINCT t.tenant_id
      FROM public.tasks t
     WHERE t.execution_id IS NOT NULL AND t.deleted_at IS NULL
       AND ((t.assigned_to IS NOT NULL AND t.status IN ('assigned', 'accepted', 'in_progress'))
            OR (t.assigned_to IS NULL AND t.status = 'pending'))
       AND (after IS NULL OR t.tenant_id > after)
     ORDER BY t.tenant_id
     LIMIT max_tenants
$$;

REVOKE ALL ON FUNCTION tenants_with_open_step_tasks(uuid, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenants_with_open_step_tasks(uuid, integer) TO tandem_app;

-- RLS is forced, so it binds the owner running that function too: this lets it see open step
-- tasks (tenant ids are all it reads of them; it changes nothing, and the app role gains
-- nothing). Tasks in progress are visible to it already (migration 0017).
CREATE POLICY tasks_failover_sweep_select ON tasks
    FOR SELECT
    TO tandem_owner
    USING (execution_id IS NOT NULL AND status IN ('pending', 'assigned', 'accepted') AND deleted_at IS NULL);

-- Open tasks by assignee: an agent's load when the engine picks one (execution_pick_agent counts
-- them here instead of grouping the agent's whole task history through v_agent_workload), and
-- the sweep's step tasks by holder.
CREATE INDEX idx_tasks_open_assignee ON tasks (tenant_id, assigned_to)
    WHERE status IN ('assigned', 'accepted', 'in_progress') AND deleted_at IS NULL;

-- migrate:down
DROP INDEX idx_tasks_open_assignee;
DROP POLICY tasks_failover_sweep_select ON tasks;
REVOKE EXECUTE ON FUNCTION tenants_with_open_step_tasks(uuid, integer) FROM tandem_app;
DROP FUNCTION tenants_with_open_step_tasks(uuid, integer);
