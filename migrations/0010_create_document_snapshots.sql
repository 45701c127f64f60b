-- migrate:up
-- Encoded CRDT state of a document including every operation up to `sequence_number`. A
-- loader reads the latest snapshot at or before seq N, then the operations after it:
--   SELECT ... WHERE document_id = $1 AND sequence_number <= $2
--   ORDER BY sequence_number DESC LIMIT 1
-- which the unique key's index answers with one backward index scan.
CREATE TABLE document_snapshots (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL,
    document_id uuid NOT NULL,
    sequence_number bigint NOT NULL CONSTRAINT snapshot_sequence_not_negative CHECK (sequence_number >= 0),
    state bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,

    -- NOTES 8: a snapshot belongs to a document of its own tenant.
    CONSTRAINT document_snapshots_document_id_fkey FOREIGN KEY (document_id, tenant_id)
        REFERENCES shared_documents (id, tenant_id) ON DELETE CASCADE,
    CONSTRAINT document_snapshots_document_id_sequence_number_key UNIQUE (document_id, sequence_number)
);

CREATE INDEX idx_snapshots_tenant_id ON document_snapshots (tenant_id);

ALTER TABLE document_snapshots ENABLE ROW LEVEL SECURITY;
ALTER TABLE document_snapshots FORCE ROW LEVEL SECURITY;

CREATE POLICY snapshots_tenant_isolation ON document_snapshots
    FOR ALL
    USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id());

-- Written once, pruned by compaction: no UPDATE.
GRANT SELECT, INSERT, DELETE ON document_snapshots TO tandem_app;

-- migrate:down
REVOKE SELECT, INSERT, DELETE ON document_snapshots FROM tandem_app;
DROP POLICY snapshots_tenant_isolation ON document_snapshots;
ALTER TABLE document_snapshots NO FORCE ROW LEVEL SECURITY;
ALTER TABLE document_snapshots DISABLE ROW LEVEL SECURITY;
DROP TABLE document_snapshots;
