-- migrate:up
-- The fan-out hint of document operations is built by one function, `tandem_ops_hint`, which
-- server/cluster/hints.py decodes (its tests call this function and decode what it returns). The format
-- and its limits are unchanged: `{"k": "ops", "d": doc_id, "s": last seq, "n": node_id, "t":
-- commit clock in seconds}`, plus `"o"` (the operations, each [agent, base64 update, type], in
-- seq order) when their updates total at most 4,000 bytes and the whole payload stays within
-- 7,900 bytes (NOTIFY's limit is 8,000). Returns the payload for `pg_notify`.
-- No SET search_path (it would cost every call a configuration save and restore): it uses only
-- pg_catalog, which is searched first, and its one caller fixes the path.
CREATE FUNCTION tandem_ops_hint(
    p_doc uuid, p_seq bigint, p_node text, p_agents text[], p_updates bytea[], p_types text[]
) RETURNS text
    LANGUAGE plpgsql VOLATILE
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
REVOKE ALL ON FUNCTION tandem_ops_hint(uuid, bigint, text, text[], bytea[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tandem_ops_hint(uuid, bigint, text, text[], bytea[], text[]) TO tandem_app;

-- tandem_append_batch as in 0019, except that its hint comes from tandem_ops_hint (each
-- document's kept operations passed in seq order).
CREATE OR REPLACE FUNCTION tandem_append_batch(
    p_tenants uuid[], p_docs uuid[], p_agents text[], p_fences bigint[], p_types text[],
    p_clocks jsonb[], p_updates bytea[], p_node text
) RETURNS TABLE (seq bigint, refused text, holder text)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public
AS $$
DECLARE
    cur_tenant uuid;
    -- Per operation, aligned with the arguments: NULL where another tenant's pass decides.
    t_seqs bigint[];
    t_refused text[];
    t_holders text[];
    t_docs uuid[];     -- the documents with operations kept, and their new heads
    t_heads bigint[];
    seqs bigint[];
    refusals text[];
    holders text[];
    hints integer;
BEGIN
    FOR cur_tenant IN SELECT DISTINCT x FROM unnest(p_tenants) AS x ORDER BY x LOOP
        PERFORM set_config('app.current_tenant', cur_tenant::text, true);

        WITH ops AS (
            SELECT o.i, o.doc, o.agent, o.fence, o.tenant = cur_tenant AS mine
              FROM unnest(p_tenants, p_docs, p_agents, p_fences) WITH ORDINALITY AS o(tenant, doc, agent, fence, i)
        ), locked AS MATERIALIZED (
            SELECT d.id, d.head_seq, d.is_locked, d.locked_by, d.lock_expires_at, d.lock_fence
              FROM public.shared_documents d
             WHERE d.id = ANY (ARRAY(SELECT DISTINCT ops.doc FROM ops WHERE ops.mine))
             ORDER BY d.id
               FOR UPDATE OF d
        ), judged AS (
            SELECT o.i, o.doc, o.fence, o.mine, d.id IS NOT NULL AS found, d.head_seq,
                   o.mine AND d.id IS NOT NULL AND coalesce(public.lock_allows_write(
                       d.is_locked, d.locked_by, d.lock_expires_at, d.lock_fence, o.agent, o.fence), false) AS ok,
                   CASE WHEN d.is_locked AND d.lock_expires_at > now() THEN d.locked_by END AS live_holder
              FROM ops o LEFT JOIN locked d ON o.mine AND d.id = o.doc
        ), decided AS (
            SELECT j.i, j.doc,
                   CASE WHEN j.ok THEN j.head_seq + count(*) FILTER (WHERE j.ok) OVER (PARTITION BY j.doc ORDER BY j.i) END AS new_seq,
                   CASE WHEN NOT j.mine OR j.ok THEN NULL
                        WHEN NOT j.found THEN 'not_found'
                        WHEN j.fence IS NULL THEN 'locked'
                        ELSE 'stale_fence' END AS why,
                   CASE WHEN j.mine AND j.found AND NOT j.ok THEN j.live_holder END AS who
              FROM judged j
        ), heads AS (
            SELECT dd.doc, max(dd.new_seq) AS head FROM decided dd WHERE dd.new_seq IS NOT NULL GROUP BY dd.doc
        )
        SELECT array_agg(dd.new_seq ORDER BY dd.i), array_agg(dd.why ORDER BY dd.i), array_agg(dd.who ORDER BY dd.i),
               (SELECT array_agg(h.doc) FROM heads h), (SELECT array_agg(h.head) FROM heads h)
          INTO t_seqs, t_refused, t_holders, t_docs, t_heads
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
            seqs := t_seqs; refusals := t_refused; holders := t_holders;
        ELSE
            SELECT array_agg(coalesce(m.s, m.ts) ORDER BY m.i), array_agg(coalesce(m.r, m.tr) ORDER BY m.i),
                   array_agg(coalesce(m.h, m.th) ORDER BY m.i)
              INTO seqs, refusals, holders
              FROM unnest(seqs, refusals, holders, t_seqs, t_refused, t_holders) WITH ORDINALITY AS m(s, r, h, ts, tr, th, i);
        END IF;
    END LOOP;

    RETURN QUERY SELECT r.s, r.why, r.who FROM unnest(seqs, refusals, holders) WITH ORDINALITY AS r(s, why, who, i) ORDER BY r.i;
END;
$$;

-- migrate:down
-- 0019's body.
CREATE OR REPLACE FUNCTION tandem_append_batch(
    p_tenants uuid[], p_docs uuid[], p_agents text[], p_fences bigint[], p_types text[],
    p_clocks jsonb[], p_updates bytea[], p_node text
) RETURNS TABLE (seq bigint, refused text, holder text)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public
AS $$
DECLARE
    cur_tenant uuid;
    -- Per operation, aligned with the arguments: NULL where another tenant's pass decides.
    t_seqs bigint[];
    t_refused text[];
    t_holders text[];
    t_docs uuid[];     -- the documents with operations kept, and their new heads
    t_heads bigint[];
    seqs bigint[];
    refusals text[];
    holders text[];
    hints integer;
BEGIN
    FOR cur_tenant IN SELECT DISTINCT x FROM unnest(p_tenants) AS x ORDER BY x LOOP
        PERFORM set_config('app.current_tenant', cur_tenant::text, true);

        WITH ops AS (
            SELECT o.i, o.doc, o.agent, o.fence, o.tenant = cur_tenant AS mine
              FROM unnest(p_tenants, p_docs, p_agents, p_fences) WITH ORDINALITY AS o(tenant, doc, agent, fence, i)
        ), locked AS MATERIALIZED (
            SELECT d.id, d.head_seq, d.is_locked, d.locked_by, d.lock_expires_at, d.lock_fence
              FROM public.shared_documents d
             WHERE d.id = ANY (ARRAY(SELECT DISTINCT ops.doc FROM ops WHERE ops.mine))
             ORDER BY d.id
               FOR UPDATE OF d
        ), judged AS (
            SELECT o.i, o.doc, o.fence, o.mine, d.id IS NOT NULL AS found, d.head_seq,
                   o.mine AND d.id IS NOT NULL AND coalesce(public.lock_allows_write(
                       d.is_locked, d.locked_by, d.lock_expires_at, d.lock_fence, o.agent, o.fence), false) AS ok,
                   CASE WHEN d.is_locked AND d.lock_expires_at > now() THEN d.locked_by END AS live_holder
              FROM ops o LEFT JOIN locked d ON o.mine AND d.id = o.doc
        ), decided AS (
            SELECT j.i, j.doc,
                   CASE WHEN j.ok THEN j.head_seq + count(*) FILTER (WHERE j.ok) OVER (PARTITION BY j.doc ORDER BY j.i) END AS new_seq,
                   CASE WHEN NOT j.mine OR j.ok THEN NULL
                        WHEN NOT j.found THEN 'not_found'
                        WHEN j.fence IS NULL THEN 'locked'
                        ELSE 'stale_fence' END AS why,
                   CASE WHEN j.mine AND j.found AND NOT j.ok THEN j.live_holder END AS who
              FROM judged j
        ), heads AS (
            SELECT dd.doc, max(dd.new_seq) AS head FROM decided dd WHERE dd.new_seq IS NOT NULL GROUP BY dd.doc
        )
        SELECT array_agg(dd.new_seq ORDER BY dd.i), array_agg(dd.why ORDER BY dd.i), array_agg(dd.who ORDER BY dd.i),
               (SELECT array_agg(h.doc) FROM heads h), (SELECT array_agg(h.head) FROM heads h)
          INTO t_seqs, t_refused, t_holders, t_docs, t_heads
          FROM decided dd;

        IF t_docs IS NOT NULL THEN
            WITH kept AS MATERIALIZED (
                SELECT k.doc, k.agent, k.op_type, k.clock, k.upd, k.s,
                       sum(octet_length(k.upd)) OVER (PARTITION BY k.doc ORDER BY k.s) AS running_bytes
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
                -- Small operations ride along ("o": [agent, base64 update, type] for the seqs up to
                -- "s"), so followers need not read them back; the payload stays under NOTIFY's 8,000
                -- bytes, or the hint goes without them. Only the first 4,000 bytes are encoded.
                SELECT kept.doc, max(kept.s) AS head,
                       CASE WHEN sum(octet_length(kept.upd)) <= 4000 THEN
                           json_agg(json_build_array(kept.agent, translate(encode(kept.upd, 'base64'), E'\n', ''), kept.op_type)
                                    ORDER BY kept.s) FILTER (WHERE kept.running_bytes <= 4000)
                       END AS carried
                  FROM kept
                 WHERE p_node IS NOT NULL
                 GROUP BY kept.doc
            ), hint AS (
                SELECT json_build_object('k', 'ops', 'd', p.doc, 's', p.head, 'n', p_node,
                           't', round(extract(epoch FROM clock_timestamp())::numeric, 6)) AS bare,
                       p.carried
                  FROM per_doc p
            )
            SELECT count(pg_notify('tandem', CASE
                       WHEN h.carried IS NOT NULL AND octet_length((h.bare::jsonb || jsonb_build_object('o', h.carried))::text) <= 7900
                       THEN (h.bare::jsonb || jsonb_build_object('o', h.carried))::text
                       ELSE h.bare::text END))
              INTO hints
              FROM hint h;
        END IF;

        IF seqs IS NULL THEN
            seqs := t_seqs; refusals := t_refused; holders := t_holders;
        ELSE
            SELECT array_agg(coalesce(m.s, m.ts) ORDER BY m.i), array_agg(coalesce(m.r, m.tr) ORDER BY m.i),
                   array_agg(coalesce(m.h, m.th) ORDER BY m.i)
              INTO seqs, refusals, holders
              FROM unnest(seqs, refusals, holders, t_seqs, t_refused, t_holders) WITH ORDINALITY AS m(s, r, h, ts, tr, th, i);
        END IF;
    END LOOP;

    RETURN QUERY SELECT r.s, r.why, r.who FROM unnest(seqs, refusals, holders) WITH ORDINALITY AS r(s, why, who, i) ORDER BY r.i;
END;
$$;

REVOKE EXECUTE ON FUNCTION tandem_ops_hint(uuid, bigint, text, text[], bytea[], text[]) FROM tandem_app;
DROP FUNCTION tandem_ops_hint(uuid, bigint, text, text[], bytea[], text[]);
