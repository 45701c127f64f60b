-- migrate:up
-- CRDT operations of a document, append-only for the app. NOTES 12: no global sequence.
-- `sequence_number` is per document, taken from shared_documents.head_seq under the document's
-- row lock in the writer's transaction; the unique key rejects a number used twice.
-- `update` is the raw CRDT update; operation_data and vector_clock are optional metadata.
CREATE TABLE document_operations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    document_id uuid NOT NULL,
    tenant_id uuid NOT NULL,

    -- Operation details
    agent_id varchar(255) NOT NULL,
    operation_type varchar(50) NOT NULL
        CONSTRAINT document_operations_operation_type_check
        CHECK (operation_type IN ('insert', 'delete', 'update', 'move', 'format')),
    operation_data jsonb NOT NULL DEFAULT '{}',
    update bytea NOT NULL,

    -- CRDT metadata
    vector_clock jsonb NOT NULL DEFAULT '{}',
    sequence_number bigint NOT NULL CONSTRAINT sequence_number_positive CHECK (sequence_number > 0),

    -- Timing
    timestamp timestamptz DEFAULT CURRENT_TIMESTAMP,

    -- Conflict resolution
    parent_operation_id uuid,
    is_applied boolean DEFAULT false,

    -- NOTES 8: an operation belongs to a document of its own tenant, and its parent operation
    -- to the same tenant.
    CONSTRAINT document_operations_id_tenant_id_key UNIQUE (id, tenant_id),
    CONSTRAINT document_operations_document_id_fkey FOREIGN KEY (document_id, tenant_id)
        REFERENCES shared_documents (id, tenant_id) ON DELETE CASCADE,
    CONSTRAINT document_operations_parent_operation_id_fkey FOREIGN KEY (parent_operation_id, tenant_id)
        REFERENCES document_operations (id, tenant_id),
    -- NOTES 12: one operation per number per document. Its index also serves "operations of a
    -- document after seq N" (it replaces the seed's idx_operations_sequence and, as its
    -- prefix, idx_operations_document_id).
    CONSTRAINT document_operations_document_id_sequence_number_key UNIQUE (document_id, sequence_number),
    CONSTRAINT valid_operation_data CHECK (jsonb_typeof(operation_data) = 'object'),
    CONSTRAINT valid_vector_clock CHECK (jsonb_typeof(vector_clock) = 'object')
);

CREATE INDEX idx_operations_tenant_id ON document_operations (tenant_id);
CREATE INDEX idx_operations_timestamp ON document_operations (document_id, timestamp);
CREATE INDEX idx_operations_not_applied ON document_operations (document_id) WHERE is_applied = false;
CREATE INDEX idx_operations_parent_id ON document_operations (parent_operation_id)
    WHERE parent_operation_id IS NOT NULL;

ALTER TABLE document_operations ENABLE ROW LEVEL SECURITY;
ALTER TABLE document_operations FORCE ROW LEVEL SECURITY;

CREATE POLICY operations_tenant_isolation ON document_operations
    FOR ALL
    USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id());

-- Append-only for the app: no UPDATE, no DELETE (a document's deletion cascades).
GRANT SELECT, INSERT ON document_operations TO tandem_app;

-- migrate:down
REVOKE SELECT, INSERT ON document_operations FROM tandem_app;
DROP POLICY operations_tenant_isolation ON document_operations;
ALTER TABLE document_operations NO FORCE ROW LEVEL SECURITY;
ALTER TABLE document_operations DISABLE ROW LEVEL SECURITY;
DROP TABLE document_operations;
