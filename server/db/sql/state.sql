-- Workspace state: the `workspaces.state` object and its optimistic `state_version` (server/workspaces/state.py).
-- State travels as JSON text (`$n::text::jsonb` in, `state::text` out), so the results do not
-- depend on the connection's jsonb codec. A NULL state_version reads as its default, 1.

-- name: state_get
-- State and version of live workspace $1 (no row: unknown, deleted or another tenant's).
SELECT state::text AS state, coalesce(state_version, 1) AS version
FROM workspaces
WHERE id = $1 AND deleted_at IS NULL;

-- name: state_lock
-- State and version of live workspace $1 under the row lock every state write takes first.
SELECT state::text AS state, coalesce(state_version, 1) AS version
FROM workspaces
WHERE id = $1 AND deleted_at IS NULL
FOR NO KEY UPDATE;

-- name: state_merged
-- The state of workspace $1 (locked by the caller) recursively merged with object $2 (JSON text).
SELECT jsonb_merge_recursive(state, $2::text::jsonb)::text AS state
FROM workspaces
WHERE id = $1;

-- name: state_write
-- Store state $2 (JSON text) in workspace $1 and advance its version by exactly one.
UPDATE workspaces
SET state = $2::text::jsonb,
    state_version = coalesce(state_version, 1) + 1,
    last_activity_at = CURRENT_TIMESTAMP
WHERE id = $1
RETURNING state::text AS state, state_version AS version;

-- name: state_record_merge
-- Record that a stale update of workspace $1's state by agent $2 was merged onto the current one
-- ($3 expected version, $4 actual version, $5 mode).
INSERT INTO conflict_resolutions
    (tenant_id, resource_type, resource_id, conflict_type, description, resolution_strategy,
     details, resolved_by, resolved_at)
VALUES (current_tenant_id(), 'workspace_state', $1, 'version_mismatch',
        'state update applied on top of a newer version', 'merge',
        jsonb_build_object('expected_version', $3::int, 'actual_version', $4::int, 'mode', $5::text),
        $2, CURRENT_TIMESTAMP);
