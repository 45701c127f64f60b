-- The schema all migrations produce, dumped from PostgreSQL 18 by `tandem schema dump`. Do not edit.

CREATE TYPE public.delegation_type AS ENUM (
    'manual',
    'automatic',
    'failover',
    'load_balance'
);

CREATE TYPE public.member_role AS ENUM (
    'owner',
    'admin',
    'member',
    'viewer'
);

CREATE TYPE public.task_priority AS ENUM (
    'low',
    'normal',
    'high',
    'critical'
);

CREATE TYPE public.task_status AS ENUM (
    'pending',
    'assigned',
    'accepted',
    'rejected',
    'in_progress',
    'completed',
    'failed',
    'cancelled',
    'timeout'
);

CREATE TYPE public.workflow_status AS ENUM (
    'pending',
    'running',
    'paused',
    'completed',
    'failed',
    'cancelled',
    'timeout'
);

CREATE TYPE public.workflow_type AS ENUM (
    'sequential',
    'parallel',
    'conditional',
    'collaborative'
);

CREATE TYPE public.workspace_visibility AS ENUM (
    'private',
    'team',
    'public'
);

CREATE FUNCTION public.agent_listed_status(status text, last_seen_at timestamp with time zone, seen_within_s double precision, now timestamp with time zone) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT CASE
        WHEN status IN ('maintenance', 'error') THEN status
        WHEN last_seen_at > now - seen_within_s * interval '1 second' THEN 'active'
        ELSE 'inactive'
    END
$$;

CREATE FUNCTION public.audit_trigger_function() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'public'
    AS $$
DECLARE
    old_row jsonb;
    new_row jsonb;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_row := pg_catalog.to_jsonb(OLD);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_row := pg_catalog.to_jsonb(NEW);
    END IF;

    -- The arguments after the first are columns never copied ('{}' when none); changed_fields
    -- is computed over the whole rows, so it still names them when they changed.
    INSERT INTO public.audit_log (
        tenant_id, table_name, record_id, action, old_data, new_data, changed_fields,
        changed_by, ip_address, user_agent
    ) SELECT
        (COALESCE(new_row, old_row) ->> 'tenant_id')::uuid,
        TG_TABLE_NAME,
        (COALESCE(new_row, old_row) ->> COALESCE(TG_ARGV[0], 'id'))::uuid,
        TG_OP,
        old_row - TG_ARGV[1:TG_NARGS - 1],
        new_row - TG_ARGV[1:TG_NARGS - 1],
        CASE WHEN TG_OP = 'UPDATE' THEN
            (SELECT pg_catalog.array_agg(n.key ORDER BY n.key)
               FROM pg_catalog.jsonb_each(new_row) AS n
              WHERE n.value IS DISTINCT FROM old_row -> n.key)
        END,
        COALESCE(NULLIF(pg_catalog.current_setting('app.user_id', true), ''), 'system'),
        NULLIF(pg_catalog.current_setting('app.client_ip', true), '')::inet,
        NULLIF(pg_catalog.current_setting('app.user_agent', true), '');
    RETURN NULL;
END;
$$;

CREATE FUNCTION public.claim_agent_slot(capability text, seen_within_s double precision, exclude text) RETURNS TABLE(agent_id text, candidates bigint)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'public'
    SET enable_seqscan TO 'off'
    SET enable_bitmapscan TO 'off'
    AS $$
DECLARE
    tenant uuid := current_tenant_id();
    free text[];
    maxes integer[];
    holds boolean := coalesce(current_setting('tandem.holds_agent_slot', true), '') = 'yes';
    i integer;
    pass integer;
    open_tasks bigint;
BEGIN
    SELECT array_agg(a.agent_id ORDER BY a.load, a.agent_id), array_agg(a.max_concurrent_tasks ORDER BY a.load, a.agent_id)
      INTO free, maxes
      FROM (SELECT g.agent_id, g.max_concurrent_tasks, l.load
              FROM public.agents g
              CROSS JOIN LATERAL (
                  SELECT count(*) AS load
                    FROM (SELECT 1 FROM public.tasks t
                           WHERE t.tenant_id = g.tenant_id AND t.assigned_to = g.agent_id
                             AND t.status IN ('assigned', 'accepted', 'in_progress') AND t.deleted_at IS NULL
                           LIMIT g.max_concurrent_tasks) o) l
             WHERE g.tenant_id = tenant
               AND g.capabilities @> ARRAY[capability]
               AND public.agent_listed_status(g.status::text, g.last_seen_at, seen_within_s, CURRENT_TIMESTAMP) = 'active'
               AND (exclude IS NULL OR g.agent_id <> exclude)) a
     WHERE a.load < a.max_concurrent_tasks;
    IF free IS NULL THEN
        RETURN;
    END IF;
    FOR pass IN 1..2 LOOP
        FOR i IN 1..array_length(free, 1) LOOP
            IF pass = 1 THEN
                CONTINUE WHEN NOT pg_try_advisory_xact_lock(hashtextextended('tandem.agent_slot:' || tenant::text || ':' || free[i], 0));
            ELSIF holds THEN
                RETURN;
            ELSE
                PERFORM pg_advisory_xact_lock(hashtextextended('tandem.agent_slot:' || tenant::text || ':' || free[i], 0));
            END IF;
            holds := true;
            PERFORM set_config('tandem.holds_agent_slot', 'yes', true);
            -- A statement of its own: its snapshot is taken under the lock.
            SELECT count(*) INTO open_tasks
              FROM (SELECT 1 FROM public.tasks t
                     WHERE t.tenant_id = tenant AND t.assigned_to = free[i]
                       AND t.status IN ('assigned', 'accepted', 'in_progress') AND t.deleted_at IS NULL
                     LIMIT maxes[i]) o;
            IF open_tasks < maxes[i] THEN
                agent_id := free[i];
                candidates := array_length(free, 1);
                RETURN NEXT;
                RETURN;
            END IF;
        END LOOP;
    END LOOP;
END
$$;

CREATE FUNCTION public.current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT CASE
        WHEN pg_catalog.current_setting('app.current_tenant', true) OPERATOR(pg_catalog.=) ''
        THEN NULL
        ELSE pg_catalog.current_setting('app.current_tenant', true)::pg_catalog.uuid
    END
$$;

COMMENT ON FUNCTION public.current_tenant_id() IS 'Tenant of the current transaction (app.current_tenant), NULL when unset';

CREATE FUNCTION public.jsonb_merge_recursive(target jsonb, source jsonb) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO 'pg_catalog', 'public'
    AS $$
BEGIN
    RETURN CASE
        WHEN jsonb_typeof(target) = 'object' AND jsonb_typeof(source) = 'object'
        THEN (
            SELECT COALESCE(jsonb_object_agg(
                COALESCE(t.key, s.key),
                CASE
                    WHEN t.value IS NULL THEN s.value
                    WHEN s.value IS NULL THEN t.value
                    WHEN jsonb_typeof(t.value) = 'object' AND jsonb_typeof(s.value) = 'object'
                    THEN public.jsonb_merge_recursive(t.value, s.value)
                    ELSE s.value
                END
            ), '{}'::jsonb)
            FROM jsonb_each(target) t
            FULL OUTER JOIN jsonb_each(source) s ON t.key = s.key
        )
        ELSE source
    END;
END;
$$;

CREATE FUNCTION public.live_token_revocations() RETURNS TABLE(tenant_id uuid, agent_id character varying, jti uuid, revoked_before timestamp with time zone, expires_at timestamp with time zone)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'public'
    AS $$
BEGIN
    DELETE FROM public.token_revocations r WHERE r.expires_at < CURRENT_TIMESTAMP;
    RETURN QUERY
        SELECT r.tenant_id, r.agent_id, r.jti, NULL::timestamptz, r.expires_at
          FROM public.token_revocations r
        UNION ALL
        SELECT a.tenant_id, a.agent_id, NULL::uuid, a.revoked_before, NULL::timestamptz
          FROM public.agent_token_revocations a;
END;
$$;

CREATE FUNCTION public.lock_allows_write(locked boolean, holder text, expires_at timestamp with time zone, lock_fence bigint, writer text, fence bigint) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT CASE
        WHEN fence IS NOT NULL
        THEN coalesce(locked AND expires_at > pg_catalog.now() AND holder = writer AND lock_fence = fence, false)
        ELSE NOT coalesce(locked AND expires_at > pg_catalog.now(), false) OR holder = writer
    END
$$;

CREATE FUNCTION public.soft_delete_task(task_id uuid) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'public'
    AS $$
BEGIN
    UPDATE public.tasks t
       SET deleted_at = CURRENT_TIMESTAMP
     WHERE t.id = soft_delete_task.task_id
       AND t.tenant_id = public.current_tenant_id()
       AND t.deleted_at IS NULL;
    RETURN FOUND;
END;
$$;

CREATE FUNCTION public.sweep_task_timeouts(max_rows integer) RETURNS TABLE(task_id uuid, tenant_id uuid, workspace_id uuid)
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'public'
    AS $$
    WITH due AS MATERIALIZED (
        SELECT d.id FROM public.tasks d
         WHERE d.tenant_id = public.current_tenant_id()
           AND d.status = 'in_progress' AND d.deleted_at IS NULL
           AND d.started_at + d.timeout_seconds * interval '1 second' < CURRENT_TIMESTAMP
         ORDER BY d.started_at
         LIMIT max_rows
         FOR UPDATE SKIP LOCKED)
    UPDATE public.tasks t
       SET status = 'timeout',
           completed_at = CURRENT_TIMESTAMP,
           error = 'timed out after ' || t.timeout_seconds || ' s'
      FROM due
     WHERE t.id = due.id AND t.status = 'in_progress'
    RETURNING t.id, t.tenant_id, t.workspace_id
$$;

CREATE FUNCTION public.sweep_webhook_outbox(before timestamp with time zone, max_rows integer) RETURNS integer
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'public'
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

CREATE FUNCTION public.tandem_append_batch(p_tenants uuid[], p_docs uuid[], p_agents text[], p_fences bigint[], p_types text[], p_clocks jsonb[], p_updates bytea[], p_node text, p_expects bigint[] DEFAULT NULL::bigint[]) RETURNS TABLE(seq bigint, refused text, holder text, head bigint)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'public'
    AS $$
DECLARE
    cur_tenant uuid;
    -- Per operation, aligned with the arguments: NULL where another tenant's pass decides.
    t_seqs bigint[];
    t_refused text[];
    t_holders text[];
    t_found_heads bigint[];  -- the head an expectation was refused against
    t_docs uuid[];     -- the documents with operations kept, and their new heads
    t_heads bigint[];
    seqs bigint[];
    refusals text[];
    holders text[];
    found_heads bigint[];
    hints integer;
    f_head bigint;
    f_count integer;
    f_locked boolean;
BEGIN
    -- The common batch: one tenant's operations on one unlocked document, no fences and no
    -- expected head. Every one is stored; the statements below are the general path's effect
    -- without its per-operation judging (a third of the call's cost for one operation).
    IF p_expects IS NULL AND p_tenants[1] = ALL (p_tenants) AND p_docs[1] = ALL (p_docs)
       AND cardinality(array_remove(p_fences, NULL)) = 0 THEN
        PERFORM set_config('app.current_tenant', p_tenants[1]::text, true);
        SELECT d.head_seq, coalesce(d.is_locked AND d.lock_expires_at > now(), false) INTO f_head, f_locked
          FROM public.shared_documents d
         WHERE d.id = p_docs[1]
           FOR UPDATE OF d;
        IF FOUND AND NOT f_locked THEN
            f_count := cardinality(p_docs);
            UPDATE public.shared_documents d SET head_seq = f_head + f_count WHERE d.id = p_docs[1];
            INSERT INTO public.document_operations
                (tenant_id, document_id, sequence_number, agent_id, operation_type, vector_clock, "update")
            SELECT p_tenants[1], p_docs[1], f_head + k.i, k.agent, k.op_type, k.clock, k.upd
              FROM unnest(p_agents, p_types, p_clocks, p_updates) WITH ORDINALITY AS k(agent, op_type, clock, upd, i);
            IF p_node IS NOT NULL THEN
                PERFORM pg_notify('tandem', public.tandem_ops_hint(p_docs[1], f_head + f_count, p_node, p_agents, p_updates, p_types));
            END IF;
            RETURN QUERY SELECT f_head + i, NULL::text, NULL::text, NULL::bigint FROM generate_series(1, f_count) AS i;
            RETURN;
        END IF;
        -- Locked, or not found: the general path judges each operation.
    END IF;

    FOR cur_tenant IN SELECT DISTINCT x FROM unnest(p_tenants) AS x ORDER BY x LOOP
        PERFORM set_config('app.current_tenant', cur_tenant::text, true);

        WITH ops AS (
            SELECT o.i, o.doc, o.agent, o.fence, o.expect, o.tenant = cur_tenant AS mine
              FROM unnest(p_tenants, p_docs, p_agents, p_fences, p_expects) WITH ORDINALITY AS o(tenant, doc, agent, fence, expect, i)
        ), locked AS MATERIALIZED (
            SELECT d.id, d.head_seq, d.is_locked, d.locked_by, d.lock_expires_at, d.lock_fence
              FROM public.shared_documents d
             WHERE d.id = ANY (ARRAY(SELECT DISTINCT ops.doc FROM ops WHERE ops.mine))
             ORDER BY d.id
               FOR UPDATE OF d
        ), allowed AS (
            SELECT o.i, o.doc, o.fence, o.expect, o.mine, d.id IS NOT NULL AS found, d.head_seq,
                   o.mine AND d.id IS NOT NULL AND coalesce(public.lock_allows_write(
                       d.is_locked, d.locked_by, d.lock_expires_at, d.lock_fence, o.agent, o.fence), false) AS lock_ok,
                   o.expect IS NULL OR (o.expect = d.head_seq AND row_number() OVER (PARTITION BY o.doc ORDER BY o.i) = 1) AS head_ok,
                   CASE WHEN d.is_locked AND d.lock_expires_at > now() THEN d.locked_by END AS live_holder
              FROM ops o LEFT JOIN locked d ON o.mine AND d.id = o.doc
        ), judged AS (
            SELECT a.*, a.lock_ok AND a.head_ok AS ok FROM allowed a
        ), decided AS (
            SELECT j.i, j.doc,
                   CASE WHEN j.ok THEN j.head_seq + count(*) FILTER (WHERE j.ok) OVER (PARTITION BY j.doc ORDER BY j.i) END AS new_seq,
                   CASE WHEN NOT j.mine OR j.ok THEN NULL
                        WHEN NOT j.found THEN 'not_found'
                        WHEN NOT j.lock_ok AND j.fence IS NULL THEN 'locked'
                        WHEN NOT j.lock_ok THEN 'stale_fence'
                        ELSE 'head_moved' END AS why,
                   CASE WHEN j.mine AND j.found AND NOT j.lock_ok THEN j.live_holder END AS who,
                   CASE WHEN j.mine AND j.lock_ok AND NOT j.head_ok
                        THEN j.head_seq + count(*) FILTER (WHERE j.ok) OVER (PARTITION BY j.doc ORDER BY j.i) END AS found_head
              FROM judged j
        ), heads AS (
            SELECT dd.doc, max(dd.new_seq) AS head FROM decided dd WHERE dd.new_seq IS NOT NULL GROUP BY dd.doc
        )
        SELECT array_agg(dd.new_seq ORDER BY dd.i), array_agg(dd.why ORDER BY dd.i), array_agg(dd.who ORDER BY dd.i),
               array_agg(dd.found_head ORDER BY dd.i),
               (SELECT array_agg(h.doc) FROM heads h), (SELECT array_agg(h.head) FROM heads h)
          INTO t_seqs, t_refused, t_holders, t_found_heads, t_docs, t_heads
          FROM decided dd;

        IF t_docs IS NOT NULL THEN
            WITH kept AS MATERIALIZED (
                SELECT k.doc, k.agent, k.op_type, k.clock, k.upd, k.s
                  FROM unnest(p_docs, p_agents, p_types, p_clocks, p_updates, t_seqs) AS k(doc, agent, op_type, clock, upd, s)
                 WHERE k.s IS NOT NULL
            ), bumped AS (
                -- By index on the (few, locked) documents, whatever the planner thinks of a join.
                UPDATE public.shared_documents d SET head_seq = t_heads[array_position(t_docs, d.id)]
                 WHERE d.id = ANY (t_docs)
            ), inserted AS (
                INSERT INTO public.document_operations
                    (tenant_id, document_id, sequence_number, agent_id, operation_type, vector_clock, "update")
                SELECT cur_tenant, kept.doc, kept.s, kept.agent, kept.op_type, kept.clock, kept.upd FROM kept
            ), per_doc AS (
                SELECT kept.doc, max(kept.s) AS head, array_agg(kept.agent ORDER BY kept.s) AS agents,
                       array_agg(kept.upd ORDER BY kept.s) AS upds, array_agg(kept.op_type ORDER BY kept.s) AS types
                  FROM kept
                 WHERE p_node IS NOT NULL
                 GROUP BY kept.doc
            )
            SELECT count(pg_notify('tandem', public.tandem_ops_hint(p.doc, p.head, p_node, p.agents, p.upds, p.types)))
              INTO hints
              FROM per_doc p;
        END IF;

        IF seqs IS NULL THEN
            seqs := t_seqs; refusals := t_refused; holders := t_holders; found_heads := t_found_heads;
        ELSE
            SELECT array_agg(coalesce(m.s, m.ts) ORDER BY m.i), array_agg(coalesce(m.r, m.tr) ORDER BY m.i),
                   array_agg(coalesce(m.h, m.th) ORDER BY m.i), array_agg(coalesce(m.f, m.tf) ORDER BY m.i)
              INTO seqs, refusals, holders, found_heads
              FROM unnest(seqs, refusals, holders, found_heads, t_seqs, t_refused, t_holders, t_found_heads)
                   WITH ORDINALITY AS m(s, r, h, f, ts, tr, th, tf, i);
        END IF;
    END LOOP;

    RETURN QUERY SELECT r.s, r.why, r.who, r.f
                   FROM unnest(seqs, refusals, holders, found_heads) WITH ORDINALITY AS r(s, why, who, f, i) ORDER BY r.i;
END;
$$;

CREATE FUNCTION public.tandem_ensure_audit_partition(for_month date) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'public'
    AS $_$
DECLARE
    lower_bound timestamptz := (date_trunc('month', for_month::timestamp) AT TIME ZONE 'UTC');
    upper_bound timestamptz := ((date_trunc('month', for_month::timestamp) + interval '1 month') AT TIME ZONE 'UTC');
    partition_name text := 'audit_log_' || to_char(date_trunc('month', for_month::timestamp), 'YYYY_MM');
BEGIN
    -- "tandem audit partitions"; the xact lock is released at the caller's commit.
    PERFORM pg_catalog.pg_advisory_xact_lock(7406332120);
    -- A catalog query, not to_regclass: it runs on a snapshot taken after the lock, so it sees
    -- a partition that a concurrent caller committed while we waited.
    IF EXISTS (
        SELECT 1
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relname = partition_name
    ) THEN
        RETURN false;
    END IF;
    -- Parent first, then DEFAULT, the order inserts take them; nothing can slip into DEFAULT
    -- between the move and the attach.
    LOCK TABLE public.audit_log IN SHARE UPDATE EXCLUSIVE MODE;
    LOCK TABLE public.audit_log_default IN ACCESS EXCLUSIVE MODE;
    EXECUTE format(
        'CREATE TABLE public.%I (LIKE public.audit_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
        partition_name
    );
    EXECUTE format(
        'WITH moved AS ('
        '    DELETE FROM public.audit_log_default'
        '     WHERE changed_at >= $1 AND changed_at < $2'
        '    RETURNING id, tenant_id, table_name, record_id, action, old_data, new_data,'
        '              changed_fields, changed_by, ip_address, user_agent, changed_at'
        ') '
        'INSERT INTO public.%I (id, tenant_id, table_name, record_id, action, old_data, new_data,'
        '                       changed_fields, changed_by, ip_address, user_agent, changed_at) '
        'SELECT * FROM moved',
        partition_name
    ) USING lower_bound, upper_bound;
    EXECUTE format(
        'ALTER TABLE public.audit_log ATTACH PARTITION public.%I FOR VALUES FROM (%L) TO (%L)',
        partition_name, lower_bound, upper_bound
    );
    RETURN true;
END;
$_$;

CREATE FUNCTION public.tandem_maintain_partitions() RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'public'
    AS $$
DECLARE
    this_month date := (date_trunc('month', pg_catalog.now() AT TIME ZONE 'UTC'))::date;
    created integer := 0;
BEGIN
    FOR ahead IN 0..1 LOOP
        IF public.tandem_ensure_audit_partition((this_month + make_interval(months => ahead))::date) THEN
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END;
$$;

COMMENT ON FUNCTION public.tandem_maintain_partitions() IS 'Creates this and next month''s audit_log partitions; idempotent, safe to call concurrently';

CREATE FUNCTION public.tandem_ops_hint(p_doc uuid, p_seq bigint, p_node text, p_agents text[], p_updates bytea[], p_types text[]) RETURNS text
    LANGUAGE plpgsql
    AS $$
DECLARE
    -- Compact JSON built as text in simple expressions: no SPI query, no jsonb round trip (this
    -- runs once per document of every commit).
    bare text := '{"k":"ops","d":"' || p_doc::text || '","s":' || p_seq::text || ',"n":' || to_json(p_node)::text
                 || ',"t":' || round(extract(epoch FROM clock_timestamp())::numeric, 6)::text;
    total integer := 0;
    ops text := '';
    i integer;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_updates, 1), 0) LOOP
        total := total + octet_length(p_updates[i]);
        IF total > 4000 THEN
            RETURN bare || '}';
        END IF;
        ops := ops || CASE WHEN i > 1 THEN ',' ELSE '' END || json_build_array(
            p_agents[i], translate(encode(p_updates[i], 'base64'), E'\n', ''), p_types[i])::text;
    END LOOP;
    IF array_length(p_updates, 1) IS NULL OR octet_length(bare) + octet_length(ops) + 8 > 7900 THEN
        RETURN bare || '}';
    END IF;
    RETURN bare || ',"o":[' || ops || ']}';
END;
$$;

CREATE FUNCTION public.tandem_uuidv7() RETURNS uuid
    LANGUAGE sql PARALLEL SAFE
    SET search_path TO 'pg_catalog'
    AS $$
    -- A v4 uuid with its first 6 bytes replaced by the time and its version nibble 4 -> 7.
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
               PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
               FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;

CREATE FUNCTION public.tandem_webhook_documents_changed() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'public'
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

CREATE FUNCTION public.tandem_webhook_emit(p_workspace uuid, p_type text, p_payload jsonb, p_document uuid DEFAULT NULL::uuid) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'public'
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

CREATE FUNCTION public.tenants_with_due_webhooks(max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'public'
    AS $$
    SELECT DISTINCT d.tenant_id
      FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.enabled
     WHERE d.status IN ('pending', 'failed') AND d.next_attempt_at <= now()
       AND (d.leased_until IS NULL OR d.leased_until <= now())
     LIMIT max_tenants
$$;

CREATE FUNCTION public.tenants_with_open_step_tasks(after uuid, max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'public'
    AS $$
    SELECT DISTINCT t.tenant_id
      FROM public.tasks t
     WHERE t.execution_id IS NOT NULL AND t.deleted_at IS NULL
       AND ((t.assigned_to IS NOT NULL AND t.status IN ('assigned', 'accepted', 'in_progress'))
            OR (t.assigned_to IS NULL AND t.status = 'pending'))
       AND (after IS NULL OR t.tenant_id > after)
     ORDER BY t.tenant_id
     LIMIT max_tenants
$$;

CREATE FUNCTION public.tenants_with_overdue_tasks(max_tenants integer) RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'public'
    AS $$
    SELECT DISTINCT d.tenant_id FROM public.tasks d
     WHERE d.status = 'in_progress' AND d.deleted_at IS NULL
       AND d.started_at + d.timeout_seconds * interval '1 second' < CURRENT_TIMESTAMP
     LIMIT max_tenants
$$;

CREATE FUNCTION public.update_updated_at_column() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'public'
    AS $$
BEGIN
    NEW.updated_at = CURRENT_TIMESTAMP;
    RETURN NEW;
END;
$$;

CREATE FUNCTION public.validate_jsonb_keys(data jsonb, required_keys text[]) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog'
    AS $$
    SELECT data ?& required_keys
$$;

CREATE TABLE public.agent_token_revocations (
    tenant_id uuid NOT NULL,
    agent_id character varying(255) NOT NULL,
    revoked_before timestamp with time zone NOT NULL,
    revoked_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL
);

ALTER TABLE ONLY public.agent_token_revocations FORCE ROW LEVEL SECURITY;

CREATE TABLE public.agents (
    tenant_id uuid NOT NULL,
    agent_id character varying(255) NOT NULL,
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name character varying(255) NOT NULL,
    kind character varying(100) DEFAULT 'general'::character varying NOT NULL,
    capabilities text[] DEFAULT '{}'::text[] NOT NULL,
    max_concurrent_tasks integer DEFAULT 1 NOT NULL,
    metadata jsonb DEFAULT '{}'::jsonb NOT NULL,
    status character varying(20) DEFAULT 'active'::character varying NOT NULL,
    last_seen_at timestamp with time zone,
    tasks_completed bigint DEFAULT 0 NOT NULL,
    tasks_failed bigint DEFAULT 0 NOT NULL,
    consecutive_failures integer DEFAULT 0 NOT NULL,
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    updated_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    CONSTRAINT agent_capabilities_bounded CHECK (((cardinality(capabilities) <= 32) AND (array_position(capabilities, NULL::text) IS NULL))),
    CONSTRAINT agent_counters_not_negative CHECK (((tasks_completed >= 0) AND (tasks_failed >= 0) AND (consecutive_failures >= 0))),
    CONSTRAINT agent_max_concurrent_tasks_positive CHECK ((max_concurrent_tasks > 0)),
    CONSTRAINT agent_metadata_bounded CHECK ((octet_length((metadata)::text) <= 8192)),
    CONSTRAINT agent_metadata_object CHECK ((jsonb_typeof(metadata) = 'object'::text)),
    CONSTRAINT agent_name_not_blank CHECK ((btrim((name)::text, '
'::text) <> ''::text)),
    CONSTRAINT agent_status_known CHECK (((status)::text = ANY ((ARRAY['active'::character varying, 'inactive'::character varying, 'error'::character varying, 'maintenance'::character varying])::text[])))
);

ALTER TABLE ONLY public.agents FORCE ROW LEVEL SECURITY;

COMMENT ON TABLE public.agents IS 'The agent registry of a tenant: capabilities, concurrency limit, health counters';

CREATE TABLE public.audit_log (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    tenant_id uuid NOT NULL,
    table_name character varying(50) NOT NULL,
    record_id uuid NOT NULL,
    action character varying(20) NOT NULL,
    old_data jsonb,
    new_data jsonb,
    changed_fields text[],
    changed_by character varying(255) NOT NULL,
    ip_address inet,
    user_agent text,
    changed_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    CONSTRAINT audit_log_action_check CHECK (((action)::text = ANY ((ARRAY['INSERT'::character varying, 'UPDATE'::character varying, 'DELETE'::character varying, 'SELECT'::character varying])::text[])))
)
PARTITION BY RANGE (changed_at);

ALTER TABLE ONLY public.audit_log FORCE ROW LEVEL SECURITY;

COMMENT ON TABLE public.audit_log IS 'Audit trail written by audit_trigger_function, partitioned by month';

CREATE TABLE public.audit_log_default (
    id uuid DEFAULT gen_random_uuid() CONSTRAINT audit_log_id_not_null NOT NULL,
    tenant_id uuid CONSTRAINT audit_log_tenant_id_not_null NOT NULL,
    table_name character varying(50) CONSTRAINT audit_log_table_name_not_null NOT NULL,
    record_id uuid CONSTRAINT audit_log_record_id_not_null NOT NULL,
    action character varying(20) CONSTRAINT audit_log_action_not_null NOT NULL,
    old_data jsonb,
    new_data jsonb,
    changed_fields text[],
    changed_by character varying(255) CONSTRAINT audit_log_changed_by_not_null NOT NULL,
    ip_address inet,
    user_agent text,
    changed_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP CONSTRAINT audit_log_changed_at_not_null NOT NULL,
    CONSTRAINT audit_log_action_check CHECK (((action)::text = ANY ((ARRAY['INSERT'::character varying, 'UPDATE'::character varying, 'DELETE'::character varying, 'SELECT'::character varying])::text[])))
);

CREATE TABLE public.conflict_resolutions (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    tenant_id uuid NOT NULL,
    resource_type character varying(50) NOT NULL,
    resource_id uuid NOT NULL,
    conflict_type character varying(50) NOT NULL,
    description text,
    resolution_strategy character varying(50),
    details jsonb DEFAULT '{}'::jsonb NOT NULL,
    resolved_by character varying(255),
    resolved_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT valid_details CHECK ((jsonb_typeof(details) = 'object'::text))
);

ALTER TABLE ONLY public.conflict_resolutions FORCE ROW LEVEL SECURITY;

COMMENT ON TABLE public.conflict_resolutions IS 'Conflicts met and how they were resolved';

CREATE TABLE public.document_operations (
    id uuid DEFAULT public.tandem_uuidv7() NOT NULL,
    document_id uuid NOT NULL,
    tenant_id uuid NOT NULL,
    agent_id character varying(255) NOT NULL,
    operation_type character varying(50) NOT NULL,
    operation_data jsonb DEFAULT '{}'::jsonb NOT NULL,
    update bytea NOT NULL,
    vector_clock jsonb DEFAULT '{}'::jsonb NOT NULL,
    sequence_number bigint NOT NULL,
    "timestamp" timestamp with time zone DEFAULT CURRENT_TIMESTAMP,
    parent_operation_id uuid,
    is_applied boolean DEFAULT false,
    CONSTRAINT document_operations_operation_type_check CHECK (((operation_type)::text = ANY ((ARRAY['insert'::character varying, 'delete'::character varying, 'update'::character varying, 'move'::character varying, 'format'::character varying])::text[]))),
    CONSTRAINT sequence_number_positive CHECK ((sequence_number > 0)),
    CONSTRAINT valid_operation_data CHECK ((jsonb_typeof(operation_data) = 'object'::text)),
    CONSTRAINT valid_vector_clock CHECK ((jsonb_typeof(vector_clock) = 'object'::text))
)
WITH (autovacuum_vacuum_scale_factor='0.1', autovacuum_analyze_scale_factor='0.05');

ALTER TABLE ONLY public.document_operations FORCE ROW LEVEL SECURITY;

COMMENT ON TABLE public.document_operations IS 'Append-only CRDT updates of each document, numbered per document';

COMMENT ON COLUMN public.document_operations.update IS 'Raw CRDT update (binary)';

COMMENT ON COLUMN public.document_operations.sequence_number IS 'Per-document operation number, taken from shared_documents.head_seq in the same transaction';

CREATE TABLE public.document_snapshots (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    tenant_id uuid NOT NULL,
    document_id uuid NOT NULL,
    sequence_number bigint NOT NULL,
    state bytea NOT NULL,
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    CONSTRAINT snapshot_sequence_not_negative CHECK ((sequence_number >= 0))
);

ALTER TABLE ONLY public.document_snapshots FORCE ROW LEVEL SECURITY;

COMMENT ON TABLE public.document_snapshots IS 'Encoded CRDT state of a document up to an operation sequence number';

COMMENT ON COLUMN public.document_snapshots.sequence_number IS 'Last operation sequence number included in the state';

COMMENT ON COLUMN public.document_snapshots.state IS 'Encoded CRDT state (binary)';

CREATE SEQUENCE public.lock_fence_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

CREATE TABLE public.schema_migrations (
    version text NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE public.shared_documents (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    workspace_id uuid,
    tenant_id uuid NOT NULL,
    title character varying(255) NOT NULL,
    content text,
    content_type character varying(50) DEFAULT 'text'::character varying,
    language character varying(50),
    version integer DEFAULT 1,
    head_seq bigint DEFAULT 0 NOT NULL,
    is_locked boolean DEFAULT false,
    locked_by character varying(255),
    locked_at timestamp with time zone,
    lock_expires_at timestamp with time zone,
    created_by character varying(255) NOT NULL,
    updated_by character varying(255),
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP,
    updated_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP,
    deleted_at timestamp with time zone,
    metadata jsonb DEFAULT '{}'::jsonb NOT NULL,
    lock_fence bigint,
    CONSTRAINT doc_title_not_empty CHECK ((btrim((title)::text, '
'::text) <> ''::text)),
    CONSTRAINT doc_version_positive CHECK ((version > 0)),
    CONSTRAINT head_seq_not_negative CHECK ((head_seq >= 0)),
    CONSTRAINT lock_consistency CHECK ((((is_locked = false) AND (locked_by IS NULL) AND (locked_at IS NULL) AND (lock_expires_at IS NULL)) OR ((is_locked = true) AND (locked_by IS NOT NULL) AND (locked_at IS NOT NULL) AND (lock_expires_at IS NOT NULL)))),
    CONSTRAINT shared_documents_content_type_check CHECK (((content_type)::text = ANY ((ARRAY['text'::character varying, 'markdown'::character varying, 'json'::character varying, 'yaml'::character varying, 'code'::character varying])::text[]))),
    CONSTRAINT valid_metadata CHECK ((jsonb_typeof(metadata) = 'object'::text))
);

ALTER TABLE ONLY public.shared_documents FORCE ROW LEVEL SECURITY;

COMMENT ON TABLE public.shared_documents IS 'Collaborative documents with CRDT support';

COMMENT ON COLUMN public.shared_documents.head_seq IS 'Sequence number of the document''s last operation; writers increment it under the row lock';

COMMENT ON COLUMN public.shared_documents.lock_fence IS 'Fencing token of the current (or last) lock; writes presenting another one are refused';

CREATE TABLE public.task_delegations (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    tenant_id uuid NOT NULL,
    task_id uuid NOT NULL,
    from_agent_id character varying(255) NOT NULL,
    to_agent_id character varying(255) NOT NULL,
    reason text,
    delegation_type public.delegation_type DEFAULT 'manual'::public.delegation_type,
    metadata jsonb DEFAULT '{}'::jsonb NOT NULL,
    delegated_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT metadata_is_object CHECK ((jsonb_typeof(metadata) = 'object'::text))
);

ALTER TABLE ONLY public.task_delegations FORCE ROW LEVEL SECURITY;

COMMENT ON TABLE public.task_delegations IS 'Delegation history and chain of responsibility of each task';

CREATE TABLE public.tasks (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    tenant_id uuid NOT NULL,
    type character varying(100) NOT NULL,
    status public.task_status DEFAULT 'pending'::public.task_status NOT NULL,
    priority public.task_priority DEFAULT 'normal'::public.task_priority,
    created_by character varying(255) NOT NULL,
    assigned_to character varying(255),
    parent_task_id uuid,
    title character varying(500) NOT NULL,
    description text,
    parameters jsonb DEFAULT '{}'::jsonb NOT NULL,
    result jsonb,
    error text,
    max_retries integer DEFAULT 3,
    retry_count integer DEFAULT 0,
    timeout_seconds integer DEFAULT 3600,
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP,
    assigned_at timestamp with time zone,
    started_at timestamp with time zone,
    completed_at timestamp with time zone,
    updated_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP,
    deleted_at timestamp with time zone,
    workspace_id uuid,
    execution_id uuid,
    step_id character varying(64),
    attempt integer,
    collaborator character varying(255),
    CONSTRAINT parameters_is_object CHECK ((jsonb_typeof(parameters) = 'object'::text)),
    CONSTRAINT result_is_object CHECK (((result IS NULL) OR (jsonb_typeof(result) = 'object'::text))),
    CONSTRAINT retry_count_valid CHECK (((retry_count >= 0) AND (retry_count <= max_retries))),
    CONSTRAINT tasks_collaborator_of_a_step CHECK (((collaborator IS NULL) OR (execution_id IS NOT NULL))),
    CONSTRAINT tasks_execution_step_complete CHECK ((((execution_id IS NULL) AND (step_id IS NULL) AND (attempt IS NULL)) OR ((execution_id IS NOT NULL) AND (step_id IS NOT NULL) AND (attempt >= 1)))),
    CONSTRAINT title_not_empty CHECK ((btrim((title)::text, '
'::text) <> ''::text)),
    CONSTRAINT valid_max_retries CHECK (((max_retries >= 0) AND (max_retries <= 10))),
    CONSTRAINT valid_timeout CHECK ((timeout_seconds > 0))
)
WITH (fillfactor='80', autovacuum_vacuum_scale_factor='0.05', autovacuum_analyze_scale_factor='0.02', autovacuum_vacuum_cost_delay='10', autovacuum_vacuum_cost_limit='1000');

ALTER TABLE ONLY public.tasks FORCE ROW LEVEL SECURITY;

COMMENT ON TABLE public.tasks IS 'Core task management table supporting delegation and distributed execution';

CREATE TABLE public.token_revocations (
    tenant_id uuid NOT NULL,
    jti uuid NOT NULL,
    agent_id character varying(255),
    revoked_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    expires_at timestamp with time zone
);

ALTER TABLE ONLY public.token_revocations FORCE ROW LEVEL SECURITY;

CREATE TABLE public.workflow_executions (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    workflow_id uuid NOT NULL,
    tenant_id uuid NOT NULL,
    status public.workflow_status DEFAULT 'pending'::public.workflow_status NOT NULL,
    current_step_index integer DEFAULT 0,
    current_step_id character varying(255),
    triggered_by character varying(255) NOT NULL,
    input jsonb DEFAULT '{}'::jsonb NOT NULL,
    context jsonb DEFAULT '{}'::jsonb NOT NULL,
    step_results jsonb DEFAULT '{}'::jsonb NOT NULL,
    output jsonb,
    error text,
    started_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP,
    completed_at timestamp with time zone,
    execution_metadata jsonb DEFAULT '{}'::jsonb NOT NULL,
    workflow_version integer,
    workspace_id uuid,
    step_states jsonb DEFAULT '{}'::jsonb NOT NULL,
    CONSTRAINT valid_context CHECK ((jsonb_typeof(context) = 'object'::text)),
    CONSTRAINT valid_input CHECK ((jsonb_typeof(input) = 'object'::text)),
    CONSTRAINT valid_step_results CHECK ((jsonb_typeof(step_results) = 'object'::text)),
    CONSTRAINT valid_step_states CHECK ((jsonb_typeof(step_states) = 'object'::text))
)
WITH (fillfactor='80', autovacuum_vacuum_scale_factor='0.05', autovacuum_analyze_scale_factor='0.02');

ALTER TABLE ONLY public.workflow_executions FORCE ROW LEVEL SECURITY;

COMMENT ON TABLE public.workflow_executions IS 'Individual workflow runs and their state';

CREATE TABLE public.workflows (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    tenant_id uuid NOT NULL,
    name character varying(255) NOT NULL,
    type public.workflow_type DEFAULT 'sequential'::public.workflow_type NOT NULL,
    version integer DEFAULT 1,
    created_by character varying(255) NOT NULL,
    agents jsonb DEFAULT '{}'::jsonb NOT NULL,
    steps jsonb DEFAULT '[]'::jsonb NOT NULL,
    config jsonb DEFAULT '{}'::jsonb NOT NULL,
    description text,
    tags text[] DEFAULT '{}'::text[],
    is_active boolean DEFAULT true,
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP,
    updated_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP,
    deleted_at timestamp with time zone,
    workspace_id uuid,
    CONSTRAINT name_not_empty CHECK ((btrim((name)::text, '
'::text) <> ''::text)),
    CONSTRAINT valid_agents_jsonb CHECK ((jsonb_typeof(agents) = 'object'::text)),
    CONSTRAINT valid_config_jsonb CHECK ((jsonb_typeof(config) = 'object'::text)),
    CONSTRAINT valid_steps_jsonb CHECK ((jsonb_typeof(steps) = 'array'::text)),
    CONSTRAINT version_positive CHECK ((version > 0))
);

ALTER TABLE ONLY public.workflows FORCE ROW LEVEL SECURITY;

COMMENT ON TABLE public.workflows IS 'Workflow definitions for multi-agent orchestration';

CREATE VIEW public.v_active_workflows WITH (security_invoker='true') AS
 SELECT w.id,
    w.tenant_id,
    w.name,
    w.type,
    count(DISTINCT we.id) FILTER (WHERE (we.status = ANY (ARRAY['pending'::public.workflow_status, 'running'::public.workflow_status]))) AS active_executions,
    count(DISTINCT we.id) FILTER (WHERE (we.status = 'completed'::public.workflow_status)) AS completed_executions,
    count(DISTINCT we.id) FILTER (WHERE (we.status = 'failed'::public.workflow_status)) AS failed_executions,
    max(we.started_at) AS last_execution_started
   FROM (public.workflows w
     LEFT JOIN public.workflow_executions we ON (((w.id = we.workflow_id) AND (w.tenant_id = we.tenant_id))))
  WHERE ((w.is_active = true) AND (w.deleted_at IS NULL))
  GROUP BY w.id, w.tenant_id, w.name, w.type;

CREATE VIEW public.v_agent_workload WITH (security_invoker='true') AS
 SELECT tenant_id,
    assigned_to AS agent_id,
    count(*) FILTER (WHERE (status = ANY (ARRAY['assigned'::public.task_status, 'accepted'::public.task_status]))) AS pending_tasks,
    count(*) FILTER (WHERE (status = 'in_progress'::public.task_status)) AS active_tasks,
    count(*) FILTER (WHERE ((status = 'completed'::public.task_status) AND (completed_at > (CURRENT_TIMESTAMP - '24:00:00'::interval)))) AS completed_24h,
    avg(EXTRACT(epoch FROM (completed_at - started_at))) FILTER (WHERE (status = 'completed'::public.task_status)) AS avg_task_duration_seconds
   FROM public.tasks
  WHERE ((deleted_at IS NULL) AND (assigned_to IS NOT NULL))
  GROUP BY tenant_id, assigned_to;

CREATE VIEW public.v_task_statistics WITH (security_invoker='true') AS
 SELECT tenant_id,
    status,
    priority,
    count(*) AS count,
    avg(EXTRACT(epoch FROM (completed_at - created_at))) AS avg_duration_seconds,
    percentile_cont((0.5)::double precision) WITHIN GROUP (ORDER BY ((EXTRACT(epoch FROM (completed_at - created_at)))::double precision)) AS median_duration_seconds,
    percentile_cont((0.95)::double precision) WITHIN GROUP (ORDER BY ((EXTRACT(epoch FROM (completed_at - created_at)))::double precision)) AS p95_duration_seconds
   FROM public.tasks
  WHERE (deleted_at IS NULL)
  GROUP BY tenant_id, status, priority;

CREATE TABLE public.workspace_members (
    workspace_id uuid NOT NULL,
    agent_id character varying(255) NOT NULL,
    tenant_id uuid NOT NULL,
    role public.member_role DEFAULT 'member'::public.member_role,
    permissions jsonb DEFAULT '["read", "write"]'::jsonb NOT NULL,
    joined_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP,
    last_seen_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP,
    member_state jsonb DEFAULT '{}'::jsonb NOT NULL,
    CONSTRAINT valid_member_state CHECK ((jsonb_typeof(member_state) = 'object'::text)),
    CONSTRAINT valid_permissions CHECK ((jsonb_typeof(permissions) = 'array'::text))
);

ALTER TABLE ONLY public.workspace_members FORCE ROW LEVEL SECURITY;

COMMENT ON TABLE public.workspace_members IS 'Workspace membership, roles and per-member state';

CREATE TABLE public.workspaces (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    tenant_id uuid NOT NULL,
    name character varying(255) NOT NULL,
    type character varying(50) DEFAULT 'general'::character varying,
    owner_id character varying(255) NOT NULL,
    visibility public.workspace_visibility DEFAULT 'private'::public.workspace_visibility,
    state jsonb DEFAULT '{}'::jsonb NOT NULL,
    state_version integer DEFAULT 1,
    last_activity_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP,
    config jsonb DEFAULT '{}'::jsonb NOT NULL,
    max_members integer DEFAULT 100,
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP,
    updated_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP,
    deleted_at timestamp with time zone,
    CONSTRAINT valid_config CHECK ((jsonb_typeof(config) = 'object'::text)),
    CONSTRAINT valid_max_members CHECK (((max_members > 0) AND (max_members <= 1000))),
    CONSTRAINT valid_state CHECK ((jsonb_typeof(state) = 'object'::text)),
    CONSTRAINT workspace_name_not_empty CHECK ((btrim((name)::text, '
'::text) <> ''::text))
);

ALTER TABLE ONLY public.workspaces FORCE ROW LEVEL SECURITY;

COMMENT ON TABLE public.workspaces IS 'Shared collaboration spaces for agent coordination';

CREATE VIEW public.v_workspace_activity WITH (security_invoker='true') AS
 SELECT w.id,
    w.tenant_id,
    w.name,
    w.type,
    count(DISTINCT wm.agent_id) AS member_count,
    count(DISTINCT wm.agent_id) FILTER (WHERE (wm.last_seen_at > (CURRENT_TIMESTAMP - '00:15:00'::interval))) AS active_members,
    w.state_version,
    w.last_activity_at,
    count(DISTINCT d.id) AS document_count
   FROM ((public.workspaces w
     LEFT JOIN public.workspace_members wm ON (((w.id = wm.workspace_id) AND (w.tenant_id = wm.tenant_id))))
     LEFT JOIN public.shared_documents d ON (((w.id = d.workspace_id) AND (w.tenant_id = d.tenant_id) AND (d.deleted_at IS NULL))))
  WHERE (w.deleted_at IS NULL)
  GROUP BY w.id, w.tenant_id, w.name, w.type, w.state_version, w.last_activity_at;

CREATE TABLE public.webhook_deliveries (
    id bigint NOT NULL,
    tenant_id uuid NOT NULL,
    endpoint_id uuid NOT NULL,
    event_id bigint NOT NULL,
    attempt integer DEFAULT 0 NOT NULL,
    status text DEFAULT 'pending'::text NOT NULL,
    next_attempt_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    leased_until timestamp with time zone,
    lease_token uuid,
    last_status_code integer,
    last_error text,
    delivered_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    CONSTRAINT webhook_delivery_attempt_not_negative CHECK ((attempt >= 0)),
    CONSTRAINT webhook_delivery_status_known CHECK ((status = ANY (ARRAY['pending'::text, 'delivered'::text, 'failed'::text, 'dead'::text])))
);

ALTER TABLE ONLY public.webhook_deliveries FORCE ROW LEVEL SECURITY;

CREATE SEQUENCE public.webhook_deliveries_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.webhook_deliveries_id_seq OWNED BY public.webhook_deliveries.id;

CREATE TABLE public.webhook_endpoints (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    tenant_id uuid NOT NULL,
    workspace_id uuid NOT NULL,
    url text NOT NULL,
    secret text NOT NULL,
    event_types text[] NOT NULL,
    enabled boolean DEFAULT true NOT NULL,
    failures integer DEFAULT 0 NOT NULL,
    disabled_reason text,
    created_by character varying(255),
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    CONSTRAINT webhook_event_types_known CHECK ((((cardinality(event_types) >= 1) AND (cardinality(event_types) <= 16)) AND (event_types <@ ARRAY['document.changed'::text, 'task.changed'::text, 'state.changed'::text, 'lock.acquired'::text, 'lock.renewed'::text, 'lock.released'::text, 'member.changed'::text, 'workflow.execution.changed'::text]))),
    CONSTRAINT webhook_failures_not_negative CHECK ((failures >= 0)),
    CONSTRAINT webhook_url_http CHECK (((url ~ '^https?://'::text) AND (octet_length(url) <= 2048)))
);

ALTER TABLE ONLY public.webhook_endpoints FORCE ROW LEVEL SECURITY;

CREATE TABLE public.webhook_outbox (
    id bigint NOT NULL,
    tenant_id uuid NOT NULL,
    workspace_id uuid NOT NULL,
    type text NOT NULL,
    document_id uuid,
    payload jsonb NOT NULL,
    claimed boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    CONSTRAINT webhook_payload_object CHECK ((jsonb_typeof(payload) = 'object'::text))
);

ALTER TABLE ONLY public.webhook_outbox FORCE ROW LEVEL SECURITY;

CREATE SEQUENCE public.webhook_outbox_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.webhook_outbox_id_seq OWNED BY public.webhook_outbox.id;

CREATE TABLE public.workflow_versions (
    workflow_id uuid NOT NULL,
    tenant_id uuid NOT NULL,
    version integer NOT NULL,
    type public.workflow_type NOT NULL,
    steps jsonb NOT NULL,
    config jsonb DEFAULT '{}'::jsonb NOT NULL,
    description text,
    created_by character varying(255) NOT NULL,
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    CONSTRAINT valid_version_config CHECK ((jsonb_typeof(config) = 'object'::text)),
    CONSTRAINT valid_version_steps CHECK ((jsonb_typeof(steps) = 'array'::text)),
    CONSTRAINT workflow_version_positive CHECK ((version > 0))
);

ALTER TABLE ONLY public.workflow_versions FORCE ROW LEVEL SECURITY;

COMMENT ON TABLE public.workflow_versions IS 'Immutable versions of workflow definitions';

CREATE TABLE public.workspace_locks (
    workspace_id uuid NOT NULL,
    name character varying(100) NOT NULL,
    tenant_id uuid NOT NULL,
    locked_by character varying(255) NOT NULL,
    fence bigint NOT NULL,
    locked_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    lock_expires_at timestamp with time zone NOT NULL,
    CONSTRAINT lock_expires_after_taken CHECK ((lock_expires_at > locked_at)),
    CONSTRAINT lock_name_not_empty CHECK ((btrim((name)::text, '
'::text) <> ''::text))
);

ALTER TABLE ONLY public.workspace_locks FORCE ROW LEVEL SECURITY;

COMMENT ON TABLE public.workspace_locks IS 'Leased named locks of a workspace, with fencing tokens';

ALTER TABLE ONLY public.audit_log ATTACH PARTITION public.audit_log_default DEFAULT;

ALTER TABLE ONLY public.webhook_deliveries ALTER COLUMN id SET DEFAULT nextval('public.webhook_deliveries_id_seq'::regclass);

ALTER TABLE ONLY public.webhook_outbox ALTER COLUMN id SET DEFAULT nextval('public.webhook_outbox_id_seq'::regclass);

ALTER TABLE ONLY public.agent_token_revocations
    ADD CONSTRAINT agent_token_revocations_pkey PRIMARY KEY (tenant_id, agent_id);

ALTER TABLE ONLY public.agents
    ADD CONSTRAINT agents_id_key UNIQUE (id);

ALTER TABLE ONLY public.agents
    ADD CONSTRAINT agents_pkey PRIMARY KEY (tenant_id, agent_id);

ALTER TABLE ONLY public.audit_log
    ADD CONSTRAINT audit_log_pkey PRIMARY KEY (id, changed_at);

ALTER TABLE ONLY public.audit_log_default
    ADD CONSTRAINT audit_log_default_pkey PRIMARY KEY (id, changed_at);

ALTER TABLE ONLY public.conflict_resolutions
    ADD CONSTRAINT conflict_resolutions_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.document_operations
    ADD CONSTRAINT document_operations_document_id_sequence_number_key UNIQUE (document_id, sequence_number);

ALTER TABLE ONLY public.document_operations
    ADD CONSTRAINT document_operations_id_tenant_id_key UNIQUE (id, tenant_id);

ALTER TABLE ONLY public.document_operations
    ADD CONSTRAINT document_operations_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.document_snapshots
    ADD CONSTRAINT document_snapshots_document_id_sequence_number_key UNIQUE (document_id, sequence_number);

ALTER TABLE ONLY public.document_snapshots
    ADD CONSTRAINT document_snapshots_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);

ALTER TABLE ONLY public.shared_documents
    ADD CONSTRAINT shared_documents_id_tenant_id_key UNIQUE (id, tenant_id);

ALTER TABLE ONLY public.shared_documents
    ADD CONSTRAINT shared_documents_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.task_delegations
    ADD CONSTRAINT task_delegations_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.tasks
    ADD CONSTRAINT tasks_id_tenant_id_key UNIQUE (id, tenant_id);

ALTER TABLE ONLY public.tasks
    ADD CONSTRAINT tasks_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.token_revocations
    ADD CONSTRAINT token_revocations_pkey PRIMARY KEY (tenant_id, jti);

ALTER TABLE ONLY public.webhook_deliveries
    ADD CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.webhook_deliveries
    ADD CONSTRAINT webhook_delivery_once UNIQUE (endpoint_id, event_id);

ALTER TABLE ONLY public.webhook_endpoints
    ADD CONSTRAINT webhook_endpoints_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.webhook_outbox
    ADD CONSTRAINT webhook_outbox_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.workflow_executions
    ADD CONSTRAINT workflow_executions_id_tenant_id_key UNIQUE (id, tenant_id);

ALTER TABLE ONLY public.workflow_executions
    ADD CONSTRAINT workflow_executions_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.workflow_versions
    ADD CONSTRAINT workflow_versions_pkey PRIMARY KEY (workflow_id, version);

ALTER TABLE ONLY public.workflow_versions
    ADD CONSTRAINT workflow_versions_workflow_tenant_version_key UNIQUE (workflow_id, tenant_id, version);

ALTER TABLE ONLY public.workflows
    ADD CONSTRAINT workflows_id_tenant_id_key UNIQUE (id, tenant_id);

ALTER TABLE ONLY public.workflows
    ADD CONSTRAINT workflows_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.workspace_locks
    ADD CONSTRAINT workspace_locks_pkey PRIMARY KEY (workspace_id, name);

ALTER TABLE ONLY public.workspace_members
    ADD CONSTRAINT workspace_members_pkey PRIMARY KEY (workspace_id, agent_id);

ALTER TABLE ONLY public.workspaces
    ADD CONSTRAINT workspaces_id_tenant_id_key UNIQUE (id, tenant_id);

ALTER TABLE ONLY public.workspaces
    ADD CONSTRAINT workspaces_pkey PRIMARY KEY (id);

CREATE INDEX idx_audit_log_changed_at ON ONLY public.audit_log USING btree (changed_at DESC);

CREATE INDEX audit_log_default_changed_at_idx ON public.audit_log_default USING btree (changed_at DESC);

CREATE INDEX idx_audit_log_changed_by ON ONLY public.audit_log USING btree (changed_by);

CREATE INDEX audit_log_default_changed_by_idx ON public.audit_log_default USING btree (changed_by);

CREATE INDEX idx_audit_log_record ON ONLY public.audit_log USING btree (record_id);

CREATE INDEX audit_log_default_record_id_idx ON public.audit_log_default USING btree (record_id);

CREATE INDEX idx_audit_log_tenant_table ON ONLY public.audit_log USING btree (tenant_id, table_name);

CREATE INDEX audit_log_default_tenant_id_table_name_idx ON public.audit_log_default USING btree (tenant_id, table_name);

CREATE INDEX idx_agents_capabilities ON public.agents USING gin (capabilities);

CREATE INDEX idx_conflicts_created_at ON public.conflict_resolutions USING btree (created_at DESC);

CREATE INDEX idx_conflicts_resource ON public.conflict_resolutions USING btree (resource_type, resource_id);

CREATE INDEX idx_conflicts_tenant_id ON public.conflict_resolutions USING btree (tenant_id);

CREATE INDEX idx_delegations_delegated_at ON public.task_delegations USING btree (delegated_at DESC);

CREATE INDEX idx_delegations_from_agent ON public.task_delegations USING btree (from_agent_id);

CREATE INDEX idx_delegations_task_id ON public.task_delegations USING btree (task_id);

CREATE INDEX idx_delegations_tenant_id ON public.task_delegations USING btree (tenant_id);

CREATE INDEX idx_delegations_to_agent ON public.task_delegations USING btree (to_agent_id);

CREATE INDEX idx_documents_created_by ON public.shared_documents USING btree (created_by);

CREATE INDEX idx_documents_tenant_id ON public.shared_documents USING btree (tenant_id);

CREATE INDEX idx_documents_updated_at ON public.shared_documents USING btree (updated_at DESC) WHERE (deleted_at IS NULL);

CREATE INDEX idx_documents_workspace_id ON public.shared_documents USING btree (workspace_id) WHERE (deleted_at IS NULL);

CREATE INDEX idx_executions_started_at ON public.workflow_executions USING btree (started_at DESC);

CREATE INDEX idx_executions_status ON public.workflow_executions USING btree (status) WHERE (status <> ALL (ARRAY['completed'::public.workflow_status, 'failed'::public.workflow_status, 'cancelled'::public.workflow_status]));

CREATE INDEX idx_executions_tenant_id ON public.workflow_executions USING btree (tenant_id);

CREATE INDEX idx_executions_triggered_by ON public.workflow_executions USING btree (triggered_by);

CREATE INDEX idx_executions_workflow_id ON public.workflow_executions USING btree (workflow_id);

CREATE INDEX idx_executions_workspace_started ON public.workflow_executions USING btree (workspace_id, started_at DESC);

CREATE INDEX idx_operations_parent_id ON public.document_operations USING btree (parent_operation_id) WHERE (parent_operation_id IS NOT NULL);

CREATE INDEX idx_operations_tenant_id ON public.document_operations USING btree (tenant_id);

CREATE INDEX idx_operations_timestamp ON public.document_operations USING btree (document_id, "timestamp");

CREATE INDEX idx_snapshots_tenant_id ON public.document_snapshots USING btree (tenant_id);

CREATE INDEX idx_tasks_assignee ON public.tasks USING btree (tenant_id, assigned_to) WHERE (deleted_at IS NULL);

CREATE INDEX idx_tasks_execution_waiting ON public.tasks USING btree (tenant_id, created_at) WHERE ((execution_id IS NOT NULL) AND (status = 'pending'::public.task_status) AND (assigned_to IS NULL) AND (deleted_at IS NULL));

CREATE INDEX idx_tasks_in_progress ON public.tasks USING btree (started_at) WHERE ((status = 'in_progress'::public.task_status) AND (deleted_at IS NULL));

CREATE INDEX idx_tasks_open_assignee ON public.tasks USING btree (tenant_id, assigned_to) WHERE ((status = ANY (ARRAY['assigned'::public.task_status, 'accepted'::public.task_status, 'in_progress'::public.task_status])) AND (deleted_at IS NULL));

CREATE INDEX idx_tasks_parent_id ON public.tasks USING btree (parent_task_id) WHERE (parent_task_id IS NOT NULL);

CREATE INDEX idx_tasks_workspace_status_priority ON public.tasks USING btree (workspace_id, status, priority) WHERE (deleted_at IS NULL);

CREATE INDEX idx_token_revocations_expires_at ON public.token_revocations USING btree (expires_at);

CREATE INDEX idx_webhook_deliveries_due ON public.webhook_deliveries USING btree (tenant_id, next_attempt_at) WHERE (status = ANY (ARRAY['pending'::text, 'failed'::text]));

CREATE INDEX idx_webhook_deliveries_event ON public.webhook_deliveries USING btree (event_id);

CREATE INDEX idx_webhook_deliveries_open ON public.webhook_deliveries USING btree (endpoint_id, event_id) WHERE (status = ANY (ARRAY['pending'::text, 'failed'::text]));

CREATE INDEX idx_webhook_endpoints_workspace ON public.webhook_endpoints USING btree (workspace_id) WHERE enabled;

CREATE UNIQUE INDEX idx_webhook_outbox_debounce ON public.webhook_outbox USING btree (document_id, type) WHERE ((NOT claimed) AND (document_id IS NOT NULL));

CREATE INDEX idx_workflow_versions_tenant_id ON public.workflow_versions USING btree (tenant_id);

CREATE INDEX idx_workflows_name ON public.workflows USING btree (name) WHERE (deleted_at IS NULL);

CREATE INDEX idx_workflows_tags ON public.workflows USING gin (tags);

CREATE INDEX idx_workflows_tenant_active_type ON public.workflows USING btree (tenant_id, is_active, type) WHERE ((is_active = true) AND (deleted_at IS NULL));

CREATE INDEX idx_workflows_tenant_id ON public.workflows USING btree (tenant_id);

CREATE INDEX idx_workflows_type ON public.workflows USING btree (type);

CREATE UNIQUE INDEX idx_workflows_workspace_name ON public.workflows USING btree (tenant_id, workspace_id, name) WHERE (deleted_at IS NULL);

CREATE INDEX idx_workspace_locks_holder ON public.workspace_locks USING btree (locked_by);

CREATE INDEX idx_workspace_locks_tenant_id ON public.workspace_locks USING btree (tenant_id);

CREATE INDEX idx_workspace_members_agent_id ON public.workspace_members USING btree (agent_id);

CREATE INDEX idx_workspace_members_last_seen ON public.workspace_members USING btree (last_seen_at DESC);

CREATE INDEX idx_workspace_members_role ON public.workspace_members USING btree (role);

CREATE INDEX idx_workspace_members_tenant_id ON public.workspace_members USING btree (tenant_id);

CREATE INDEX idx_workspaces_last_activity ON public.workspaces USING btree (last_activity_at DESC) WHERE (deleted_at IS NULL);

CREATE INDEX idx_workspaces_owner_id ON public.workspaces USING btree (owner_id);

CREATE INDEX idx_workspaces_tenant_id ON public.workspaces USING btree (tenant_id);

CREATE INDEX idx_workspaces_type ON public.workspaces USING btree (type) WHERE (deleted_at IS NULL);

CREATE UNIQUE INDEX tasks_execution_step_attempt_key ON public.tasks USING btree (execution_id, step_id, attempt, COALESCE(collaborator, ''::character varying));

ALTER INDEX public.idx_audit_log_changed_at ATTACH PARTITION public.audit_log_default_changed_at_idx;

ALTER INDEX public.idx_audit_log_changed_by ATTACH PARTITION public.audit_log_default_changed_by_idx;

ALTER INDEX public.audit_log_pkey ATTACH PARTITION public.audit_log_default_pkey;

ALTER INDEX public.idx_audit_log_record ATTACH PARTITION public.audit_log_default_record_id_idx;

ALTER INDEX public.idx_audit_log_tenant_table ATTACH PARTITION public.audit_log_default_tenant_id_table_name_idx;

CREATE STATISTICS public.tasks_status_priority ON status, priority FROM public.tasks;

CREATE STATISTICS public.workflows_tenant_type ON tenant_id, type FROM public.workflows;

CREATE TRIGGER audit_agents AFTER INSERT OR DELETE ON public.agents FOR EACH ROW EXECUTE FUNCTION public.audit_trigger_function('id');

CREATE TRIGGER audit_agents_update AFTER UPDATE ON public.agents FOR EACH ROW WHEN ((((((((((((((old.tenant_id IS DISTINCT FROM new.tenant_id) OR ((old.agent_id)::text IS DISTINCT FROM (new.agent_id)::text)) OR (old.id IS DISTINCT FROM new.id)) OR ((old.name)::text IS DISTINCT FROM (new.name)::text)) OR ((old.kind)::text IS DISTINCT FROM (new.kind)::text)) OR (old.capabilities IS DISTINCT FROM new.capabilities)) OR (old.max_concurrent_tasks IS DISTINCT FROM new.max_concurrent_tasks)) OR (old.metadata IS DISTINCT FROM new.metadata)) OR ((old.status)::text IS DISTINCT FROM (new.status)::text)) OR (old.tasks_completed IS DISTINCT FROM new.tasks_completed)) OR (old.tasks_failed IS DISTINCT FROM new.tasks_failed)) OR (old.consecutive_failures IS DISTINCT FROM new.consecutive_failures)) OR (old.created_at IS DISTINCT FROM new.created_at))) EXECUTE FUNCTION public.audit_trigger_function('id');

CREATE TRIGGER audit_documents AFTER INSERT OR DELETE ON public.shared_documents FOR EACH ROW EXECUTE FUNCTION public.audit_trigger_function('id', 'content');

CREATE TRIGGER audit_documents_update AFTER UPDATE ON public.shared_documents FOR EACH ROW WHEN ((((((((((((((((old.id IS DISTINCT FROM new.id) OR (old.workspace_id IS DISTINCT FROM new.workspace_id)) OR (old.tenant_id IS DISTINCT FROM new.tenant_id)) OR ((old.title)::text IS DISTINCT FROM (new.title)::text)) OR ((old.content_type)::text IS DISTINCT FROM (new.content_type)::text)) OR ((old.language)::text IS DISTINCT FROM (new.language)::text)) OR (old.is_locked IS DISTINCT FROM new.is_locked)) OR ((old.locked_by)::text IS DISTINCT FROM (new.locked_by)::text)) OR (old.locked_at IS DISTINCT FROM new.locked_at)) OR (old.lock_expires_at IS DISTINCT FROM new.lock_expires_at)) OR (old.lock_fence IS DISTINCT FROM new.lock_fence)) OR ((old.created_by)::text IS DISTINCT FROM (new.created_by)::text)) OR (old.created_at IS DISTINCT FROM new.created_at)) OR (old.deleted_at IS DISTINCT FROM new.deleted_at)) OR (old.metadata IS DISTINCT FROM new.metadata))) EXECUTE FUNCTION public.audit_trigger_function('id', 'content');

CREATE TRIGGER audit_task_delegations AFTER INSERT OR DELETE OR UPDATE ON public.task_delegations FOR EACH ROW EXECUTE FUNCTION public.audit_trigger_function('id');

CREATE TRIGGER audit_tasks AFTER INSERT OR DELETE OR UPDATE ON public.tasks FOR EACH ROW EXECUTE FUNCTION public.audit_trigger_function('id');

CREATE TRIGGER audit_workflow_executions AFTER INSERT OR DELETE OR UPDATE ON public.workflow_executions FOR EACH ROW EXECUTE FUNCTION public.audit_trigger_function('id');

CREATE TRIGGER audit_workflow_versions AFTER INSERT OR DELETE OR UPDATE ON public.workflow_versions FOR EACH ROW EXECUTE FUNCTION public.audit_trigger_function('workflow_id');

CREATE TRIGGER audit_workflows AFTER INSERT OR DELETE OR UPDATE ON public.workflows FOR EACH ROW EXECUTE FUNCTION public.audit_trigger_function('id');

CREATE TRIGGER audit_workspace_locks AFTER INSERT OR DELETE OR UPDATE ON public.workspace_locks FOR EACH ROW EXECUTE FUNCTION public.audit_trigger_function('workspace_id');

CREATE TRIGGER audit_workspace_members AFTER INSERT OR DELETE ON public.workspace_members FOR EACH ROW EXECUTE FUNCTION public.audit_trigger_function('workspace_id');

CREATE TRIGGER audit_workspace_members_update AFTER UPDATE ON public.workspace_members FOR EACH ROW WHEN ((((((((old.workspace_id IS DISTINCT FROM new.workspace_id) OR ((old.agent_id)::text IS DISTINCT FROM (new.agent_id)::text)) OR (old.tenant_id IS DISTINCT FROM new.tenant_id)) OR (old.role IS DISTINCT FROM new.role)) OR (old.permissions IS DISTINCT FROM new.permissions)) OR (old.joined_at IS DISTINCT FROM new.joined_at)) OR (old.member_state IS DISTINCT FROM new.member_state))) EXECUTE FUNCTION public.audit_trigger_function('workspace_id');

CREATE TRIGGER audit_workspaces AFTER INSERT OR DELETE ON public.workspaces FOR EACH ROW EXECUTE FUNCTION public.audit_trigger_function('id');

CREATE TRIGGER audit_workspaces_update AFTER UPDATE ON public.workspaces FOR EACH ROW WHEN (((((((((((((old.id IS DISTINCT FROM new.id) OR (old.tenant_id IS DISTINCT FROM new.tenant_id)) OR ((old.name)::text IS DISTINCT FROM (new.name)::text)) OR ((old.type)::text IS DISTINCT FROM (new.type)::text)) OR ((old.owner_id)::text IS DISTINCT FROM (new.owner_id)::text)) OR (old.visibility IS DISTINCT FROM new.visibility)) OR (old.state IS DISTINCT FROM new.state)) OR (old.state_version IS DISTINCT FROM new.state_version)) OR (old.config IS DISTINCT FROM new.config)) OR (old.max_members IS DISTINCT FROM new.max_members)) OR (old.created_at IS DISTINCT FROM new.created_at)) OR (old.deleted_at IS DISTINCT FROM new.deleted_at))) EXECUTE FUNCTION public.audit_trigger_function('id');

CREATE TRIGGER update_agents_updated_at BEFORE UPDATE ON public.agents FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();

CREATE TRIGGER update_documents_updated_at BEFORE UPDATE ON public.shared_documents FOR EACH ROW WHEN ((NOT (old.head_seq IS DISTINCT FROM new.head_seq))) EXECUTE FUNCTION public.update_updated_at_column();

CREATE TRIGGER update_tasks_updated_at BEFORE UPDATE ON public.tasks FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();

CREATE TRIGGER update_workflows_updated_at BEFORE UPDATE ON public.workflows FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();

CREATE TRIGGER update_workspaces_updated_at BEFORE UPDATE ON public.workspaces FOR EACH ROW EXECUTE FUNCTION public.update_updated_at_column();

CREATE TRIGGER webhook_documents_changed AFTER INSERT ON public.document_operations REFERENCING NEW TABLE AS new_ops FOR EACH STATEMENT EXECUTE FUNCTION public.tandem_webhook_documents_changed();

ALTER TABLE ONLY public.document_operations
    ADD CONSTRAINT document_operations_document_id_fkey FOREIGN KEY (document_id, tenant_id) REFERENCES public.shared_documents(id, tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY public.document_operations
    ADD CONSTRAINT document_operations_parent_operation_id_fkey FOREIGN KEY (parent_operation_id, tenant_id) REFERENCES public.document_operations(id, tenant_id);

ALTER TABLE ONLY public.document_snapshots
    ADD CONSTRAINT document_snapshots_document_id_fkey FOREIGN KEY (document_id, tenant_id) REFERENCES public.shared_documents(id, tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY public.shared_documents
    ADD CONSTRAINT shared_documents_workspace_id_fkey FOREIGN KEY (workspace_id, tenant_id) REFERENCES public.workspaces(id, tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY public.task_delegations
    ADD CONSTRAINT task_delegations_task_id_fkey FOREIGN KEY (task_id, tenant_id) REFERENCES public.tasks(id, tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY public.tasks
    ADD CONSTRAINT tasks_execution_id_fkey FOREIGN KEY (execution_id, tenant_id) REFERENCES public.workflow_executions(id, tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY public.tasks
    ADD CONSTRAINT tasks_parent_task_id_fkey FOREIGN KEY (parent_task_id, tenant_id) REFERENCES public.tasks(id, tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY public.tasks
    ADD CONSTRAINT tasks_workspace_id_fkey FOREIGN KEY (workspace_id, tenant_id) REFERENCES public.workspaces(id, tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY public.webhook_deliveries
    ADD CONSTRAINT webhook_deliveries_endpoint_id_fkey FOREIGN KEY (endpoint_id) REFERENCES public.webhook_endpoints(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.webhook_deliveries
    ADD CONSTRAINT webhook_deliveries_event_id_fkey FOREIGN KEY (event_id) REFERENCES public.webhook_outbox(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.webhook_endpoints
    ADD CONSTRAINT webhook_endpoints_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES public.workspaces(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.webhook_outbox
    ADD CONSTRAINT webhook_outbox_workspace_id_fkey FOREIGN KEY (workspace_id) REFERENCES public.workspaces(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.workflow_executions
    ADD CONSTRAINT workflow_executions_workflow_id_fkey FOREIGN KEY (workflow_id, tenant_id) REFERENCES public.workflows(id, tenant_id);

ALTER TABLE ONLY public.workflow_executions
    ADD CONSTRAINT workflow_executions_workflow_version_fkey FOREIGN KEY (workflow_id, tenant_id, workflow_version) REFERENCES public.workflow_versions(workflow_id, tenant_id, version);

ALTER TABLE ONLY public.workflow_executions
    ADD CONSTRAINT workflow_executions_workspace_id_fkey FOREIGN KEY (workspace_id, tenant_id) REFERENCES public.workspaces(id, tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY public.workflow_versions
    ADD CONSTRAINT workflow_versions_workflow_id_fkey FOREIGN KEY (workflow_id, tenant_id) REFERENCES public.workflows(id, tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY public.workflows
    ADD CONSTRAINT workflows_workspace_id_fkey FOREIGN KEY (workspace_id, tenant_id) REFERENCES public.workspaces(id, tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY public.workspace_locks
    ADD CONSTRAINT workspace_locks_workspace_id_fkey FOREIGN KEY (workspace_id, tenant_id) REFERENCES public.workspaces(id, tenant_id) ON DELETE CASCADE;

ALTER TABLE ONLY public.workspace_members
    ADD CONSTRAINT workspace_members_workspace_id_fkey FOREIGN KEY (workspace_id, tenant_id) REFERENCES public.workspaces(id, tenant_id) ON DELETE CASCADE;

ALTER TABLE public.agent_token_revocations ENABLE ROW LEVEL SECURITY;

CREATE POLICY agent_token_revocations_load_select ON public.agent_token_revocations FOR SELECT TO tandem_owner USING (true);

CREATE POLICY agent_token_revocations_tenant_isolation ON public.agent_token_revocations USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

ALTER TABLE public.agents ENABLE ROW LEVEL SECURITY;

CREATE POLICY agents_tenant_isolation ON public.agents USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

ALTER TABLE public.audit_log ENABLE ROW LEVEL SECURITY;

CREATE POLICY audit_owner_insert ON public.audit_log FOR INSERT TO tandem_owner WITH CHECK (true);

CREATE POLICY audit_tenant_isolation ON public.audit_log FOR SELECT USING ((tenant_id = public.current_tenant_id()));

ALTER TABLE public.conflict_resolutions ENABLE ROW LEVEL SECURITY;

CREATE POLICY conflicts_tenant_isolation ON public.conflict_resolutions USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

CREATE POLICY delegations_tenant_isolation ON public.task_delegations USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

ALTER TABLE public.document_operations ENABLE ROW LEVEL SECURITY;

ALTER TABLE public.document_snapshots ENABLE ROW LEVEL SECURITY;

CREATE POLICY documents_tenant_isolation ON public.shared_documents USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

CREATE POLICY executions_tenant_isolation ON public.workflow_executions USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

CREATE POLICY members_tenant_isolation ON public.workspace_members USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

CREATE POLICY operations_tenant_isolation ON public.document_operations USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

ALTER TABLE public.shared_documents ENABLE ROW LEVEL SECURITY;

CREATE POLICY snapshots_tenant_isolation ON public.document_snapshots USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

ALTER TABLE public.task_delegations ENABLE ROW LEVEL SECURITY;

ALTER TABLE public.tasks ENABLE ROW LEVEL SECURITY;

CREATE POLICY tasks_failover_sweep_select ON public.tasks FOR SELECT TO tandem_owner USING (((execution_id IS NOT NULL) AND (status = ANY (ARRAY['pending'::public.task_status, 'assigned'::public.task_status, 'accepted'::public.task_status])) AND (deleted_at IS NULL)));

CREATE POLICY tasks_soft_delete ON public.tasks AS RESTRICTIVE FOR SELECT TO tandem_app USING ((deleted_at IS NULL));

CREATE POLICY tasks_tenant_isolation ON public.tasks USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

CREATE POLICY tasks_timeout_sweep_select ON public.tasks FOR SELECT TO tandem_owner USING (((status = ANY (ARRAY['in_progress'::public.task_status, 'timeout'::public.task_status])) AND (deleted_at IS NULL)));

ALTER TABLE public.token_revocations ENABLE ROW LEVEL SECURITY;

CREATE POLICY token_revocations_load_select ON public.token_revocations FOR SELECT TO tandem_owner USING (true);

CREATE POLICY token_revocations_sweep_delete ON public.token_revocations FOR DELETE TO tandem_owner USING ((expires_at < CURRENT_TIMESTAMP));

CREATE POLICY token_revocations_tenant_isolation ON public.token_revocations USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

ALTER TABLE public.webhook_deliveries ENABLE ROW LEVEL SECURITY;

CREATE POLICY webhook_deliveries_due_select ON public.webhook_deliveries FOR SELECT TO tandem_owner USING ((status = ANY (ARRAY['pending'::text, 'failed'::text])));

CREATE POLICY webhook_deliveries_tenant_isolation ON public.webhook_deliveries USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

ALTER TABLE public.webhook_endpoints ENABLE ROW LEVEL SECURITY;

CREATE POLICY webhook_endpoints_due_select ON public.webhook_endpoints FOR SELECT TO tandem_owner USING (enabled);

CREATE POLICY webhook_endpoints_tenant_isolation ON public.webhook_endpoints USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

ALTER TABLE public.webhook_outbox ENABLE ROW LEVEL SECURITY;

CREATE POLICY webhook_outbox_retention_delete ON public.webhook_outbox FOR DELETE TO tandem_owner USING (true);

CREATE POLICY webhook_outbox_retention_select ON public.webhook_outbox FOR SELECT TO tandem_owner USING (true);

CREATE POLICY webhook_outbox_tenant_isolation ON public.webhook_outbox USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

ALTER TABLE public.workflow_executions ENABLE ROW LEVEL SECURITY;

ALTER TABLE public.workflow_versions ENABLE ROW LEVEL SECURITY;

CREATE POLICY workflow_versions_tenant_isolation ON public.workflow_versions USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

ALTER TABLE public.workflows ENABLE ROW LEVEL SECURITY;

CREATE POLICY workflows_tenant_isolation ON public.workflows USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

ALTER TABLE public.workspace_locks ENABLE ROW LEVEL SECURITY;

CREATE POLICY workspace_locks_tenant_isolation ON public.workspace_locks USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

ALTER TABLE public.workspace_members ENABLE ROW LEVEL SECURITY;

ALTER TABLE public.workspaces ENABLE ROW LEVEL SECURITY;

CREATE POLICY workspaces_tenant_isolation ON public.workspaces USING ((tenant_id = public.current_tenant_id())) WITH CHECK ((tenant_id = public.current_tenant_id()));

GRANT ALL ON SCHEMA public TO tandem_owner;
GRANT USAGE ON SCHEMA public TO tandem_app;

GRANT ALL ON TYPE public.delegation_type TO tandem_app;

GRANT ALL ON TYPE public.member_role TO tandem_app;

GRANT ALL ON TYPE public.task_priority TO tandem_app;

GRANT ALL ON TYPE public.task_status TO tandem_app;

GRANT ALL ON TYPE public.workflow_status TO tandem_app;

GRANT ALL ON TYPE public.workflow_type TO tandem_app;

GRANT ALL ON TYPE public.workspace_visibility TO tandem_app;

REVOKE ALL ON FUNCTION public.agent_listed_status(status text, last_seen_at timestamp with time zone, seen_within_s double precision, now timestamp with time zone) FROM PUBLIC;
GRANT ALL ON FUNCTION public.agent_listed_status(status text, last_seen_at timestamp with time zone, seen_within_s double precision, now timestamp with time zone) TO tandem_app;

REVOKE ALL ON FUNCTION public.audit_trigger_function() FROM PUBLIC;

REVOKE ALL ON FUNCTION public.claim_agent_slot(capability text, seen_within_s double precision, exclude text) FROM PUBLIC;
GRANT ALL ON FUNCTION public.claim_agent_slot(capability text, seen_within_s double precision, exclude text) TO tandem_app;

REVOKE ALL ON FUNCTION public.current_tenant_id() FROM PUBLIC;
GRANT ALL ON FUNCTION public.current_tenant_id() TO tandem_app;

REVOKE ALL ON FUNCTION public.jsonb_merge_recursive(target jsonb, source jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION public.jsonb_merge_recursive(target jsonb, source jsonb) TO tandem_app;

REVOKE ALL ON FUNCTION public.live_token_revocations() FROM PUBLIC;
GRANT ALL ON FUNCTION public.live_token_revocations() TO tandem_app;

REVOKE ALL ON FUNCTION public.lock_allows_write(locked boolean, holder text, expires_at timestamp with time zone, lock_fence bigint, writer text, fence bigint) FROM PUBLIC;
GRANT ALL ON FUNCTION public.lock_allows_write(locked boolean, holder text, expires_at timestamp with time zone, lock_fence bigint, writer text, fence bigint) TO tandem_app;

REVOKE ALL ON FUNCTION public.soft_delete_task(task_id uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION public.soft_delete_task(task_id uuid) TO tandem_app;

REVOKE ALL ON FUNCTION public.sweep_task_timeouts(max_rows integer) FROM PUBLIC;
GRANT ALL ON FUNCTION public.sweep_task_timeouts(max_rows integer) TO tandem_app;

REVOKE ALL ON FUNCTION public.sweep_webhook_outbox(before timestamp with time zone, max_rows integer) FROM PUBLIC;
GRANT ALL ON FUNCTION public.sweep_webhook_outbox(before timestamp with time zone, max_rows integer) TO tandem_app;

REVOKE ALL ON FUNCTION public.tandem_append_batch(p_tenants uuid[], p_docs uuid[], p_agents text[], p_fences bigint[], p_types text[], p_clocks jsonb[], p_updates bytea[], p_node text, p_expects bigint[]) FROM PUBLIC;
GRANT ALL ON FUNCTION public.tandem_append_batch(p_tenants uuid[], p_docs uuid[], p_agents text[], p_fences bigint[], p_types text[], p_clocks jsonb[], p_updates bytea[], p_node text, p_expects bigint[]) TO tandem_app;

REVOKE ALL ON FUNCTION public.tandem_ensure_audit_partition(for_month date) FROM PUBLIC;

REVOKE ALL ON FUNCTION public.tandem_maintain_partitions() FROM PUBLIC;
GRANT ALL ON FUNCTION public.tandem_maintain_partitions() TO tandem_app;

REVOKE ALL ON FUNCTION public.tandem_ops_hint(p_doc uuid, p_seq bigint, p_node text, p_agents text[], p_updates bytea[], p_types text[]) FROM PUBLIC;
GRANT ALL ON FUNCTION public.tandem_ops_hint(p_doc uuid, p_seq bigint, p_node text, p_agents text[], p_updates bytea[], p_types text[]) TO tandem_app;

REVOKE ALL ON FUNCTION public.tandem_uuidv7() FROM PUBLIC;
GRANT ALL ON FUNCTION public.tandem_uuidv7() TO tandem_app;

REVOKE ALL ON FUNCTION public.tandem_webhook_emit(p_workspace uuid, p_type text, p_payload jsonb, p_document uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION public.tandem_webhook_emit(p_workspace uuid, p_type text, p_payload jsonb, p_document uuid) TO tandem_app;

REVOKE ALL ON FUNCTION public.tenants_with_due_webhooks(max_tenants integer) FROM PUBLIC;
GRANT ALL ON FUNCTION public.tenants_with_due_webhooks(max_tenants integer) TO tandem_app;

REVOKE ALL ON FUNCTION public.tenants_with_open_step_tasks(after uuid, max_tenants integer) FROM PUBLIC;
GRANT ALL ON FUNCTION public.tenants_with_open_step_tasks(after uuid, max_tenants integer) TO tandem_app;

REVOKE ALL ON FUNCTION public.tenants_with_overdue_tasks(max_tenants integer) FROM PUBLIC;
GRANT ALL ON FUNCTION public.tenants_with_overdue_tasks(max_tenants integer) TO tandem_app;

REVOKE ALL ON FUNCTION public.update_updated_at_column() FROM PUBLIC;

REVOKE ALL ON FUNCTION public.validate_jsonb_keys(data jsonb, required_keys text[]) FROM PUBLIC;
GRANT ALL ON FUNCTION public.validate_jsonb_keys(data jsonb, required_keys text[]) TO tandem_app;

GRANT SELECT,INSERT,UPDATE ON TABLE public.agent_token_revocations TO tandem_app;

GRANT SELECT,INSERT,UPDATE ON TABLE public.agents TO tandem_app;

GRANT SELECT ON TABLE public.audit_log TO tandem_app;

GRANT SELECT,INSERT,UPDATE ON TABLE public.conflict_resolutions TO tandem_app;

GRANT SELECT,INSERT ON TABLE public.document_operations TO tandem_app;

GRANT SELECT,INSERT,DELETE ON TABLE public.document_snapshots TO tandem_app;

GRANT USAGE ON SEQUENCE public.lock_fence_seq TO tandem_app;

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE public.shared_documents TO tandem_app;

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE public.task_delegations TO tandem_app;

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE public.tasks TO tandem_app;

GRANT SELECT,INSERT,UPDATE ON TABLE public.token_revocations TO tandem_app;

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE public.workflow_executions TO tandem_app;

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE public.workflows TO tandem_app;

GRANT SELECT ON TABLE public.v_active_workflows TO tandem_app;

GRANT SELECT ON TABLE public.v_agent_workload TO tandem_app;

GRANT SELECT ON TABLE public.v_task_statistics TO tandem_app;

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE public.workspace_members TO tandem_app;

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE public.workspaces TO tandem_app;

GRANT SELECT ON TABLE public.v_workspace_activity TO tandem_app;

GRANT SELECT,INSERT,UPDATE ON TABLE public.webhook_deliveries TO tandem_app;

GRANT USAGE ON SEQUENCE public.webhook_deliveries_id_seq TO tandem_app;

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE public.webhook_endpoints TO tandem_app;

GRANT SELECT,INSERT,UPDATE ON TABLE public.webhook_outbox TO tandem_app;

GRANT USAGE ON SEQUENCE public.webhook_outbox_id_seq TO tandem_app;

GRANT SELECT,INSERT ON TABLE public.workflow_versions TO tandem_app;

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE public.workspace_locks TO tandem_app;
