-- migrate:up
-- The engine's choice of agent for a capability step (server/workspaces/execution_agents.py) in
-- one call, locking per agent: transactions that give step tasks to different agents do not
-- wait for each other. A transaction locks only the agent it gives the task to (a
-- transaction-scoped advisory lock on tenant and agent), and counts that
-- agent's open tasks in a statement run after it holds the lock, so it sees every task the
-- previous holder committed: two transactions never fill one free slot. Candidates are tried
-- least-loaded first, skipping those another transaction is giving a task to right now; when
-- every free one is being given one, the call waits for the least-loaded, but only if the
-- transaction holds no agent lock yet (a transaction waiting while holding one could close a
-- cycle with another; it leaves its step waiting for a free slot instead). Returns the agent
-- (none when no free agent was claimed) and how many free candidates there were.
CREATE FUNCTION claim_agent_slot(capability text, seen_within_s double precision, exclude text)
    RETURNS TABLE (agent_id text, candidates bigint)
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, public
AS $$
DECLARE
    tenant uuid := current_tenant_id();
    free text[];
    maxes integer[];
    holds boolean := coalesce(current_setting('tandem.holds_agent_slot', true), '') = 'yes';
    i integer;
    pass integer;
    open_tasks bigint;
BEGIN
    SELECT array_agg(a.agent_id ORDER BY a.load, a.agent_id), array_agg(a.max_concurrent_tasks ORDER BY a.load, a.agent_id)
      INTO free, maxes
      FROM (SELECT g.agent_id, g.max_concurrent_tasks,
                   (SELECT count(*) FROM public.tasks t
                     WHERE t.tenant_id = g.tenant_id AND t.assigned_to = g.agent_id
                       AND t.status IN ('assigned', 'accepted', 'in_progress') AND t.deleted_at IS NULL) AS load
              FROM public.agents g
             WHERE g.tenant_id = tenant
               AND g.capabilities @> ARRAY[capability]
               AND public.agent_listed_status(g.status::text, g.last_seen_at, seen_within_s, CURRENT_TIMESTAMP) = 'active'
               AND (exclude IS NULL OR g.agent_id <> exclude)) a
     WHERE a.load < a.max_concurrent_tasks;
    IF free IS NULL THEN
        RETURN;
    END IF;
    FOR pass IN 1..2 LOOP
        FOR i IN 1..array_length(free, 1) LOOP
            IF pass = 1 THEN
                CONTINUE WHEN NOT pg_try_advisory_xact_lock(hashtextextended('tandem.agent_slot:' || tenant::text || ':' || free[i], 0));
            ELSIF holds THEN
                RETURN;
            ELSE
                PERFORM pg_advisory_xact_lock(hashtextextended('tandem.agent_slot:' || tenant::text || ':' || free[i], 0));
            END IF;
            holds := true;
            PERFORM set_config('tandem.holds_agent_slot', 'yes', true);
            -- A statement of its own: its snapshot is taken under the lock.
            SELECT count(*) INTO open_tasks FROM public.tasks t
             WHERE t.tenant_id = tenant AND t.assigned_to = free[i]
               AND t.status IN ('assigned', 'accepted', 'in_progress') AND t.deleted_at IS NULL;
            IF open_tasks < maxes[i] THEN
                agent_id := free[i];
                candidates := array_length(free, 1);
                RETURN NEXT;
                RETURN;
            END IF;
        END LOOP;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION claim_agent_slot(text, double precision, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION claim_agent_slot(text, double precision, text) TO tandem_app;

-- migrate:down
REVOKE EXECUTE ON FUNCTION claim_agent_slot(text, double precision, text) FROM tandem_app;
DROP FUNCTION claim_agent_slot(text, double precision, text);
