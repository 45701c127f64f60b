-- Member management: adding, changing and removing workspace members (server/workspaces/members.py).
-- Callers hold the workspace row lock (`ws_lock_workspace`) while they read and change members,
-- so every membership change of one workspace is serialised. `permissions` goes in as text[]
-- and comes back as text[], so nothing depends on the connection's jsonb codec.

-- name: member_roles_and_count
-- Role of actor $2 and of target $3 in workspace $1 (null: not a member) and its member count.
SELECT (SELECT coalesce(role, 'member')::text FROM workspace_members
         WHERE workspace_id = $1 AND agent_id = $2) AS actor_role,
       (SELECT coalesce(role, 'member')::text FROM workspace_members
         WHERE workspace_id = $1 AND agent_id = $3) AS target_role,
       (SELECT count(*) FROM workspace_members WHERE workspace_id = $1) AS member_count;

-- name: member_insert
-- Make agent $2 a member of workspace $1 with role $3 and permissions $4 (null: the column's
-- default, repeated here from migration 0007).
INSERT INTO workspace_members (workspace_id, agent_id, tenant_id, role, permissions)
VALUES ($1, $2, current_tenant_id(), $3::text::member_role,
        coalesce(to_jsonb($4::text[]), '["read", "write"]'::jsonb))
RETURNING {member};

-- name: member_update
-- Give member $2 of workspace $1 role $3 and permissions $4 (each null: unchanged).
UPDATE workspace_members
SET role = coalesce($3::text::member_role, role),
    permissions = coalesce(to_jsonb($4::text[]), permissions)
WHERE workspace_id = $1 AND agent_id = $2
RETURNING {member};

-- name: member_delete
-- Remove member $2 from workspace $1, returning the membership it had.
DELETE FROM workspace_members
WHERE workspace_id = $1 AND agent_id = $2
RETURNING {member};

-- name: member_list
-- Members of live workspace $1 in joining order, at most $2.
SELECT {member}
FROM workspace_members
WHERE workspace_id = $1 AND EXISTS (SELECT 1 FROM workspaces w WHERE w.id = $1 AND w.deleted_at IS NULL)
ORDER BY joined_at, agent_id
LIMIT $2;

-- name: member_workspace_exists
-- Whether live workspace $1 is visible to the current tenant.
SELECT EXISTS (SELECT 1 FROM workspaces WHERE id = $1 AND deleted_at IS NULL);
