-- migrate:up
-- Fewer indexes on tasks. A status change is never a HOT update (status is in index keys and
-- predicates), so every transition writes an entry into every index whose predicate holds: 9 to
-- 12 entries per row version with the 15 indexes before, 5 to 7 with the 9 kept.
-- Dropped here, as no statement's plan uses them (docs/schema.md, "Indexes of tasks"):
-- created_at, created_by, assigned_to, status and tenant_id alone, and (tenant, status,
-- priority) of pending and assigned tasks; every application statement is tenant-scoped by RLS,
-- and the composite indexes below lead with the tenant or the workspace. The covering
-- (tenant, assignee, status) index becomes (tenant, assignee): no statement reads tasks from the
-- index alone (it carried each title into every entry), and with the status out of its key a
-- transition leaves its key unchanged, so PostgreSQL removes the entries of the task's older
-- versions from it as it goes (bottom-up deletion) instead of leaving them all to vacuum; an
-- agent's open tasks are still counted through idx_tasks_open_assignee.
DROP INDEX idx_tasks_created_at;
DROP INDEX idx_tasks_created_by;
DROP INDEX idx_tasks_assigned_to;
DROP INDEX idx_tasks_status;
DROP INDEX idx_tasks_tenant_id;
DROP INDEX idx_tasks_tenant_status_priority;
DROP INDEX idx_tasks_list_covering;
CREATE INDEX idx_tasks_assignee ON tasks (tenant_id, assigned_to) WHERE deleted_at IS NULL;

-- claim_agent_slot counts each candidate's open tasks once (a LATERAL join: the subquery was
-- run once for the filter and once for each ordering) and at most up to its limit (a full
-- agent is full however far over it is), through idx_tasks_open_assignee by a plain index scan:
-- it marks the entries of finished tasks' older versions dead as it passes them, so later
-- counts skip them. The planner, going by statistics taken while the table was small, chose a
-- bitmap scan (which cannot mark them: it read every such row again until vacuum, 400 to 2,000
-- blocks a call) or a sequential scan; seq and bitmap scans are off inside this function only.
CREATE OR REPLACE FUNCTION claim_agent_slot(capability text, seen_within_s double precision, exclude text)
    RETURNS TABLE (agent_id text, candidates bigint)
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, public
    SET enable_seqscan = off
    SET enable_bitmapscan = off
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
      FROM (SELECT g.agent_id, g.max_concurrent_tasks, l.load
              FROM public.agents g
              CROSS JOIN LATERAL (
                  SELECT count(*) AS load
                    FROM (SELECT 1 FROM public.tasks t
                           WHERE t.tenant_id = g.tenant_id AND t.assigned_to = g.agent_id
                             AND t.status IN ('assigned', 'accepted', 'in_progress') AND t.deleted_at IS NULL
                           LIMIT g.max_concurrent_tasks) o) l
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
            SELECT count(*) INTO open_tasks
              FROM (SELECT 1 FROM public.tasks t
                     WHERE t.tenant_id = tenant AND t.assigned_to = free[i]
                       AND t.status IN ('assigned', 'accepted', 'in_progress') AND t.deleted_at IS NULL
                     LIMIT maxes[i]) o;
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

-- migrate:down
CREATE OR REPLACE FUNCTION claim_agent_slot(capability text, seen_within_s double precision, exclude text)
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
DROP INDEX idx_tasks_assignee;
CREATE INDEX idx_tasks_list_covering ON tasks (tenant_id, assigned_to, status)
    INCLUDE (title, priority, created_at)
    WHERE deleted_at IS NULL;
CREATE INDEX idx_tasks_tenant_status_priority ON tasks (tenant_id, status, priority)
    WHERE status IN ('pending', 'assigned') AND deleted_at IS NULL;
CREATE INDEX idx_tasks_tenant_id ON tasks (tenant_id);
CREATE INDEX idx_tasks_status ON tasks (status)
    WHERE status NOT IN ('completed', 'failed', 'cancelled') AND deleted_at IS NULL;
CREATE INDEX idx_tasks_assigned_to ON tasks (assigned_to) WHERE assigned_to IS NOT NULL AND deleted_at IS NULL;
CREATE INDEX idx_tasks_created_by ON tasks (created_by) WHERE deleted_at IS NULL;
CREATE INDEX idx_tasks_created_at ON tasks (created_at DESC);
