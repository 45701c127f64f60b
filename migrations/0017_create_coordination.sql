-- migrate:up
-- Coordination (docs/protocol.md section 12): fencing tokens for leased locks, named workspace
-- locks, tasks that belong to a workspace, and the timeout sweep any node may run.

-- Fencing tokens: one sequence for document and named locks, so a token only ever grows (it
-- outlives released rows) and a write presenting an older one can be refused.
CREATE SEQUENCE lock_fence_seq AS bigint;
GRANT USAGE ON SEQUENCE lock_fence_seq TO tandem_app;

ALTER TABLE shared_documents ADD COLUMN lock_fence bigint;
COMMENT ON COLUMN shared_documents.lock_fence IS
    'Fencing token of the current (or last) lock; writes presenting another one are refused';

-- Whether a lock lets `writer` write, presenting `fence` (null: none). With a fence, only the
-- live lock's holder with that very fence may; without one, anyone may unless a live lock is
-- someone else's. An expired lock is free. Plain SQL and STABLE, so the planner inlines it into
-- the write path's one statement (tandem_append_batch, migration 0018); now() is the
-- transaction's start, the same for every row of one commit.
CREATE FUNCTION lock_allows_write(locked boolean, holder text, expires_at timestamptz,
                                  lock_fence bigint, writer text, fence bigint) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN fence IS NOT NULL
        THEN coalesce(locked AND expires_at > pg_catalog.now() AND holder = writer AND lock_fence = fence, false)
        ELSE NOT coalesce(locked AND expires_at > pg_catalog.now(), false) OR holder = writer
    END
$$;
REVOKE ALL ON FUNCTION lock_allows_write(boolean, text, timestamptz, bigint, text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lock_allows_write(boolean, text, timestamptz, bigint, text, bigint) TO tandem_app;

-- The audit trigger lists every column but the CRDT ones; the fence joins the list.
DROP TRIGGER audit_documents_update ON shared_documents;
CREATE TRIGGER audit_documents_update AFTER UPDATE ON shared_documents
    FOR EACH ROW
    WHEN ((OLD.id, OLD.workspace_id, OLD.tenant_id, OLD.title, OLD.content_type, OLD.language,
           OLD.is_locked, OLD.locked_by, OLD.locked_at, OLD.lock_expires_at, OLD.lock_fence,
           OLD.created_by, OLD.created_at, OLD.deleted_at, OLD.metadata)
          IS DISTINCT FROM
          (NEW.id, NEW.workspace_id, NEW.tenant_id, NEW.title, NEW.content_type, NEW.language,
           NEW.is_locked, NEW.locked_by, NEW.locked_at, NEW.lock_expires_at, NEW.lock_fence,
           NEW.created_by, NEW.created_at, NEW.deleted_at, NEW.metadata))
    EXECUTE FUNCTION audit_trigger_function('id', 'content');

-- Named locks on resources that are not documents ("deploy", "tests"). A released lock is
-- deleted; an expired one stays until someone takes it (the acquiring statement checks expiry).
CREATE TABLE workspace_locks (
    workspace_id uuid NOT NULL,
    name varchar(100) NOT NULL CONSTRAINT lock_name_not_empty CHECK (btrim(name, E' \t\r\n') <> ''),
    tenant_id uuid NOT NULL,
    locked_by varchar(255) NOT NULL,
    fence bigint NOT NULL,
    locked_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    lock_expires_at timestamptz NOT NULL,

    PRIMARY KEY (workspace_id, name),
    -- NOTES 8: a lock belongs to a workspace of its own tenant.
    CONSTRAINT workspace_locks_workspace_id_fkey FOREIGN KEY (workspace_id, tenant_id)
        REFERENCES workspaces (id, tenant_id) ON DELETE CASCADE,
    CONSTRAINT lock_expires_after_taken CHECK (lock_expires_at > locked_at)
);

CREATE INDEX idx_workspace_locks_tenant_id ON workspace_locks (tenant_id);
CREATE INDEX idx_workspace_locks_holder ON workspace_locks (locked_by);

ALTER TABLE workspace_locks ENABLE ROW LEVEL SECURITY;
ALTER TABLE workspace_locks FORCE ROW LEVEL SECURITY;

CREATE POLICY workspace_locks_tenant_isolation ON workspace_locks
    FOR ALL
    USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id());

GRANT SELECT, INSERT, UPDATE, DELETE ON workspace_locks TO tandem_app;

CREATE TRIGGER audit_workspace_locks AFTER INSERT OR UPDATE OR DELETE ON workspace_locks
    FOR EACH ROW EXECUTE FUNCTION audit_trigger_function('workspace_id');

COMMENT ON TABLE workspace_locks IS 'Leased named locks of a workspace, with fencing tokens';

-- Tasks live in a workspace: their events reach its members (nullable: the seed's rows have none).
ALTER TABLE tasks ADD COLUMN workspace_id uuid;
ALTER TABLE tasks ADD CONSTRAINT tasks_workspace_id_fkey FOREIGN KEY (workspace_id, tenant_id)
    REFERENCES workspaces (id, tenant_id) ON DELETE CASCADE;
CREATE INDEX idx_tasks_workspace_status_priority ON tasks (workspace_id, status, priority)
    WHERE deleted_at IS NULL;
CREATE INDEX idx_tasks_in_progress ON tasks (started_at)
    WHERE status = 'in_progress' AND deleted_at IS NULL;
CREATE INDEX idx_tasks_created_by ON tasks (created_by) WHERE deleted_at IS NULL;

-- The timeout sweep crosses tenants, so it runs as the owner (SECURITY DEFINER), which FORCE
-- binds to the policies too: these two let the owner see tasks in progress and only move them
-- to 'timeout'. Nothing else of any tenant is visible to it, and the app role gains nothing.
-- (The UPDATE reads the table, so the row it leaves, now 'timeout', must stay visible too.)
CREATE POLICY tasks_timeout_sweep_select ON tasks
    FOR SELECT
    TO tandem_owner
    USING (status IN ('in_progress', 'timeout') AND deleted_at IS NULL);

CREATE POLICY tasks_timeout_sweep_update ON tasks
    FOR UPDATE
    TO tandem_owner
    USING (status = 'in_progress' AND deleted_at IS NULL)
    WITH CHECK (status = 'timeout');

-- Marks at most max_rows overdue tasks 'timeout' and returns them. Any number of nodes may run
-- it at once: SKIP LOCKED gives each row to one caller, and the re-checked status stops a
-- second marking after the first commits. MATERIALIZED: the locking LIMIT runs once (inlined, the
-- planner may run it per row and mark more than max_rows).
CREATE FUNCTION sweep_task_timeouts(max_rows integer)
    RETURNS TABLE (task_id uuid, tenant_id uuid, workspace_id uuid)
    LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
    WITH due AS MATERIALIZED (
        SELECT d.id FROM public.tasks d
         WHERE d.status = 'in_progress' AND d.deleted_at IS NULL
           AND d.started_at + d.timeout_seconds * interval '1 second' < CURRENT_TIMESTAMP
         ORDER BY d.started_at
         LIMIT max_rows
         FOR UPDATE SKIP LOCKED)
    UPDATE public.tasks t
       SET status = 'timeout',
           completed_at = CURRENT_TIMESTAMP,
           error = 'timed out after ' || t.timeout_seconds || ' s'
      FROM due
     WHERE t.id = due.id AND t.status = 'in_progress'
    RETURNING t.id, t.tenant_id, t.workspace_id
$$;

REVOKE ALL ON FUNCTION sweep_task_timeouts(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sweep_task_timeouts(integer) TO tandem_app;

-- migrate:down
REVOKE EXECUTE ON FUNCTION sweep_task_timeouts(integer) FROM tandem_app;
DROP FUNCTION sweep_task_timeouts(integer);
DROP POLICY tasks_timeout_sweep_update ON tasks;
DROP POLICY tasks_timeout_sweep_select ON tasks;
DROP INDEX idx_tasks_created_by;
DROP INDEX idx_tasks_in_progress;
DROP INDEX idx_tasks_workspace_status_priority;
ALTER TABLE tasks DROP CONSTRAINT tasks_workspace_id_fkey;
ALTER TABLE tasks DROP COLUMN workspace_id;

DROP TRIGGER audit_workspace_locks ON workspace_locks;
REVOKE SELECT, INSERT, UPDATE, DELETE ON workspace_locks FROM tandem_app;
DROP POLICY workspace_locks_tenant_isolation ON workspace_locks;
ALTER TABLE workspace_locks NO FORCE ROW LEVEL SECURITY;
ALTER TABLE workspace_locks DISABLE ROW LEVEL SECURITY;
DROP TABLE workspace_locks;

DROP TRIGGER audit_documents_update ON shared_documents;
CREATE TRIGGER audit_documents_update AFTER UPDATE ON shared_documents
    FOR EACH ROW
    WHEN ((OLD.id, OLD.workspace_id, OLD.tenant_id, OLD.title, OLD.content_type, OLD.language,
           OLD.is_locked, OLD.locked_by, OLD.locked_at, OLD.lock_expires_at, OLD.created_by,
           OLD.created_at, OLD.deleted_at, OLD.metadata)
          IS DISTINCT FROM
          (NEW.id, NEW.workspace_id, NEW.tenant_id, NEW.title, NEW.content_type, NEW.language,
           NEW.is_locked, NEW.locked_by, NEW.locked_at, NEW.lock_expires_at, NEW.created_by,
           NEW.created_at, NEW.deleted_at, NEW.metadata))
    EXECUTE FUNCTION audit_trigger_function('id', 'content');
REVOKE EXECUTE ON FUNCTION lock_allows_write(boolean, text, timestamptz, bigint, text, bigint) FROM tandem_app;
DROP FUNCTION lock_allows_write(boolean, text, timestamptz, bigint, text, bigint);
ALTER TABLE shared_documents DROP COLUMN lock_fence;

REVOKE USAGE ON SEQUENCE lock_fence_seq FROM tandem_app;
DROP SEQUENCE lock_fence_seq;
