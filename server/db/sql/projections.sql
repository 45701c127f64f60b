-- ============================================================================================
-- Projections: the columns every statement returning one kind of row selects, written once and
-- named as the Python record that reads them. A statement names one as {member}, {task},
-- {workspace} or {document} (server/db/store.py expands it when it loads the statements); each
-- reads the row's own table unqualified, so the statement's FROM (or RETURNING) holds that
-- table alone, other tables only in subqueries.
-- ============================================================================================

-- projection: member
-- A workspace membership (server/workspaces/directory.py `Member`); permissions as text[].
agent_id, coalesce(role, 'member')::text AS role, joined_at,
ARRAY(SELECT jsonb_array_elements_text(permissions)) AS permissions

-- projection: task
-- A task (server/workspaces/tasks.py `Task`); jsonb as text.
id AS task_id, workspace_id, title, type AS task_type, description, status::text AS status,
coalesce(priority, 'normal')::text AS priority, created_by, assigned_to, parent_task_id,
parameters::text AS parameters, result::text AS result, error,
coalesce(max_retries, 3) AS max_retries, coalesce(retry_count, 0) AS retry_count,
coalesce(timeout_seconds, 3600) AS timeout_s,
created_at, assigned_at, started_at, completed_at, updated_at, execution_id, step_id, attempt

-- projection: workspace
-- A workspace (server/workspaces/directory.py `Workspace`).
id AS workspace_id, name, coalesce(type, 'general') AS workspace_type,
coalesce(visibility, 'private')::text AS visibility, coalesce(max_members, 100) AS max_members,
owner_id, created_at, coalesce(state_version, 1) AS state_version

-- projection: document
-- A document (server/workspaces/directory.py `DocumentInfo`).
id AS doc_id, workspace_id, title, coalesce(content_type, 'text') AS content_type, language,
created_by, created_at, head_seq

-- projection: agent
-- A registered agent with its load (server/workspaces/agents.py `Agent`): status as listed
-- (agent_listed_status, migration 0023; a statement naming {agent} binds the presence TTL in
-- seconds as $1), load = its open assigned tasks (assigned, accepted, in progress) from
-- v_agent_workload.
agent_id, name, kind, capabilities, max_concurrent_tasks, metadata::text AS metadata,
agent_listed_status(status, last_seen_at, $1, CURRENT_TIMESTAMP) AS status, last_seen_at,
coalesce((SELECT w.pending_tasks + w.active_tasks FROM v_agent_workload w
          WHERE w.agent_id = agents.agent_id), 0)::integer AS load,
tasks_completed, tasks_failed, consecutive_failures, created_at, updated_at

-- projection: execution
-- A workflow execution (server/workspaces/executions.py `Execution`); jsonb as text.
id AS execution_id, workflow_id, workflow_version, workspace_id, status::text AS status, triggered_by,
input::text AS input, context::text AS context, step_states::text AS step_states,
step_results::text AS step_results, output::text AS output, error, started_at, completed_at
