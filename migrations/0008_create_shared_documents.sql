-- migrate:up
-- Collaborative documents. `head_seq` is the document's operation counter (NOTES 12): a writer
-- takes `UPDATE shared_documents SET head_seq = head_seq + n ... RETURNING head_seq` under the
-- row lock and numbers its operations up to it in the same transaction, so per-document
-- sequence numbers have no gaps and become visible in order.
CREATE TABLE shared_documents (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id uuid,
    tenant_id uuid NOT NULL,

    -- Document metadata
    title varchar(255) NOT NULL CONSTRAINT doc_title_not_empty CHECK (btrim(title, E' \t\r\n') <> ''),
    content text,
    content_type varchar(50) DEFAULT 'text'
        CONSTRAINT shared_documents_content_type_check
        CHECK (content_type IN ('text', 'markdown', 'json', 'yaml', 'code')),
    language varchar(50),

    -- Version control
    version integer DEFAULT 1 CONSTRAINT doc_version_positive CHECK (version > 0),
    head_seq bigint NOT NULL DEFAULT 0 CONSTRAINT head_seq_not_negative CHECK (head_seq >= 0),
    is_locked boolean DEFAULT false,
    locked_by varchar(255),
    locked_at timestamptz,
    lock_expires_at timestamptz,

    -- Tracking
    created_by varchar(255) NOT NULL,
    updated_by varchar(255),
    created_at timestamptz DEFAULT CURRENT_TIMESTAMP,
    updated_at timestamptz DEFAULT CURRENT_TIMESTAMP,
    deleted_at timestamptz,

    -- Metadata
    metadata jsonb DEFAULT '{}' NOT NULL,

    -- NOTES 8: target of operations' and snapshots' composite keys; a document sits in a
    -- workspace of its own tenant.
    CONSTRAINT shared_documents_id_tenant_id_key UNIQUE (id, tenant_id),
    CONSTRAINT shared_documents_workspace_id_fkey FOREIGN KEY (workspace_id, tenant_id)
        REFERENCES workspaces (id, tenant_id) ON DELETE CASCADE,
    CONSTRAINT valid_metadata CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT lock_consistency CHECK (
        (is_locked = false AND locked_by IS NULL AND locked_at IS NULL AND lock_expires_at IS NULL) OR
        (is_locked = true AND locked_by IS NOT NULL AND locked_at IS NOT NULL AND lock_expires_at IS NOT NULL)
    )
);

CREATE INDEX idx_documents_workspace_id ON shared_documents (workspace_id) WHERE deleted_at IS NULL;
CREATE INDEX idx_documents_tenant_id ON shared_documents (tenant_id);
CREATE INDEX idx_documents_created_by ON shared_documents (created_by);
CREATE INDEX idx_documents_updated_at ON shared_documents (updated_at DESC) WHERE deleted_at IS NULL;

CREATE TRIGGER update_documents_updated_at
    BEFORE UPDATE ON shared_documents
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

ALTER TABLE shared_documents ENABLE ROW LEVEL SECURITY;
ALTER TABLE shared_documents FORCE ROW LEVEL SECURITY;

CREATE POLICY documents_tenant_isolation ON shared_documents
    FOR ALL
    USING (tenant_id = current_tenant_id())
    WITH CHECK (tenant_id = current_tenant_id());

GRANT SELECT, INSERT, UPDATE, DELETE ON shared_documents TO tandem_app;

-- migrate:down
REVOKE SELECT, INSERT, UPDATE, DELETE ON shared_documents FROM tandem_app;
DROP POLICY documents_tenant_isolation ON shared_documents;
ALTER TABLE shared_documents NO FORCE ROW LEVEL SECURITY;
ALTER TABLE shared_documents DISABLE ROW LEVEL SECURITY;
DROP TRIGGER update_documents_updated_at ON shared_documents;
DROP TABLE shared_documents;
