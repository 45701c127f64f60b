-- Every SQL statement the server runs, by name. Each has a `-- name: NAME` line and a one-line
-- description. Parameters are always bound ($1, $2, ...); nothing is built from input.
-- Statements run as the application role inside tenant_transaction(), so RLS scopes them.

-- name: set_context
-- Bind the tenant (and the actor and client address the audit trigger records) to this transaction.
SELECT set_config('app.current_tenant', $1::text, true),
       set_config('app.user_id', coalesce($2::text, ''), true),
       set_config('app.client_ip', coalesce($3::text, ''), true);

-- name: current_tenant
-- The tenant this transaction is bound to (set_context).
SELECT current_tenant_id();

-- name: ping
-- Whether the connection answers (health probes, the LISTEN connection's keepalive).
SELECT 1;

-- name: set_statement_timeout
-- End any statement of this session past $1 milliseconds (PostgreSQL rolls it back).
SELECT set_config('statement_timeout', $1::text, false);

-- name: reset_statement_timeout
-- Back to the role's and database's statement_timeout (before a connection goes back to the pool).
RESET statement_timeout;

-- name: maintain_partitions
-- Create this month's and next month's audit partitions (run as the owner role; idempotent).
SELECT tandem_maintain_partitions();

-- name: append_batch
-- Append a group-commit batch: parallel arrays (tenant, doc, agent, fence, type, clock, update), one row per operation in order; $8: node id for hints.
SELECT seq, refused, holder FROM tandem_append_batch($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[]::jsonb[], $7::bytea[], $8::text);

-- name: append_batch_expecting
-- append_batch with $9: per operation, the head its writer expects (NULL: none); refused `head_moved` with the head found otherwise.
SELECT seq, refused, holder, head FROM tandem_append_batch($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[]::jsonb[], $7::bytea[], $8::text, $9::bigint[]);

-- name: operations_after
-- The operations of document $1 with a sequence number in ($2, $2 + $3], in order. Seqs are
-- contiguous, so the range is at most $3 rows and always an index range scan (a LIMIT alone
-- can make the planner sort every later row for each page).
SELECT sequence_number, agent_id, operation_type, vector_clock, "update", "timestamp"
FROM document_operations
WHERE document_id = $1 AND sequence_number > $2 AND sequence_number <= $2 + $3
ORDER BY sequence_number;

-- ============================================================================================
-- Workspaces, members and documents (server/workspaces/directory.py)
-- Nullable columns with defaults are read through coalesce() to those defaults, so callers see
-- typed values. `permissions` comes back as text[] so the result does not depend on jsonb codecs.
-- ============================================================================================

-- name: ws_create_workspace
-- Insert workspace ($1 tenant, $2 name, $3 type, $4 owner, $5 visibility, $6 max_members) and its owner's membership.
WITH w AS (
    INSERT INTO workspaces (tenant_id, name, type, owner_id, visibility, max_members)
    VALUES ($1, $2, $3, $4, $5, $6)
    RETURNING id, tenant_id, name, type, visibility, max_members, owner_id, created_at, state_version
), owner_member AS (
    INSERT INTO workspace_members (workspace_id, agent_id, tenant_id, role)
    SELECT id, owner_id, tenant_id, 'owner' FROM w
)
SELECT {workspace}
FROM w;

-- name: ws_list_workspaces
-- Live workspaces agent $1 is a member of, plus the tenant's team and public ones; at most $2.
SELECT {workspace}
FROM workspaces w
WHERE w.deleted_at IS NULL
  AND (w.visibility IN ('team', 'public')
       OR EXISTS (SELECT 1 FROM workspace_members m WHERE m.workspace_id = w.id AND m.agent_id = $1))
ORDER BY w.created_at, w.id
LIMIT $2;

-- name: ws_lock_workspace
-- Live workspace $1 under a row lock that serialises membership changes (not FK checks) until commit.
SELECT {workspace}
FROM workspaces w
WHERE w.id = $1 AND w.deleted_at IS NULL
FOR NO KEY UPDATE;

-- name: ws_get_workspace
-- Live workspace $1, read without a lock (a reader's access check).
SELECT {workspace}
FROM workspaces w
WHERE w.id = $1 AND w.deleted_at IS NULL;

-- name: ws_rejoin_member
-- A member ($2) of live workspace $1 came back: its last_seen_at moves, and so does the
-- workspace's activity unless a join moved it within the last second. The workspace row is not
-- locked: a rejoin changes no membership, so rejoins need not queue behind each other (after a
-- node restart its agents all rejoin at once). No row: not a member, or no such live workspace.
WITH w AS (
    SELECT {workspace}
    FROM workspaces w
    WHERE w.id = $1 AND w.deleted_at IS NULL
), m AS (
    UPDATE workspace_members SET last_seen_at = CURRENT_TIMESTAMP
    WHERE workspace_id = (SELECT workspace_id FROM w) AND agent_id = $2
    RETURNING {member}
), activity AS (
    UPDATE workspaces SET last_activity_at = CURRENT_TIMESTAMP
    WHERE id = $1 AND EXISTS (SELECT 1 FROM m)
      AND (last_activity_at IS NULL OR last_activity_at < CURRENT_TIMESTAMP - interval '1 second')
)
SELECT w.*, m.* FROM w, m;

-- name: ws_member_role_and_count
-- Role of agent $2 in workspace $1 (null: not a member) and the workspace's member count.
SELECT (SELECT coalesce(role, 'member')::text FROM workspace_members
         WHERE workspace_id = $1 AND agent_id = $2) AS role,
       (SELECT count(*) FROM workspace_members WHERE workspace_id = $1) AS member_count;

-- name: ws_touch_member
-- A member of workspace $1 ($2) came back: bump its last_seen_at and the workspace's activity.
WITH activity AS (
    UPDATE workspaces SET last_activity_at = CURRENT_TIMESTAMP WHERE id = $1
)
UPDATE workspace_members SET last_seen_at = CURRENT_TIMESTAMP
WHERE workspace_id = $1 AND agent_id = $2
RETURNING {member};

-- name: ws_join_member
-- Agent $2 joins workspace $1 as a plain member (an existing row only gets last_seen_at); bumps activity.
WITH activity AS (
    UPDATE workspaces SET last_activity_at = CURRENT_TIMESTAMP WHERE id = $1
)
INSERT INTO workspace_members (workspace_id, agent_id, tenant_id, role)
VALUES ($1, $2, current_tenant_id(), 'member')
ON CONFLICT (workspace_id, agent_id) DO UPDATE SET last_seen_at = CURRENT_TIMESTAMP
RETURNING {member};

-- name: ws_upsert_member
-- Make agent $2 a member of workspace $1 with role $3 (an existing member gets the new role).
INSERT INTO workspace_members (workspace_id, agent_id, tenant_id, role)
VALUES ($1, $2, current_tenant_id(), $3)
ON CONFLICT (workspace_id, agent_id) DO UPDATE SET role = EXCLUDED.role
RETURNING {member};

-- name: ws_get_membership
-- Membership of agent $2 in live workspace $1, with its permissions.
SELECT {member}
FROM workspace_members
WHERE workspace_id = $1 AND agent_id = $2
  AND EXISTS (SELECT 1 FROM workspaces w WHERE w.id = $1 AND w.deleted_at IS NULL);

-- name: ws_list_members
-- Members of workspace $1 in joining order, at most $2.
SELECT {member}
FROM workspace_members
WHERE workspace_id = $1
ORDER BY joined_at, agent_id
LIMIT $2;

-- name: ws_create_document
-- Insert an empty document ($1 workspace, $2 title, $3 content_type, $4 language, $5 created_by).
INSERT INTO shared_documents (workspace_id, tenant_id, title, content_type, language, created_by)
VALUES ($1, current_tenant_id(), $2, $3, $4, $5)
RETURNING {document};

-- name: ws_list_documents
-- Live documents of live workspace $1 in creation order, at most $2.
SELECT {document}
FROM shared_documents
WHERE workspace_id = $1 AND deleted_at IS NULL
  AND EXISTS (SELECT 1 FROM workspaces w WHERE w.id = $1 AND w.deleted_at IS NULL)
ORDER BY created_at, id
LIMIT $2;

-- name: ws_get_document
-- Live document $1 of a live workspace (none without a workspace).
SELECT {document}
FROM shared_documents d
WHERE id = $1 AND deleted_at IS NULL
  AND EXISTS (SELECT 1 FROM workspaces w WHERE w.id = d.workspace_id AND w.deleted_at IS NULL);

-- Rooms: loading, snapshots and readable content (server/documents/rooms.py)

-- name: document_meta
-- A live document's workspace, committed head and live lock, for loading its room.
SELECT workspace_id, head_seq,
       CASE WHEN is_locked AND lock_expires_at > now() THEN locked_by END AS lock_holder,
       lock_fence, lock_expires_at
FROM shared_documents WHERE id = $1 AND deleted_at IS NULL;

-- name: document_heads
-- The committed head of each of the given documents (the fan-out's periodic check).
SELECT id, head_seq FROM shared_documents WHERE id = ANY($1::uuid[]);

-- name: notify
-- Fan-out hints, sent in the writer's transaction: delivered only if it commits, in commit order.
SELECT pg_notify('tandem', payload) FROM unnest($1::text[]) AS payload;

-- name: latest_snapshot
-- The newest snapshot of document $1.
SELECT sequence_number, state, created_at FROM document_snapshots
WHERE document_id = $1 ORDER BY sequence_number DESC LIMIT 1;

-- name: insert_snapshot
-- Record the encoded state of document $1 after operation $2 (a repeat of the same seq is a no-op).
INSERT INTO document_snapshots (tenant_id, document_id, sequence_number, state)
VALUES (current_tenant_id(), $1, $2, $3)
ON CONFLICT (document_id, sequence_number) DO NOTHING;

-- name: update_content
-- The current text for readers that don't speak CRDT; `version` counts these refreshes.
UPDATE shared_documents SET content = $2, version = version + 1, updated_by = $3 WHERE id = $1;

-- ============================================================================================
-- Replay tool (server/tools/replay.py)
-- Read-only, in one repeatable-read transaction per command. Pages of the log are ranges of
-- seq, bounded on both sides: each page reads only its own rows even when the planner's
-- statistics lag behind a burst of writes (a LIMIT alone can then sort every later row).
-- ============================================================================================

-- name: replay_operations
-- The operations of document $1 with $2 < seq <= $3, in order; the clock as JSON text (decoded only if used).
SELECT sequence_number, agent_id, operation_type, vector_clock::text AS vector_clock, "update", "timestamp"
FROM document_operations
WHERE document_id = $1 AND sequence_number > $2 AND sequence_number <= $3
ORDER BY sequence_number;

-- name: replay_document
-- Document $1 (deleted ones included: their log can still be replayed), its head and readable content.
SELECT coalesce(content_type, 'text') AS content_type, head_seq, content
FROM shared_documents WHERE id = $1;

-- name: replay_snapshot_seqs
-- The sequence numbers of document $1's snapshots up to seq $2, oldest first.
SELECT sequence_number FROM document_snapshots
WHERE document_id = $1 AND sequence_number <= $2
ORDER BY sequence_number;

-- name: replay_snapshot_at_or_before
-- The newest snapshot of document $1 at or before seq $2 (one backward scan of the unique key).
SELECT sequence_number, state, created_at FROM document_snapshots
WHERE document_id = $1 AND sequence_number <= $2
ORDER BY sequence_number DESC LIMIT 1;

-- name: replay_seq_at_time
-- The end of document $1's log prefix written at or before $2 (the seq before the first later row), at most $3.
SELECT least(coalesce(min(sequence_number) - 1, $3::bigint), $3::bigint)
FROM document_operations
WHERE document_id = $1 AND "timestamp" > $2;

-- name: replay_history
-- Operations of document $1 in ($2, $3] by agents $4 (null: all) written within [$5, $6] (null: open), at most $7.
SELECT sequence_number, agent_id, operation_type, "timestamp", octet_length("update") AS size_bytes
FROM document_operations
WHERE document_id = $1 AND sequence_number > $2 AND sequence_number <= $3
  AND ($4::text[] IS NULL OR agent_id = ANY($4::text[]))
  AND ($5::timestamptz IS NULL OR "timestamp" >= $5)
  AND ($6::timestamptz IS NULL OR "timestamp" <= $6)
ORDER BY sequence_number
LIMIT $7;
