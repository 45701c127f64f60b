-- ============================================================================================
-- The agent registry (server/workspaces/agents.py, docs/protocol.md section 12.7)
-- Run as the application role inside tenant_transaction(): RLS shows the current tenant's agents
-- only. Every statement returning agents selects {agent} and binds the presence TTL (s) as $1.
-- ============================================================================================

-- name: agent_register
-- Register agent $2 of the current tenant, or update its name $3, kind $4, capabilities $5,
-- concurrency limit $6 and metadata $7 (a set status and the health counters stay); seen now.
INSERT INTO agents (tenant_id, agent_id, name, kind, capabilities, max_concurrent_tasks, metadata, last_seen_at)
VALUES (current_tenant_id(), $2, $3, $4, $5::text[], $6, $7::text::jsonb, CURRENT_TIMESTAMP)
ON CONFLICT (tenant_id, agent_id) DO UPDATE
SET name = EXCLUDED.name,
    kind = EXCLUDED.kind,
    capabilities = EXCLUDED.capabilities,
    max_concurrent_tasks = EXCLUDED.max_concurrent_tasks,
    metadata = EXCLUDED.metadata,
    last_seen_at = EXCLUDED.last_seen_at
RETURNING {agent};

-- name: agent_set_status
-- Set registered agent $2's status to $3; no row when it never registered.
UPDATE agents SET status = $3
WHERE agent_id = $2
RETURNING {agent};

-- name: agent_list
-- Agents of the current tenant with capability $2 and listed status in $3 (null: any), by agent id; at most $4.
SELECT {agent}
FROM agents
WHERE ($2::text IS NULL OR capabilities @> ARRAY[$2::text])
  AND ($3::text[] IS NULL OR agent_listed_status(status, last_seen_at, $1, CURRENT_TIMESTAMP) = ANY($3::text[]))
ORDER BY agent_id
LIMIT $4;

-- name: agent_seen
-- The presence heartbeat: registered agents $1 of the current tenant have a connection on this node now.
UPDATE agents SET last_seen_at = CURRENT_TIMESTAMP
WHERE agent_id = ANY($1::text[]);

-- name: agent_capabilities_missing
-- Which of capabilities $1 no registered agent of the current tenant declares.
SELECT c FROM unnest($1::text[]) AS c
WHERE NOT EXISTS (SELECT 1 FROM agents WHERE capabilities @> ARRAY[c]);
