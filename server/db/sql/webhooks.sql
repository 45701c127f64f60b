-- Webhooks (migration 0030; docs/http.md, "Webhooks"). Every statement runs in a tenant
-- transaction, so the tables' tenant policy scopes it.

-- name: notify_and_emit
-- Workspace events, in the change's own transaction and one round trip, in order: each one's
-- NOTIFY ($1) and, where its type $3 is one webhooks subscribe to (else null), its webhook in
-- workspace $2 with data $4 (tandem_webhook_emit, the one writer of the outbox).
SELECT pg_notify('tandem', e.payload),
       CASE WHEN e.kind IS NOT NULL THEN tandem_webhook_emit(e.workspace_id, e.kind, e.data, NULL) END
FROM unnest($1::text[], $2::uuid[], $3::text[], $4::jsonb[]) AS e(payload, workspace_id, kind, data);

-- name: webhook_create
INSERT INTO webhook_endpoints (tenant_id, workspace_id, url, secret, event_types, created_by)
VALUES (current_tenant_id(), $1, $2, $3, $4::text[], $5)
RETURNING id, workspace_id, url, event_types, enabled, failures, disabled_reason, created_at;

-- name: webhook_list
SELECT id, workspace_id, url, event_types, enabled, failures, disabled_reason, created_at
  FROM webhook_endpoints WHERE workspace_id = $1 ORDER BY created_at, id;

-- name: webhook_get
SELECT id, workspace_id, url, event_types, enabled, failures, disabled_reason, created_at
  FROM webhook_endpoints WHERE id = $1 AND workspace_id = $2;

-- name: webhook_delete
DELETE FROM webhook_endpoints WHERE id = $1 AND workspace_id = $2 RETURNING id;

-- name: webhook_deliveries
-- An endpoint's deliveries, newest event first, from before event $2 (NULL: the newest).
SELECT d.event_id, o.type, d.attempt, d.status, d.next_attempt_at, d.last_status_code, d.last_error,
       d.delivered_at, o.created_at
  FROM webhook_deliveries d JOIN webhook_outbox o ON o.id = d.event_id
 WHERE d.endpoint_id = $1 AND ($2::bigint IS NULL OR d.event_id < $2)
 ORDER BY d.event_id DESC
 LIMIT $3;

-- name: webhook_sweep
-- Retention: at most $2 events of every tenant that happened before $1 and that no endpoint
-- waits for any more, with their deliveries (migration 0030). The count deleted.
SELECT sweep_webhook_outbox($1, $2);

-- name: webhook_due_tenants
SELECT t AS tenant_id FROM tenants_with_due_webhooks($1) AS t;

-- name: webhook_claim
-- Lease, per enabled endpoint whose first undelivered event is due and free, a run of its first
-- undelivered events (at most $4 per endpoint, $1 in all; past the first, only events never
-- tried), to be sent in event order. A run is kept only as an unbroken prefix from that first
-- event: a row another claim holds (SKIP LOCKED) or leased meanwhile (the lease checks stand on
-- `d`, so they are rechecked under FOR UPDATE) ends its endpoint's run there, so no event is
-- sent while an earlier one to its endpoint is undelivered or in flight elsewhere. Marking the
-- events claimed ends their debounce; payloads are read from that update, after any debounce
-- that committed first.
WITH runs AS (
    -- Each enabled endpoint's first $4 undelivered events, read in order from the partial index.
    SELECT r.id, r.endpoint_id, r.status, r.next_attempt_at, r.leased_until, r.rn
      FROM webhook_endpoints e
     CROSS JOIN LATERAL (
           SELECT d.id, d.endpoint_id, d.status, d.next_attempt_at, d.leased_until,
                  row_number() OVER (ORDER BY d.event_id) AS rn
             FROM webhook_deliveries d
            WHERE d.endpoint_id = e.id AND d.status IN ('pending', 'failed')
            ORDER BY d.event_id
            LIMIT $4
           ) r
     WHERE e.enabled
), picked AS (
    SELECT o.id, o.rn
      FROM runs o JOIN runs h ON h.endpoint_id = o.endpoint_id AND h.rn = 1
     WHERE h.next_attempt_at <= now() AND (h.leased_until IS NULL OR h.leased_until <= now())
       AND (o.rn = 1 OR o.status = 'pending')
), locked AS (
    SELECT d.id, d.endpoint_id, d.event_id, p.rn
      FROM webhook_deliveries d JOIN picked p ON p.id = d.id
     WHERE d.status IN ('pending', 'failed') AND d.next_attempt_at <= now()
       AND (d.leased_until IS NULL OR d.leased_until <= now())
     ORDER BY p.rn, d.next_attempt_at
     LIMIT $1
       FOR UPDATE OF d SKIP LOCKED
), due AS (
    SELECT l.id, l.event_id FROM locked l
     WHERE l.rn = (SELECT count(*) FROM locked k WHERE k.endpoint_id = l.endpoint_id AND k.rn <= l.rn)
), event_rows AS (
    -- Locked in id order: two nodes claiming other endpoints' deliveries of the same events
    -- wait for each other instead of deadlocking.
    SELECT o.id FROM webhook_outbox o
     WHERE o.id IN (SELECT due.event_id FROM due)
     ORDER BY o.id
       FOR UPDATE OF o
), events AS (
    UPDATE webhook_outbox o SET claimed = true
      FROM event_rows r
     WHERE o.id = r.id
    RETURNING o.id, o.type, o.payload, o.created_at
)
UPDATE webhook_deliveries d
   SET leased_until = now() + make_interval(secs => $2), lease_token = $3
  FROM due, events ev, webhook_endpoints e
 WHERE d.id = due.id AND ev.id = d.event_id AND e.id = d.endpoint_id
RETURNING d.id, d.endpoint_id, d.event_id, d.attempt, e.url, e.secret, ev.type, ev.payload, ev.created_at;

-- name: webhook_release
-- Leased deliveries not sent (an earlier one of their run failed, or the lease ran short):
-- claimable again at once, no attempt counted.
UPDATE webhook_deliveries SET leased_until = NULL, lease_token = NULL
 WHERE id = ANY ($1::bigint[]) AND lease_token = $2;

-- name: webhook_delivered
WITH done AS (
    UPDATE webhook_deliveries
       SET status = 'delivered', attempt = attempt + 1, last_status_code = $3, last_error = NULL,
           delivered_at = now(), leased_until = NULL, lease_token = NULL
     WHERE id = $1 AND lease_token = $2
    RETURNING endpoint_id
)
UPDATE webhook_endpoints e SET failures = 0 FROM done WHERE e.id = done.endpoint_id AND e.failures <> 0;

-- name: webhook_failed
-- A failed attempt: retried at $5 ('failed'), or given up on ('dead' when $6); the endpoint's run
-- of failures grows, and reaching $7 disables it.
WITH done AS (
    UPDATE webhook_deliveries
       SET status = CASE WHEN $6::boolean THEN 'dead' ELSE 'failed' END, attempt = attempt + 1,
           last_status_code = $3, last_error = $4, next_attempt_at = $5,
           leased_until = NULL, lease_token = NULL
     WHERE id = $1 AND lease_token = $2
    RETURNING endpoint_id
)
UPDATE webhook_endpoints e
   SET failures = e.failures + 1,
       enabled = e.failures + 1 < $7,
       disabled_reason = CASE WHEN e.failures + 1 >= $7
                              THEN format('%s failed attempts in a row', e.failures + 1) END
  FROM done WHERE e.id = done.endpoint_id
RETURNING e.id, e.enabled;

-- name: webhook_workspace_live
SELECT EXISTS (SELECT 1 FROM workspaces w WHERE w.id = $1 AND w.deleted_at IS NULL);
