-- migrate:up
-- Failover of workflow step tasks (docs/protocol.md section 12.9). Every node's sweep first asks
-- which tenants have a step task held by an agent that is gone or out of service, then fails
-- those tasks over in that tenant's transaction (RLS applies there). This function is the one
-- step across tenants: it runs as the owner and returns tenant ids only. "Gone": no node's
-- heartbeat stamped the agent's registry entry for grace_s; out of service: status `error` or
-- `maintenance`. Only steps given by capability count: a named agent has no stand-in.
CREATE FUNCTION tenants_with_orphaned_step_tasks(grace_s double precision, max_tenants integer)
    RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
    SELECT DISTINCT t.tenant_id
      FROM public.tasks t
      JOIN public.agents a ON a.tenant_id = t.tenant_id AND a.agent_id = t.assigned_to
     WHERE t.execution_id IS NOT NULL AND t.deleted_at IS NULL
       AND t.status IN ('assigned', 'accepted', 'in_progress')
       AND (a.status IN ('error', 'maintenance')
            OR a.last_seen_at IS NULL
            OR a.last_seen_at < CURRENT_TIMESTAMP - grace_s * interval '1 second')
     LIMIT max_tenants
$$;

REVOKE ALL ON FUNCTION tenants_with_orphaned_step_tasks(double precision, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenants_with_orphaned_step_tasks(double precision, integer) TO tandem_app;

-- RLS is forced, so it binds the owner running that function too: these let it see open step
-- tasks and the agent registry (it reads tenant ids out of them only; it changes nothing, and
-- the app role gains nothing). Tasks in progress are visible to it already (migration 0017).
CREATE POLICY tasks_failover_sweep_select ON tasks
    FOR SELECT
    TO tandem_owner
    USING (execution_id IS NOT NULL AND status IN ('assigned', 'accepted') AND deleted_at IS NULL);

CREATE POLICY agents_failover_sweep_select ON agents
    FOR SELECT
    TO tandem_owner
    USING (true);

-- Open tasks by assignee: an agent's load when the engine picks one (execution_pick_agent counts
-- them here instead of grouping the agent's whole task history through v_agent_workload).
CREATE INDEX idx_tasks_open_assignee ON tasks (tenant_id, assigned_to)
    WHERE status IN ('assigned', 'accepted', 'in_progress') AND deleted_at IS NULL;

-- migrate:down
DROP POLICY agents_failover_sweep_select ON agents;
DROP POLICY tasks_failover_sweep_select ON tasks;
DROP INDEX idx_tasks_open_assignee;
REVOKE EXECUTE ON FUNCTION tenants_with_orphaned_step_tasks(double precision, integer) FROM tandem_app;
DROP FUNCTION tenants_with_orphaned_step_tasks(double precision, integer);
