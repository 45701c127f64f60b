-- ============================================================================================
-- Workflow executions (server/workspaces/executions.py, docs/protocol.md section 12.9)
-- Run as the application role inside tenant_transaction(). The engine reads and writes an
-- execution only under its row lock (execution_lock), so two nodes never advance one at once.
-- jsonb travels as text ($n::text::jsonb in, ::text out).
-- ============================================================================================

-- name: execution_insert
-- A running execution of version $2 of workflow $1 in workspace $3, started by $4 with input $5 and context $6.
INSERT INTO workflow_executions (tenant_id, workflow_id, workflow_version, workspace_id, status, triggered_by,
                                 input, context)
VALUES (current_tenant_id(), $1, $2, $3, 'running', $4, $5::text::jsonb, $6::text::jsonb)
RETURNING {execution};

-- name: execution_get
-- Execution $1 of workspace $2 (null: any, for `tandem`).
SELECT {execution}
FROM workflow_executions WHERE id = $1 AND ($2::uuid IS NULL OR workspace_id = $2);

-- name: execution_lock
-- Execution $1 of workspace $2 (null: any) under a row lock held until commit.
SELECT {execution}
FROM workflow_executions WHERE id = $1 AND ($2::uuid IS NULL OR workspace_id = $2)
FOR UPDATE;

-- name: execution_save
-- Execution $1 after the engine decided: $2 status, $3 step_states, $4 step_results, $5 output, $6 error;
-- completed_at is stamped when the status is terminal. tasks_waiting: whether any step task of the tenant
-- waits for an agent now (this transaction's new ones included), so the engine asks for them only then.
UPDATE workflow_executions
SET status = $2::workflow_status,
    step_states = $3::text::jsonb,
    step_results = $4::text::jsonb,
    output = $5::text::jsonb,
    error = $6,
    completed_at = CASE WHEN $2 IN ('completed', 'failed', 'cancelled') THEN CURRENT_TIMESTAMP END
WHERE id = $1
RETURNING {execution},
          EXISTS (SELECT 1 FROM tasks w
                   WHERE w.execution_id IS NOT NULL AND w.status = 'pending' AND w.assigned_to IS NULL
                     AND w.deleted_at IS NULL) AS tasks_waiting;

-- name: execution_list
-- Executions of workspace $1, of workflow $2 and with status in $3 (null: any), newest first; at most $4.
SELECT {execution}
FROM workflow_executions
WHERE workspace_id = $1
  AND ($2::uuid IS NULL OR workflow_id = $2)
  AND ($3::text[] IS NULL OR status::text = ANY($3::text[]))
ORDER BY started_at DESC, id
LIMIT $4;

-- name: execution_definition
-- The steps and config of version $2 of workflow $1.
SELECT type::text AS type, steps::text AS steps, config::text AS config
FROM workflow_versions WHERE workflow_id = $1 AND version = $2;

-- name: execution_task_create
-- The task of attempt $12 of step $11 of execution $10 in workspace $1: $2 title, $3 type, $4 description,
-- $5 priority, $6 creator, $7 assignee (null: the agent claimed for capability $14, else pending until an
-- agent is free), $8 parameters, $9 timeout. $13: the agent of a collaborative step it is made for (null:
-- any other step). max_retries is 0: the step's retries are new attempts, made by the engine.
-- With $14 (a capability; null: none) the least-loaded free agent with it is claimed in the same statement
-- as execution_claim_agent does (presence TTL $15), and the task's delegation from $17 to it recorded for
-- reason $16 (`automatic`, or `load_balance` when there were several candidates): one round trip for the
-- claim, the task and its delegation. The delegation's columns follow the task's (null without).
WITH c AS (
    SELECT agent_id, CASE WHEN candidates > 1 THEN 'load_balance' ELSE 'automatic' END AS kind
    FROM claim_agent_slot($14::text, $15::double precision, NULL)
    WHERE $14::text IS NOT NULL
), a AS (
    SELECT coalesce($7::text, (SELECT agent_id FROM c)) AS assignee
), t AS (
    INSERT INTO tasks (tenant_id, workspace_id, title, type, description, priority, created_by, assigned_to,
                       assigned_at, status, parameters, timeout_seconds, max_retries, execution_id, step_id, attempt,
                       collaborator)
    SELECT current_tenant_id(), $1, $2, $3, $4, $5::task_priority, $6, a.assignee,
           CASE WHEN a.assignee IS NULL THEN NULL ELSE CURRENT_TIMESTAMP END,
           CASE WHEN a.assignee IS NULL THEN 'pending' ELSE 'assigned' END::task_status,
           $8::text::jsonb, $9, 0, $10, $11, $12, $13
    FROM a
    RETURNING *
), d AS (
    INSERT INTO task_delegations (tenant_id, task_id, from_agent_id, to_agent_id, delegation_type, reason,
                                  delegated_at)
    SELECT current_tenant_id(), t.id, $17::text, t.assigned_to, c.kind::delegation_type, $16::text,
           clock_timestamp()
    FROM t, c
    RETURNING id AS delegation_id, from_agent_id, to_agent_id,
              coalesce(delegation_type, 'manual')::text AS delegation_type, reason, delegated_at
)
SELECT {task}, d.delegation_id, d.from_agent_id, d.to_agent_id, d.delegation_type, d.reason, d.delegated_at
FROM t LEFT JOIN d ON true;

-- name: execution_claim_agent
-- The least-loaded agent with capability $1 that is listed active (presence TTL $2), has a free slot and is
-- not $3 (null: any), locked for this transaction so no other fills the slot, and how many free ones there
-- were (claim_agent_slot, migration 0031). No row: none could be claimed.
SELECT agent_id, candidates FROM claim_agent_slot($1, $2, $3);

-- name: execution_waiting_tasks
-- At most $1 step tasks of the current tenant waiting for an agent, oldest first, locked (others skip them).
SELECT {task}
FROM tasks
WHERE execution_id IS NOT NULL AND status = 'pending' AND assigned_to IS NULL
ORDER BY created_at, id
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: execution_assign_task
-- Give waiting task $1 to agent $2.
UPDATE tasks SET status = 'assigned', assigned_to = $2, assigned_at = CURRENT_TIMESTAMP
WHERE id = $1
RETURNING {task};

-- name: execution_cancel_tasks
-- Cancel every open task of execution $1.
UPDATE tasks SET status = 'cancelled', completed_at = CURRENT_TIMESTAMP
WHERE execution_id = $1 AND status NOT IN ('completed', 'failed', 'cancelled')
RETURNING {task};

-- name: execution_cancel_step_tasks
-- Cancel the open tasks of attempt $3 of step $2 of execution $1 (one of a collaborative step's failed).
UPDATE tasks SET status = 'cancelled', completed_at = CURRENT_TIMESTAMP
WHERE execution_id = $1 AND step_id = $2 AND attempt = $3 AND status NOT IN ('completed', 'failed', 'cancelled')
RETURNING {task};

-- name: execution_tasks
-- Tasks of execution $1, oldest first; at most $2.
SELECT {task}
FROM tasks WHERE execution_id = $1
ORDER BY created_at, id
LIMIT $2;

-- name: execution_open_step_tenants
-- At most $2 tenants with an open step task held by an agent or waiting for one, in id order after $1
-- (null: from the first): ids only, across tenants (SECURITY DEFINER, migration 0026).
SELECT t AS tenant_id FROM tenants_with_open_step_tasks($1, $2) AS t;

-- name: execution_orphaned_tasks
-- At most $2 open step tasks of the current tenant held by an agent not stamped for $1 s or in error or
-- maintenance, of steps given by capability (a step naming its agent has no stand-in), oldest assignment
-- first, locked (another node's sweep skips them); with the holder's registered status and the capability.
SELECT {task},
       (SELECT a.status::text FROM agents a
         WHERE a.tenant_id = tasks.tenant_id AND a.agent_id = tasks.assigned_to) AS holder_status,
       (SELECT s->>'capability'
          FROM workflow_executions e
          JOIN workflow_versions v ON v.workflow_id = e.workflow_id AND v.version = e.workflow_version,
               jsonb_array_elements(v.steps) AS s
         WHERE e.id = tasks.execution_id AND s->>'id' = tasks.step_id) AS capability
FROM tasks
WHERE execution_id IS NOT NULL AND deleted_at IS NULL
  AND status IN ('assigned', 'accepted', 'in_progress')
  AND EXISTS (SELECT 1 FROM agents a
               WHERE a.tenant_id = tasks.tenant_id AND a.agent_id = tasks.assigned_to
                 AND (a.status IN ('error', 'maintenance')
                      OR a.last_seen_at IS NULL
                      OR a.last_seen_at < CURRENT_TIMESTAMP - $1::double precision * interval '1 second'))
  AND EXISTS (SELECT 1
                FROM workflow_executions e
                JOIN workflow_versions v ON v.workflow_id = e.workflow_id AND v.version = e.workflow_version,
                     jsonb_array_elements(v.steps) AS s
               WHERE e.id = tasks.execution_id AND s->>'id' = tasks.step_id AND s ? 'capability')
ORDER BY assigned_at, id
LIMIT $2
FOR UPDATE SKIP LOCKED;
