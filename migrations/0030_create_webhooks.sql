-- migrate:up
-- Signed webhooks from a durable outbox (docs/http.md, "Webhooks"). A change writes its event to
-- `webhook_outbox` in its own transaction, through one function (`tandem_webhook_emit`), which
-- also adds one `webhook_deliveries` row per enabled endpoint of the workspace that asked for the
-- event's type: nothing is sent that did not commit, and nothing committed is lost. Document
-- changes are written by a statement trigger on the log (every append path reaches it) and
-- debounced: a document has at most one `document.changed` event that no node has claimed yet,
-- and a later change moves that event's `seq` forward instead of adding another.
CREATE TABLE webhook_endpoints (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL,
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    url text NOT NULL,
    secret text NOT NULL,  -- `whsec_` + base64 key, as the Standard Webhooks libraries take it
    event_types text[] NOT NULL,
    enabled boolean NOT NULL DEFAULT true,
    failures integer NOT NULL DEFAULT 0,  -- failed attempts in a row; reset by a delivery
    disabled_reason text,
    created_by varchar(255),
    created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT webhook_url_http CHECK (url ~ '^https?://' AND octet_length(url) <= 2048),
    CONSTRAINT webhook_event_types_known CHECK (
        cardinality(event_types) BETWEEN 1 AND 16
        AND event_types <@ ARRAY['document.changed', 'task.changed', 'state.changed', 'lock.acquired',
                                 'lock.renewed', 'lock.released', 'member.changed',
                                 'workflow.execution.changed']::text[]),
    CONSTRAINT webhook_failures_not_negative CHECK (failures >= 0)
);

CREATE INDEX idx_webhook_endpoints_workspace ON webhook_endpoints (workspace_id) WHERE enabled;

CREATE TABLE webhook_outbox (
    id bigserial PRIMARY KEY,  -- the event id: `webhook-id`, and the order per endpoint
    tenant_id uuid NOT NULL,
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    type text NOT NULL,
    document_id uuid,  -- set for `document.changed` (its debounce key)
    payload jsonb NOT NULL,
    claimed boolean NOT NULL DEFAULT false,  -- a node took a delivery of it: no longer debounced
    created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT webhook_payload_object CHECK (jsonb_typeof(payload) = 'object')
);

-- The debounce: one unclaimed `document.changed` per document.
CREATE UNIQUE INDEX idx_webhook_outbox_debounce ON webhook_outbox (document_id, type)
    WHERE NOT claimed AND document_id IS NOT NULL;

CREATE TABLE webhook_deliveries (
    id bigserial PRIMARY KEY,
    tenant_id uuid NOT NULL,
    endpoint_id uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id bigint NOT NULL REFERENCES webhook_outbox (id) ON DELETE CASCADE,
    attempt integer NOT NULL DEFAULT 0,  -- attempts made (recorded after each)
    status text NOT NULL DEFAULT 'pending',
    next_attempt_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    leased_until timestamptz,  -- a node is sending it until then (a lease survives no crash)
    lease_token uuid,          -- which claim holds the lease: only it records the outcome
    last_status_code integer,
    last_error text,
    delivered_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT webhook_delivery_once UNIQUE (endpoint_id, event_id),
    CONSTRAINT webhook_delivery_status_known CHECK (status IN ('pending', 'delivered', 'failed', 'dead')),
    CONSTRAINT webhook_delivery_attempt_not_negative CHECK (attempt >= 0)
);

-- Each endpoint's undelivered events in order (the claim takes the first of each).
CREATE INDEX idx_webhook_deliveries_open ON webhook_deliveries (endpoint_id, event_id)
    WHERE status IN ('pending', 'failed');
CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries (tenant_id, next_attempt_at)
    WHERE status IN ('pending', 'failed');
CREATE INDEX idx_webhook_deliveries_event ON webhook_deliveries (event_id);

ALTER TABLE webhook_endpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_endpoints FORCE ROW LEVEL SECURITY;
ALTER TABLE webhook_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_outbox FORCE ROW LEVEL SECURITY;
ALTER TABLE webhook_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_deliveries FORCE ROW LEVEL SECURITY;

CREATE POLICY webhook_endpoints_tenant_isolation ON webhook_endpoints
    FOR ALL USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());
CREATE POLICY webhook_outbox_tenant_isolation ON webhook_outbox
    FOR ALL USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());
CREATE POLICY webhook_deliveries_tenant_isolation ON webhook_deliveries
    FOR ALL USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

-- What `tenants_with_due_webhooks` (below, run as the owner) may see across tenants: undelivered
-- deliveries and enabled endpoints. It returns tenant ids only; the owner changes nothing.
CREATE POLICY webhook_deliveries_due_select ON webhook_deliveries
    FOR SELECT TO tandem_owner USING (status IN ('pending', 'failed'));
CREATE POLICY webhook_endpoints_due_select ON webhook_endpoints
    FOR SELECT TO tandem_owner USING (enabled);

GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_endpoints TO tandem_app;
GRANT SELECT, INSERT, UPDATE ON webhook_outbox TO tandem_app;
GRANT SELECT, INSERT, UPDATE ON webhook_deliveries TO tandem_app;
GRANT USAGE ON SEQUENCE webhook_outbox_id_seq, webhook_deliveries_id_seq TO tandem_app;

-- The one writer of the outbox, in the caller's transaction and tenant: the event for every
-- enabled endpoint of `p_workspace` that asked for `p_type` (none: nothing is written). With
-- `p_document`, the document's unclaimed event of that type takes the new payload instead.
-- Returns the event id, or NULL when no endpoint wants it.
CREATE FUNCTION tandem_webhook_emit(p_workspace uuid, p_type text, p_payload jsonb, p_document uuid DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public
AS $$
DECLARE
    v_event bigint;
    v_tenant uuid;  -- the workspace's, from its endpoint (also when no tenant is set: an admin's COPY)
BEGIN
    SELECT e.tenant_id INTO v_tenant FROM webhook_endpoints e
     WHERE e.workspace_id = p_workspace AND e.enabled AND p_type = ANY (e.event_types)
     LIMIT 1;
    IF v_tenant IS NULL THEN
        RETURN NULL;
    END IF;
    IF p_document IS NOT NULL THEN
        UPDATE webhook_outbox o SET payload = p_payload
         WHERE o.document_id = p_document AND o.type = p_type AND NOT o.claimed
        RETURNING o.id INTO v_event;
    END IF;
    IF v_event IS NULL THEN
        INSERT INTO webhook_outbox (tenant_id, workspace_id, type, document_id, payload)
        VALUES (v_tenant, p_workspace, p_type, p_document, p_payload)
        RETURNING id INTO v_event;
    END IF;
    INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_id)
    SELECT e.tenant_id, e.id, v_event
      FROM webhook_endpoints e
     WHERE e.workspace_id = p_workspace AND e.enabled AND p_type = ANY (e.event_types)
    ON CONFLICT ON CONSTRAINT webhook_delivery_once DO NOTHING;
    RETURN v_event;
END;
$$;
REVOKE ALL ON FUNCTION tandem_webhook_emit(uuid, text, jsonb, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tandem_webhook_emit(uuid, text, jsonb, uuid) TO tandem_app;

-- `document.changed` for each document an append statement wrote to, with its new head: once
-- per statement (a batch), and a single indexed probe when the tenant has no such endpoint.
CREATE FUNCTION tandem_webhook_documents_changed() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.enabled AND 'document.changed' = ANY (e.event_types)) THEN
        RETURN NULL;
    END IF;
    PERFORM tandem_webhook_emit(
                d.workspace_id, 'document.changed',
                jsonb_build_object('type', 'document.changed', 'workspace_id', d.workspace_id, 'doc_id', d.id,
                                   'seq', n.head),
                d.id)
       FROM (SELECT o.document_id, max(o.sequence_number) AS head FROM new_ops o GROUP BY o.document_id) n
       JOIN shared_documents d ON d.id = n.document_id
      WHERE d.workspace_id IS NOT NULL;
    RETURN NULL;
END;
$$;

CREATE TRIGGER webhook_documents_changed AFTER INSERT ON document_operations
    REFERENCING NEW TABLE AS new_ops
    FOR EACH STATEMENT EXECUTE FUNCTION tandem_webhook_documents_changed();

-- At most max_tenants tenants with a delivery due to an enabled endpoint. Runs as the owner (the
-- one step that crosses tenants) and returns ids only; each tenant's deliveries are then claimed
-- in that tenant's transaction.
CREATE FUNCTION tenants_with_due_webhooks(max_tenants integer)
    RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
    SELECT DISTINCT d.tenant_id
      FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.enabled
     WHERE d.status IN ('pending', 'failed') AND d.next_attempt_at <= now()
       AND (d.leased_until IS NULL OR d.leased_until <= now())
     LIMIT max_tenants
$$;
REVOKE ALL ON FUNCTION tenants_with_due_webhooks(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenants_with_due_webhooks(integer) TO tandem_app;

-- Retention: at most max_rows events of any tenant that happened before `before` and that no
-- endpoint still waits for (every delivery delivered or dead), oldest first, deleted with their
-- deliveries. Runs as the owner, which these policies let read and delete outbox rows (and see
-- the undelivered deliveries by the policy above); it returns a count only.
CREATE POLICY webhook_outbox_retention_select ON webhook_outbox FOR SELECT TO tandem_owner USING (true);
CREATE POLICY webhook_outbox_retention_delete ON webhook_outbox FOR DELETE TO tandem_owner USING (true);
CREATE FUNCTION sweep_webhook_outbox(before timestamptz, max_rows integer)
    RETURNS integer
    LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
    WITH gone AS (
        DELETE FROM public.webhook_outbox o
         WHERE o.id IN (SELECT x.id FROM public.webhook_outbox x
                         WHERE x.created_at < before
                           AND NOT EXISTS (SELECT 1 FROM public.webhook_deliveries d
                                            WHERE d.event_id = x.id AND d.status IN ('pending', 'failed'))
                         ORDER BY x.id
                         LIMIT max_rows)
        RETURNING 1)
    SELECT count(*)::integer FROM gone
$$;
REVOKE ALL ON FUNCTION sweep_webhook_outbox(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sweep_webhook_outbox(timestamptz, integer) TO tandem_app;

-- migrate:down
REVOKE EXECUTE ON FUNCTION sweep_webhook_outbox(timestamptz, integer) FROM tandem_app;
DROP FUNCTION sweep_webhook_outbox(timestamptz, integer);
DROP POLICY webhook_outbox_retention_delete ON webhook_outbox;
DROP POLICY webhook_outbox_retention_select ON webhook_outbox;
REVOKE EXECUTE ON FUNCTION tenants_with_due_webhooks(integer) FROM tandem_app;
DROP FUNCTION tenants_with_due_webhooks(integer);
DROP TRIGGER webhook_documents_changed ON document_operations;
DROP FUNCTION tandem_webhook_documents_changed();
REVOKE EXECUTE ON FUNCTION tandem_webhook_emit(uuid, text, jsonb, uuid) FROM tandem_app;
DROP FUNCTION tandem_webhook_emit(uuid, text, jsonb, uuid);
REVOKE USAGE ON SEQUENCE webhook_outbox_id_seq, webhook_deliveries_id_seq FROM tandem_app;
REVOKE SELECT, INSERT, UPDATE ON webhook_deliveries FROM tandem_app;
REVOKE SELECT, INSERT, UPDATE ON webhook_outbox FROM tandem_app;
REVOKE SELECT, INSERT, UPDATE, DELETE ON webhook_endpoints FROM tandem_app;
DROP POLICY webhook_endpoints_due_select ON webhook_endpoints;
DROP POLICY webhook_deliveries_due_select ON webhook_deliveries;
DROP TABLE webhook_deliveries;
DROP TABLE webhook_outbox;
DROP TABLE webhook_endpoints;
