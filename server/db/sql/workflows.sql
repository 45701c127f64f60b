-- Workflow definitions (server/workspaces/workflows.py): `workflows` holds one row per name and
-- workspace (stable id, latest version, active flag); `workflow_versions` every version, never
-- changed. JSON travels as text (`$n::text::jsonb` in, `::text` out), independent of codecs.

-- name: workflow_define
-- Workflow $2 of workspace $1: created at version 1, or given its next version (and made active
-- again); $3 type, $4 steps and $5 config (JSON text), $6 description, $7 the defining agent.
-- The upsert takes the row lock, so two defines of one name get consecutive versions.
WITH head AS (
    INSERT INTO workflows AS w
        (tenant_id, workspace_id, name, type, version, created_by, steps, config, description, is_active)
    VALUES (current_tenant_id(), $1, $2, $3::workflow_type, 1, $7, $4::text::jsonb, $5::text::jsonb, $6, true)
    ON CONFLICT (tenant_id, workspace_id, name) WHERE deleted_at IS NULL
    DO UPDATE SET version = coalesce(w.version, 1) + 1, type = EXCLUDED.type, steps = EXCLUDED.steps,
                  config = EXCLUDED.config, description = EXCLUDED.description, is_active = true
    RETURNING w.id, w.version
)
INSERT INTO workflow_versions (workflow_id, tenant_id, version, type, steps, config, description, created_by)
SELECT id, current_tenant_id(), version, $3::workflow_type, $4::text::jsonb, $5::text::jsonb, $6, $7
FROM head
RETURNING workflow_id, version;

-- name: workflow_get
-- Version $3 (null: the latest) of live workflow $1 in workspace $2 (null: any, for `tandem`).
SELECT w.id AS workflow_id, w.workspace_id, w.name, v.version, w.version AS latest_version,
       coalesce(w.is_active, true) AS active, v.type::text AS type, v.steps::text AS steps,
       v.config::text AS config, v.description, v.created_by, v.created_at
FROM workflows w
JOIN workflow_versions v ON v.workflow_id = w.id AND v.tenant_id = w.tenant_id
                        AND v.version = coalesce($3, w.version)
WHERE w.id = $1 AND ($2::uuid IS NULL OR w.workspace_id = $2) AND w.deleted_at IS NULL;

-- name: workflow_list
-- Live workflows of workspace $1 by name, active ones only unless $2; at most $3 rows.
SELECT id AS workflow_id, workspace_id, name, coalesce(version, 1) AS version, type::text AS type,
       coalesce(is_active, true) AS active, created_by, created_at, updated_at
FROM workflows
WHERE workspace_id = $1 AND deleted_at IS NULL AND ($2 OR coalesce(is_active, true))
ORDER BY name, id
LIMIT $3;

-- name: workflow_deactivate
-- Mark live workflow $1 of workspace $2 inactive (no new executions); its versions stay.
UPDATE workflows
SET is_active = false
WHERE id = $1 AND workspace_id = $2 AND deleted_at IS NULL
RETURNING id AS workflow_id, workspace_id, name, coalesce(version, 1) AS version, type::text AS type,
          is_active AS active, created_by, created_at, updated_at;
