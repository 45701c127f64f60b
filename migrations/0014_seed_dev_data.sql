-- migrate:up
-- Sample rows for development and test databases only (name ending in _dev or _test), with
-- fixed ids so that the down removes exactly these rows. Applied before the audit triggers,
-- so neither the seed nor its removal leaves audit rows behind.
DO $$
DECLARE
    seed_tenant uuid := '00000000-0000-0000-0000-000000000001';
BEGIN
    IF current_database() LIKE '%\_dev' OR current_database() LIKE '%\_test' THEN
        -- RLS is forced on the owner too: act as the seed tenant.
        PERFORM set_config('app.current_tenant', seed_tenant::text, true);

        INSERT INTO workflows (id, tenant_id, name, type, created_by, agents, steps)
        VALUES (
            '00000000-0000-0000-0001-000000000001',
            seed_tenant,
            'Test Code Review Workflow',
            'collaborative',
            'test-coordinator',
            '{"analyzer": "code-analyzer-agent", "reviewer": "code-reviewer-agent"}'::jsonb,
            '[
                {"id": "analyze", "agent": "analyzer", "action": "analyze_code"},
                {"id": "review", "agent": "reviewer", "action": "review_findings", "depends_on": ["analyze"]}
            ]'::jsonb
        );

        INSERT INTO workspaces (id, tenant_id, name, type, owner_id)
        VALUES ('00000000-0000-0000-0002-000000000001', seed_tenant, 'Test Collaboration Space', 'general', 'test-agent-1');

        INSERT INTO workspace_members (workspace_id, agent_id, tenant_id, role)
        VALUES
            ('00000000-0000-0000-0002-000000000001', 'test-agent-1', seed_tenant, 'owner'),
            ('00000000-0000-0000-0002-000000000001', 'test-agent-2', seed_tenant, 'member');

        INSERT INTO tasks (id, tenant_id, type, title, created_by, assigned_to, priority, status)
        VALUES
            ('00000000-0000-0000-0003-000000000001', seed_tenant, 'code_review', 'Review authentication module',
             'test-agent-1', 'test-agent-2', 'high', 'assigned'),
            ('00000000-0000-0000-0003-000000000002', seed_tenant, 'testing', 'Write unit tests for API',
             'test-agent-1', NULL, 'normal', 'pending');
    END IF;
END
$$;

-- migrate:down
DO $$
DECLARE
    seed_tenant uuid := '00000000-0000-0000-0000-000000000001';
BEGIN
    IF current_database() LIKE '%\_dev' OR current_database() LIKE '%\_test' THEN
        PERFORM set_config('app.current_tenant', seed_tenant::text, true);
        DELETE FROM tasks
         WHERE id IN ('00000000-0000-0000-0003-000000000001', '00000000-0000-0000-0003-000000000002');
        DELETE FROM workspace_members
         WHERE workspace_id = '00000000-0000-0000-0002-000000000001'
           AND agent_id IN ('test-agent-1', 'test-agent-2');
        DELETE FROM workspaces WHERE id = '00000000-0000-0000-0002-000000000001';
        DELETE FROM workflows WHERE id = '00000000-0000-0000-0001-000000000001';
    END IF;
END
$$;
