-- ============================================================================================
-- Tasks and delegations (server/workspaces/tasks.py, docs/protocol.md section 12.4)
-- Run as the application role inside tenant_transaction(): RLS hides other tenants' and
-- soft-deleted tasks, so "no row" is the one answer for all of them. jsonb travels as text
-- ($n::text::jsonb in, ::text out), so the results do not depend on the connection's codecs.
-- Every statement returning tasks selects the same columns, named as server/workspaces/tasks.py `Task`.
-- ============================================================================================

-- name: task_create
-- Insert a task into live workspace $1 (parent $8 must be a live task of it); no row when either is missing.
INSERT INTO tasks (tenant_id, workspace_id, title, type, description, priority, created_by, assigned_to,
                   assigned_at, status, parent_task_id, parameters, timeout_seconds, max_retries)
SELECT current_tenant_id(), $1, $2, $3, $4, $5::task_priority, $6, $7::text,
       CASE WHEN $7::text IS NULL THEN NULL ELSE CURRENT_TIMESTAMP END,
       CASE WHEN $7::text IS NULL THEN 'pending' ELSE 'assigned' END::task_status,
       $8, $9::text::jsonb, $10, $11
WHERE EXISTS (SELECT 1 FROM workspaces w WHERE w.id = $1 AND w.deleted_at IS NULL)
  AND ($8::uuid IS NULL OR EXISTS (SELECT 1 FROM tasks p WHERE p.id = $8 AND p.workspace_id = $1))
RETURNING {task};

-- name: task_get
-- Live task $1 of the current tenant.
SELECT {task}
FROM tasks WHERE id = $1;

-- name: task_lock
-- Live task $1 under a row lock held until commit: transitions of one task run one at a time.
SELECT {task}
FROM tasks WHERE id = $1
FOR UPDATE;

-- name: task_apply_transition
-- Task $1 after a transition: $2 status, $3 assignee, $4 retry_count, $5 result (null: keep), $6 error, then
-- assigned_at/started_at/completed_at each by $7/$8/$9: 'now' stamps, 'keep' keeps, 'clear' empties.
-- With $10 (null: none) the outcome is counted on that agent's registry entry in the same statement (one
-- round trip): completed when $11, else failed; a completion ends a failure run. An unregistered agent: no row.
-- With $12 (null: none) workflow execution $12 is locked too (as execution_lock does, after the task) and its
-- columns follow the task's, named as the execution projection's with an x_ prefix (null when not visible): the engine
-- advancing after a step task's outcome reads it without another round trip.
WITH moved AS (
    UPDATE tasks
    SET status = $2::task_status,
        assigned_to = $3,
        retry_count = $4,
        result = coalesce($5::text::jsonb, result),
        error = $6,
        assigned_at = CASE $7::text WHEN 'now' THEN CURRENT_TIMESTAMP WHEN 'keep' THEN assigned_at END,
        started_at = CASE $8::text WHEN 'now' THEN CURRENT_TIMESTAMP WHEN 'keep' THEN started_at END,
        completed_at = CASE $9::text WHEN 'now' THEN CURRENT_TIMESTAMP WHEN 'keep' THEN completed_at END
    WHERE id = $1
    RETURNING *
), counted AS (
    UPDATE agents
    SET tasks_completed = tasks_completed + CASE WHEN $11::boolean THEN 1 ELSE 0 END,
        tasks_failed = tasks_failed + CASE WHEN $11::boolean THEN 0 ELSE 1 END,
        consecutive_failures = CASE WHEN $11::boolean THEN 0 ELSE consecutive_failures + 1 END
    WHERE $10::text IS NOT NULL AND agent_id = $10::text AND EXISTS (SELECT 1 FROM moved)
), ex AS MATERIALIZED (
    SELECT {execution as x_}
    FROM workflow_executions
    WHERE $12::uuid IS NOT NULL AND id = $12::uuid AND EXISTS (SELECT 1 FROM moved)
    FOR UPDATE
)
SELECT {task}, ex.*
FROM moved LEFT JOIN ex ON true;

-- name: task_list
-- Tasks of workspace $1 filtered by assignee $2, creator $3, statuses $4, priorities $5, parent $6 (null: any); critical first, then oldest; at most $7.
SELECT {task}
FROM tasks
WHERE workspace_id = $1
  AND ($2::text IS NULL OR assigned_to = $2::text)
  AND ($3::text IS NULL OR created_by = $3::text)
  AND ($4::task_status[] IS NULL OR status = ANY($4::task_status[]))
  AND ($5::task_priority[] IS NULL OR coalesce(priority, 'normal') = ANY($5::task_priority[]))
  AND ($6::uuid IS NULL OR parent_task_id = $6)
ORDER BY coalesce(priority, 'normal') DESC, created_at, id
LIMIT $7;

-- name: task_exists
-- Whether live task $1 is visible to the current tenant.
SELECT EXISTS (SELECT 1 FROM tasks WHERE id = $1);

-- name: task_insert_delegation
-- Record that task $1 went from agent $2 to agent $3 ($4 delegation type, $5 reason). clock_timestamp(),
-- not the transaction's start, so several delegations in one transaction still sort in order.
INSERT INTO task_delegations (tenant_id, task_id, from_agent_id, to_agent_id, delegation_type, reason, delegated_at)
VALUES (current_tenant_id(), $1, $2, $3, $4::delegation_type, $5, clock_timestamp())
RETURNING id AS delegation_id, task_id, from_agent_id, to_agent_id,
          coalesce(delegation_type, 'manual')::text AS delegation_type, reason, delegated_at;

-- name: task_delegations
-- Delegation history of task $1, oldest first, at most $2.
SELECT id AS delegation_id, task_id, from_agent_id, to_agent_id,
       coalesce(delegation_type, 'manual')::text AS delegation_type, reason, delegated_at
FROM task_delegations
WHERE task_id = $1
ORDER BY delegated_at, id
LIMIT $2;

-- name: task_workload
-- Per-agent load of the current tenant (v_agent_workload), by agent id; at most $1.
SELECT agent_id, pending_tasks, active_tasks, completed_24h, avg_task_duration_seconds
FROM v_agent_workload
ORDER BY agent_id
LIMIT $1;

-- name: task_workspace_workload
-- Tenant-wide load of each member of workspace $1, idle members as zeros, by agent id; at most $2.
SELECT m.agent_id,
       coalesce(v.pending_tasks, 0) AS pending_tasks,
       coalesce(v.active_tasks, 0) AS active_tasks,
       coalesce(v.completed_24h, 0) AS completed_24h,
       v.avg_task_duration_seconds
FROM workspace_members m
LEFT JOIN v_agent_workload v ON v.agent_id = m.agent_id
WHERE m.workspace_id = $1
ORDER BY m.agent_id
LIMIT $2;

-- name: task_statistics
-- Task counts and durations of the current tenant by status and priority (v_task_statistics).
SELECT status::text AS status, priority::text AS priority, count,
       avg_duration_seconds, median_duration_seconds, p95_duration_seconds
FROM v_task_statistics
ORDER BY status, priority;

-- name: task_overdue_tenants
-- At most $1 tenants with a task in progress past its timeout: ids only, across tenants (SECURITY DEFINER).
SELECT t AS tenant_id FROM tenants_with_overdue_tasks($1) AS t;

-- name: task_sweep_timeouts
-- Mark at most $1 overdue tasks of the current tenant 'timeout'; none when no tenant is set.
SELECT task_id, workspace_id FROM sweep_task_timeouts($1);
