-- migrate:up
-- NOTES 3: security_invoker, so the views read the tables with the caller's privileges and
-- row-level security: each tenant sees its own statistics only.
CREATE VIEW v_task_statistics WITH (security_invoker = true) AS
SELECT
    tenant_id,
    status,
    priority,
    COUNT(*) AS count,
    AVG(EXTRACT(EPOCH FROM (completed_at - created_at))) AS avg_duration_seconds,
    PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM (completed_at - created_at))) AS median_duration_seconds,
    PERCENTILE_CONT(0.95) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM (completed_at - created_at))) AS p95_duration_seconds
FROM tasks
WHERE deleted_at IS NULL
GROUP BY tenant_id, status, priority;

CREATE VIEW v_active_workflows WITH (security_invoker = true) AS
SELECT
    w.id,
    w.tenant_id,
    w.name,
    w.type,
    COUNT(DISTINCT we.id) FILTER (WHERE we.status IN ('pending', 'running')) AS active_executions,
    COUNT(DISTINCT we.id) FILTER (WHERE we.status = 'completed') AS completed_executions,
    COUNT(DISTINCT we.id) FILTER (WHERE we.status = 'failed') AS failed_executions,
    MAX(we.started_at) AS last_execution_started
FROM workflows w
LEFT JOIN workflow_executions we ON w.id = we.workflow_id AND w.tenant_id = we.tenant_id
WHERE w.is_active = true AND w.deleted_at IS NULL
GROUP BY w.id, w.tenant_id, w.name, w.type;

CREATE VIEW v_agent_workload WITH (security_invoker = true) AS
SELECT
    tenant_id,
    assigned_to AS agent_id,
    COUNT(*) FILTER (WHERE status IN ('assigned', 'accepted')) AS pending_tasks,
    COUNT(*) FILTER (WHERE status = 'in_progress') AS active_tasks,
    COUNT(*) FILTER (WHERE status = 'completed' AND completed_at > CURRENT_TIMESTAMP - INTERVAL '24 hours') AS completed_24h,
    AVG(EXTRACT(EPOCH FROM (completed_at - started_at))) FILTER (WHERE status = 'completed') AS avg_task_duration_seconds
FROM tasks
WHERE deleted_at IS NULL AND assigned_to IS NOT NULL
GROUP BY tenant_id, assigned_to;

CREATE VIEW v_workspace_activity WITH (security_invoker = true) AS
SELECT
    w.id,
    w.tenant_id,
    w.name,
    w.type,
    COUNT(DISTINCT wm.agent_id) AS member_count,
    COUNT(DISTINCT wm.agent_id) FILTER (WHERE wm.last_seen_at > CURRENT_TIMESTAMP - INTERVAL '15 minutes') AS active_members,
    w.state_version,
    w.last_activity_at,
    COUNT(DISTINCT d.id) AS document_count
FROM workspaces w
LEFT JOIN workspace_members wm ON w.id = wm.workspace_id AND w.tenant_id = wm.tenant_id
LEFT JOIN shared_documents d ON w.id = d.workspace_id AND w.tenant_id = d.tenant_id AND d.deleted_at IS NULL
WHERE w.deleted_at IS NULL
GROUP BY w.id, w.tenant_id, w.name, w.type, w.state_version, w.last_activity_at;

GRANT SELECT ON v_task_statistics, v_active_workflows, v_agent_workload, v_workspace_activity TO tandem_app;

-- migrate:down
REVOKE SELECT ON v_task_statistics, v_active_workflows, v_agent_workload, v_workspace_activity FROM tandem_app;
DROP VIEW v_workspace_activity;
DROP VIEW v_agent_workload;
DROP VIEW v_active_workflows;
DROP VIEW v_task_statistics;
