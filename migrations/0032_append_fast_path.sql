-- migrate:up
-- tandem_append_batch gains a fast path for the batch most commits carry: one tenant's
-- operations on one document that no live lock holds, without fences or an expected head. It
-- stores them with one row lock, one UPDATE, one INSERT and the hint, skipping the general
-- path's per-operation judging (which gives the same outcome for such a batch: every operation
-- stored, in order). Any other batch, or a locked or missing document, takes the general path
-- unchanged. Signature and results are 0029's.
CREATE OR REPLACE FUNCTION tandem_append_batch(
    p_tenants uuid[], p_docs uuid[], p_agents text[], p_fences bigint[], p_types text[],
    p_clocks jsonb[], p_updates bytea[], p_node text, p_expects bigint[] DEFAULT NULL
) RETURNS TABLE (seq bigint, refused text, holder text, head bigint)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public
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

-- migrate:down
-- 0029's function.
CREATE OR REPLACE FUNCTION tandem_append_batch(
    p_tenants uuid[], p_docs uuid[], p_agents text[], p_fences bigint[], p_types text[],
    p_clocks jsonb[], p_updates bytea[], p_node text, p_expects bigint[] DEFAULT NULL
) RETURNS TABLE (seq bigint, refused text, holder text, head bigint)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public
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
BEGIN
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
