-- migrate:up
-- Audit rows for writes to the main tables. Trigger arguments: the column whose value is the
-- audited record's id (a uuid), then any columns never copied into audit_log.
--   NOTES 6: SECURITY DEFINER (the app cannot write audit_log itself) with a pinned
--            search_path and qualified names: no temp table or schema can take the rows.
--   NOTES 13: a column list, so id and changed_at take their defaults.
--   NOTES 14: settings read as '' after any transaction-local set_config; '' means unset.
--   NOTES 16: the actor comes from app.user_id (app.current_user is a syntax error to SET).
--   NOTES 22: document content is never copied (changed_fields still says it changed).
CREATE FUNCTION audit_trigger_function() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
DECLARE
    key_column text := COALESCE(TG_ARGV[0], 'id');
    old_row jsonb;
    new_row jsonb;
    fields text[];
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_row := pg_catalog.to_jsonb(OLD);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_row := pg_catalog.to_jsonb(NEW);
    END IF;
    IF TG_OP = 'UPDATE' THEN
        SELECT pg_catalog.array_agg(n.key ORDER BY n.key) INTO fields
          FROM pg_catalog.jsonb_each(new_row) AS n
         WHERE n.value IS DISTINCT FROM old_row -> n.key;
    END IF;
    FOR i IN 1 .. TG_NARGS - 1 LOOP
        old_row := old_row - TG_ARGV[i];
        new_row := new_row - TG_ARGV[i];
    END LOOP;

    INSERT INTO public.audit_log (
        tenant_id, table_name, record_id, action, old_data, new_data, changed_fields,
        changed_by, ip_address, user_agent
    ) VALUES (
        (COALESCE(new_row, old_row) ->> 'tenant_id')::uuid,
        TG_TABLE_NAME,
        (COALESCE(new_row, old_row) ->> key_column)::uuid,
        TG_OP,
        old_row,
        new_row,
        fields,
        COALESCE(NULLIF(pg_catalog.current_setting('app.user_id', true), ''), 'system'),
        NULLIF(pg_catalog.current_setting('app.client_ip', true), '')::inet,
        NULLIF(pg_catalog.current_setting('app.user_agent', true), '')
    );
    RETURN NULL;
END;
$$;

REVOKE ALL ON FUNCTION audit_trigger_function() FROM PUBLIC;

CREATE TRIGGER audit_tasks AFTER INSERT OR UPDATE OR DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION audit_trigger_function('id');

CREATE TRIGGER audit_task_delegations AFTER INSERT OR UPDATE OR DELETE ON task_delegations
    FOR EACH ROW EXECUTE FUNCTION audit_trigger_function('id');

CREATE TRIGGER audit_workflows AFTER INSERT OR UPDATE OR DELETE ON workflows
    FOR EACH ROW EXECUTE FUNCTION audit_trigger_function('id');

-- Activity stamps (a workspace's last_activity_at, a member's last_seen_at) move whenever an
-- agent comes back; an update that changes nothing else is not audited. As for documents
-- below, the WHEN clause lists every other column: a column added later must be added here.
CREATE TRIGGER audit_workspaces AFTER INSERT OR DELETE ON workspaces
    FOR EACH ROW EXECUTE FUNCTION audit_trigger_function('id');

CREATE TRIGGER audit_workspaces_update AFTER UPDATE ON workspaces
    FOR EACH ROW
    WHEN ((OLD.id, OLD.tenant_id, OLD.name, OLD.type, OLD.owner_id, OLD.visibility, OLD.state,
           OLD.state_version, OLD.config, OLD.max_members, OLD.created_at, OLD.deleted_at)
          IS DISTINCT FROM
          (NEW.id, NEW.tenant_id, NEW.name, NEW.type, NEW.owner_id, NEW.visibility, NEW.state,
           NEW.state_version, NEW.config, NEW.max_members, NEW.created_at, NEW.deleted_at))
    EXECUTE FUNCTION audit_trigger_function('id');

-- A member row has no id of its own: its workspace's id is the record id.
CREATE TRIGGER audit_workspace_members AFTER INSERT OR DELETE ON workspace_members
    FOR EACH ROW EXECUTE FUNCTION audit_trigger_function('workspace_id');

CREATE TRIGGER audit_workspace_members_update AFTER UPDATE ON workspace_members
    FOR EACH ROW
    WHEN ((OLD.workspace_id, OLD.agent_id, OLD.tenant_id, OLD.role, OLD.permissions, OLD.joined_at,
           OLD.member_state)
          IS DISTINCT FROM
          (NEW.workspace_id, NEW.agent_id, NEW.tenant_id, NEW.role, NEW.permissions, NEW.joined_at,
           NEW.member_state))
    EXECUTE FUNCTION audit_trigger_function('workspace_id');

CREATE TRIGGER audit_documents AFTER INSERT OR DELETE ON shared_documents
    FOR EACH ROW EXECUTE FUNCTION audit_trigger_function('id', 'content');

-- NOTES 22: every CRDT write bumps head_seq (and may store content, version, updated_by): those
-- updates are not audited. The WHEN clause compares every other column without calling the
-- function or reading the content.
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

-- migrate:down
DROP TRIGGER audit_documents_update ON shared_documents;
DROP TRIGGER audit_documents ON shared_documents;
DROP TRIGGER audit_workspace_members_update ON workspace_members;
DROP TRIGGER audit_workspace_members ON workspace_members;
DROP TRIGGER audit_workspaces_update ON workspaces;
DROP TRIGGER audit_workspaces ON workspaces;
DROP TRIGGER audit_workflows ON workflows;
DROP TRIGGER audit_task_delegations ON task_delegations;
DROP TRIGGER audit_tasks ON tasks;
DROP FUNCTION audit_trigger_function();
