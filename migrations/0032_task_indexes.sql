-- migrate:up
-- Fewer indexes on tasks. A status change is never a HOT update (status is in index keys and
-- predicates), so every transition writes an entry into every index whose predicate holds: a
-- step task's life (created assigned, started, completed) wrote 37 entries into 15 indexes.
-- Dropped here, as no statement's plan uses them (docs/schema.md, "Indexes of tasks"):
-- created_at, created_by, assigned_to, status and tenant_id alone, and (tenant, status,
-- priority) of pending and assigned tasks; every application statement is tenant-scoped by RLS,
-- and the composite indexes below lead with the tenant or the workspace. The covering
-- (tenant, assignee, status) index is kept without its INCLUDE columns: no statement reads
-- tasks from the index alone, and it carried each title into every entry.
DROP INDEX idx_tasks_created_at;
DROP INDEX idx_tasks_created_by;
DROP INDEX idx_tasks_assigned_to;
DROP INDEX idx_tasks_status;
DROP INDEX idx_tasks_tenant_id;
DROP INDEX idx_tasks_tenant_status_priority;
DROP INDEX idx_tasks_list_covering;
CREATE INDEX idx_tasks_assignee_status ON tasks (tenant_id, assigned_to, status) WHERE deleted_at IS NULL;

-- migrate:down
DROP INDEX idx_tasks_assignee_status;
CREATE INDEX idx_tasks_list_covering ON tasks (tenant_id, assigned_to, status)
    INCLUDE (title, priority, created_at)
    WHERE deleted_at IS NULL;
CREATE INDEX idx_tasks_tenant_status_priority ON tasks (tenant_id, status, priority)
    WHERE status IN ('pending', 'assigned') AND deleted_at IS NULL;
CREATE INDEX idx_tasks_tenant_id ON tasks (tenant_id);
CREATE INDEX idx_tasks_status ON tasks (status)
    WHERE status NOT IN ('completed', 'failed', 'cancelled') AND deleted_at IS NULL;
CREATE INDEX idx_tasks_assigned_to ON tasks (assigned_to) WHERE assigned_to IS NOT NULL AND deleted_at IS NULL;
CREATE INDEX idx_tasks_created_by ON tasks (created_by) WHERE deleted_at IS NULL;
CREATE INDEX idx_tasks_created_at ON tasks (created_at DESC);
