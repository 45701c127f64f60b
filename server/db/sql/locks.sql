-- Leased locks (server/workspaces/locks.py, docs/protocol.md#121): document locks on shared_documents'
-- lock columns, named locks in workspace_locks. Every acquisition checks expiry in the acquiring
-- statement itself (the row lock makes concurrent acquirers queue and re-check), never in a
-- read-then-write. Fences come from lock_fence_seq, so they only grow.

-- name: lock_doc_acquire
-- Agent $3 takes (or takes again) the lock of live document $1 of workspace $2 for $4 ms, unless another agent's lock is live.
UPDATE shared_documents
SET is_locked = true, locked_by = $3, locked_at = now(),
    lock_expires_at = now() + $4 * interval '1 millisecond', lock_fence = nextval('lock_fence_seq')
WHERE id = $1 AND workspace_id = $2 AND deleted_at IS NULL
  AND (NOT coalesce(is_locked, false) OR lock_expires_at <= now() OR locked_by = $3)
RETURNING locked_by, lock_fence AS fence, locked_at, lock_expires_at;

-- name: lock_doc_current
-- The live lock of live document $1 of workspace $2 (holder null: free); no row: no such document.
SELECT CASE WHEN is_locked AND lock_expires_at > now() THEN locked_by END AS locked_by,
       lock_fence AS fence, locked_at, lock_expires_at
FROM shared_documents WHERE id = $1 AND workspace_id = $2 AND deleted_at IS NULL;

-- name: lock_doc_renew
-- Holder $3 with fence $4 extends its live lock of document $1 (workspace $2) to $5 ms from now.
UPDATE shared_documents SET lock_expires_at = now() + $5 * interval '1 millisecond'
WHERE id = $1 AND workspace_id = $2 AND deleted_at IS NULL
  AND is_locked AND locked_by = $3 AND lock_fence = $4 AND lock_expires_at > now()
RETURNING locked_by, lock_fence AS fence, locked_at, lock_expires_at;

-- name: lock_doc_release
-- Holder $3 with fence $4 releases document $1's lock (workspace $2), live or lapsed; $5: only if it still expires at $5.
UPDATE shared_documents
SET is_locked = false, locked_by = NULL, locked_at = NULL, lock_expires_at = NULL
WHERE id = $1 AND workspace_id = $2 AND is_locked AND locked_by = $3 AND lock_fence = $4
  AND ($5::timestamptz IS NULL OR lock_expires_at = $5)
RETURNING $3::text AS locked_by, $4::bigint AS fence;

-- name: lock_named_acquire
-- Agent $3 takes (or takes again) named lock $2 of workspace $1 for $4 ms, unless another agent's lock is live.
INSERT INTO workspace_locks (workspace_id, name, tenant_id, locked_by, fence, locked_at, lock_expires_at)
VALUES ($1, $2, current_tenant_id(), $3, nextval('lock_fence_seq'), now(), now() + $4 * interval '1 millisecond')
ON CONFLICT (workspace_id, name) DO UPDATE
SET locked_by = EXCLUDED.locked_by, fence = EXCLUDED.fence, locked_at = EXCLUDED.locked_at,
    lock_expires_at = EXCLUDED.lock_expires_at
WHERE workspace_locks.lock_expires_at <= now() OR workspace_locks.locked_by = EXCLUDED.locked_by
RETURNING locked_by, fence, locked_at, lock_expires_at;

-- name: lock_named_current
-- The live named lock $2 of workspace $1 (no row: free).
SELECT locked_by, fence, locked_at, lock_expires_at FROM workspace_locks
WHERE workspace_id = $1 AND name = $2 AND lock_expires_at > now();

-- name: lock_named_renew
-- Holder $3 with fence $4 extends its live named lock $2 of workspace $1 to $5 ms from now.
UPDATE workspace_locks SET lock_expires_at = now() + $5 * interval '1 millisecond'
WHERE workspace_id = $1 AND name = $2 AND locked_by = $3 AND fence = $4 AND lock_expires_at > now()
RETURNING locked_by, fence, locked_at, lock_expires_at;

-- name: lock_named_release
-- Holder $3 with fence $4 releases named lock $2 of workspace $1, live or lapsed; $5: only if it still expires at $5.
DELETE FROM workspace_locks
WHERE workspace_id = $1 AND name = $2 AND locked_by = $3 AND fence = $4
  AND ($5::timestamptz IS NULL OR lock_expires_at = $5)
RETURNING locked_by, fence;

-- name: lock_list
-- The live locks of workspace $1: its documents' and its named ones.
SELECT id AS doc_id, NULL::text AS name, locked_by, lock_fence AS fence, locked_at, lock_expires_at
FROM shared_documents
WHERE workspace_id = $1 AND deleted_at IS NULL AND is_locked AND lock_expires_at > now()
UNION ALL
SELECT NULL::uuid, name, locked_by, fence, locked_at, lock_expires_at
FROM workspace_locks
WHERE workspace_id = $1 AND lock_expires_at > now()
ORDER BY locked_at;
