-- migrate:up
-- Storage and planner settings beyond those each table was created with (fillfactor and the
-- first autovacuum settings of tasks and workflow_executions), extended statistics, comments.
-- Partitioned tables take no storage parameters (NOTES 18): audit_log has none.
ALTER TABLE tasks SET (autovacuum_vacuum_cost_limit = 1000);
ALTER TABLE workflow_executions SET (autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE document_operations SET (
    autovacuum_vacuum_scale_factor = 0.1,
    autovacuum_analyze_scale_factor = 0.05
);

CREATE STATISTICS tasks_status_priority ON status, priority FROM tasks;
CREATE STATISTICS workflows_tenant_type ON tenant_id, type FROM workflows;

COMMENT ON TABLE tasks IS 'Core task management table supporting delegation and distributed execution';
COMMENT ON TABLE task_delegations IS 'Delegation history and chain of responsibility of each task';
COMMENT ON TABLE workflows IS 'Workflow definitions for multi-agent orchestration';
COMMENT ON TABLE workflow_executions IS 'Individual workflow runs and their state';
COMMENT ON TABLE workspaces IS 'Shared collaboration spaces for agent coordination';
COMMENT ON TABLE workspace_members IS 'Workspace membership, roles and per-member state';
COMMENT ON TABLE shared_documents IS 'Collaborative documents with CRDT support';
COMMENT ON TABLE document_operations IS 'Append-only CRDT updates of each document, numbered per document';
COMMENT ON TABLE document_snapshots IS 'Encoded CRDT state of a document up to an operation sequence number';
COMMENT ON TABLE audit_log IS 'Audit trail written by audit_trigger_function, partitioned by month';
COMMENT ON TABLE conflict_resolutions IS 'Conflicts met and how they were resolved';
COMMENT ON COLUMN shared_documents.head_seq IS
    'Sequence number of the document''s last operation; writers increment it under the row lock';
COMMENT ON COLUMN document_operations.sequence_number IS
    'Per-document operation number, taken from shared_documents.head_seq in the same transaction';
COMMENT ON COLUMN document_operations.update IS 'Raw CRDT update (binary)';
COMMENT ON COLUMN document_snapshots.sequence_number IS 'Last operation sequence number included in the state';
COMMENT ON COLUMN document_snapshots.state IS 'Encoded CRDT state (binary)';
COMMENT ON FUNCTION current_tenant_id() IS 'Tenant of the current transaction (app.current_tenant), NULL when unset';
COMMENT ON FUNCTION tandem_maintain_partitions() IS
    'Creates this and next month''s audit_log partitions; idempotent, safe to call concurrently';

-- migrate:down
COMMENT ON FUNCTION tandem_maintain_partitions() IS NULL;
COMMENT ON FUNCTION current_tenant_id() IS NULL;
COMMENT ON COLUMN document_snapshots.state IS NULL;
COMMENT ON COLUMN document_snapshots.sequence_number IS NULL;
COMMENT ON COLUMN document_operations.update IS NULL;
COMMENT ON COLUMN document_operations.sequence_number IS NULL;
COMMENT ON COLUMN shared_documents.head_seq IS NULL;
COMMENT ON TABLE conflict_resolutions IS NULL;
COMMENT ON TABLE audit_log IS NULL;
COMMENT ON TABLE document_snapshots IS NULL;
COMMENT ON TABLE document_operations IS NULL;
COMMENT ON TABLE shared_documents IS NULL;
COMMENT ON TABLE workspace_members IS NULL;
COMMENT ON TABLE workspaces IS NULL;
COMMENT ON TABLE workflow_executions IS NULL;
COMMENT ON TABLE workflows IS NULL;
COMMENT ON TABLE task_delegations IS NULL;
COMMENT ON TABLE tasks IS NULL;
DROP STATISTICS workflows_tenant_type;
DROP STATISTICS tasks_status_priority;
ALTER TABLE document_operations RESET (autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor);
ALTER TABLE workflow_executions RESET (autovacuum_analyze_scale_factor);
ALTER TABLE tasks RESET (autovacuum_vacuum_cost_limit);
