-- The operator's everyday commands (server/tools/ops.py): listing, showing and soft-deleting
-- workspaces and documents of one tenant, and what `tandem status` reads. Soft delete sets
-- `deleted_at`, as the schema intends: every statement of the server filters on it, so a
-- deleted row leaves the server's lists at once while its log stays for replay.

-- name: ops_list_workspaces
-- Live workspaces of the current tenant with their member and live document counts, oldest first; at most $1.
SELECT {workspace},
       (SELECT count(*) FROM workspace_members m WHERE m.workspace_id = workspaces.id) AS member_count,
       (SELECT count(*) FROM shared_documents d
         WHERE d.workspace_id = workspaces.id AND d.deleted_at IS NULL) AS document_count
FROM workspaces
WHERE deleted_at IS NULL
ORDER BY created_at, id
LIMIT $1;

-- name: ops_get_workspace
-- Live workspace $1 of the current tenant with its member and live document counts.
SELECT {workspace},
       (SELECT count(*) FROM workspace_members m WHERE m.workspace_id = workspaces.id) AS member_count,
       (SELECT count(*) FROM shared_documents d
         WHERE d.workspace_id = workspaces.id AND d.deleted_at IS NULL) AS document_count
FROM workspaces
WHERE id = $1 AND deleted_at IS NULL;

-- name: ops_delete_workspace
-- Soft-delete live workspace $1 (its documents and members stay, unreachable through it).
UPDATE workspaces SET deleted_at = CURRENT_TIMESTAMP
WHERE id = $1 AND deleted_at IS NULL
RETURNING {workspace}, deleted_at;

-- name: ops_delete_document
-- Soft-delete live document $1 of a live workspace (its log and snapshots stay for replay).
UPDATE shared_documents d SET deleted_at = CURRENT_TIMESTAMP
WHERE id = $1 AND deleted_at IS NULL
  AND EXISTS (SELECT 1 FROM workspaces w WHERE w.id = d.workspace_id AND w.deleted_at IS NULL)
RETURNING {document}, deleted_at;

-- name: ops_nodes
-- Server nodes connected now: each holds one LISTEN connection named "tandem NODE listen"
-- (server/cluster/fanout.py) as role $1; its node id and since when (run as the admin role).
SELECT substring(application_name FROM '^tandem (.*) listen$') AS node_id, backend_start
FROM pg_stat_activity
WHERE datname = current_database() AND usename = $1 AND application_name LIKE 'tandem % listen'
ORDER BY backend_start, pid;
