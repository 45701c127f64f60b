-- migrate:up
-- Appending cheaper for PostgreSQL (measured: docs/performance.md, "Appending in PostgreSQL").
--
-- 1. Appends leave `updated_at` alone. Every batch advances head_seq; the BEFORE UPDATE trigger
--    also set updated_at, which is indexed, so no such update could be HOT: each one added an
--    entry to all six indexes of shared_documents, and the bloat slowed every later lookup of
--    the row (the foreign-key check of each appended operation among them). updated_at now
--    moves on every change of the row except those that advance head_seq.
DROP TRIGGER update_documents_updated_at ON shared_documents;
CREATE TRIGGER update_documents_updated_at
    BEFORE UPDATE ON shared_documents
    FOR EACH ROW
    WHEN (OLD.head_seq IS NOT DISTINCT FROM NEW.head_seq)
    EXECUTE FUNCTION update_updated_at_column();

-- 2. tandem_append_batch, set-based (same arguments, same result rows as 0018). 0018 ran three
--    or four statements per document of the batch, and each statement's fixed cost (planning,
--    executor start, constraint and trigger set-up) was most of PostgreSQL's CPU per update.
--    Now a batch costs two statements per tenant, however many documents it holds:
--    a. lock the tenant's documents in id order (tenants are taken in order too, so two writers
--       cannot deadlock), judge each operation against its document's lock (`lock_allows_write`)
--       and number the allowed ones from the document's head_seq;
--    b. set each document's new head_seq, insert the operations, and send one fan-out hint per
--       document (server/cluster/fanout.py), delivered only if this commits.
--    Operations of one document keep their order in the arrays; they need not be contiguous.
--    Not SECURITY DEFINER: it runs as the app role, under the tenant policies of each tenant
--    (set transaction-locally, as tenant_transaction does). Returns one row per operation, in
--    order: its seq, or why it was refused ('locked', 'stale_fence', 'not_found') and the live
--    lock's holder.
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

-- migrate:down
DROP TRIGGER update_documents_updated_at ON shared_documents;
CREATE TRIGGER update_documents_updated_at
    BEFORE UPDATE ON shared_documents
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

-- 0018's body.
CREATE OR REPLACE FUNCTION tandem_append_batch(
    p_tenants uuid[], p_docs uuid[], p_agents text[], p_fences bigint[], p_types text[],
    p_clocks jsonb[], p_updates bytea[], p_node text
) RETURNS TABLE (seq bigint, refused text, holder text)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public
AS $$
DECLARE
    n integer := coalesce(cardinality(p_docs), 0);
    lo integer := 1;
    hi integer;
    head bigint;
    allowed boolean[];
    live_holder text;
    kept integer;
    next_seq bigint;
    k integer;
    hint text;
    with_ops text;
BEGIN
    WHILE lo <= n LOOP
        hi := lo;
        WHILE hi < n AND p_docs[hi + 1] = p_docs[lo] LOOP
            hi := hi + 1;
        END LOOP;
        PERFORM set_config('app.current_tenant', p_tenants[lo]::text, true);

        UPDATE public.shared_documents d
           SET head_seq = d.head_seq + (
               SELECT count(*) FROM unnest(p_agents[lo:hi], p_fences[lo:hi]) AS o(agent, fence)
                WHERE public.lock_allows_write(d.is_locked, d.locked_by, d.lock_expires_at, d.lock_fence, o.agent, o.fence))
         WHERE d.id = p_docs[lo]
        RETURNING d.head_seq,
            ARRAY(SELECT public.lock_allows_write(d.is_locked, d.locked_by, d.lock_expires_at, d.lock_fence, o.agent, o.fence)
                    FROM unnest(p_agents[lo:hi], p_fences[lo:hi]) WITH ORDINALITY AS o(agent, fence, i)
                   ORDER BY o.i),
            CASE WHEN d.is_locked AND d.lock_expires_at > now() THEN d.locked_by END
          INTO head, allowed, live_holder;

        IF NOT FOUND THEN
            FOR k IN lo .. hi LOOP
                seq := NULL; refused := 'not_found'; holder := NULL;
                RETURN NEXT;
            END LOOP;
        ELSE
            kept := (SELECT count(*) FROM unnest(allowed) AS a(ok) WHERE a.ok);
            IF kept > 0 THEN
                INSERT INTO public.document_operations
                    (tenant_id, document_id, sequence_number, agent_id, operation_type, vector_clock, "update")
                SELECT p_tenants[lo], p_docs[lo], head - kept + row_number() OVER (ORDER BY o.i),
                       p_agents[o.i], p_types[o.i], p_clocks[o.i], p_updates[o.i]
                  FROM generate_series(lo, hi) AS o(i)
                 WHERE allowed[o.i - lo + 1];
                IF p_node IS NOT NULL THEN
                    -- The fan-out hint (server/cluster/fanout.py), delivered only if this commits. Small
                    -- operations ride along ("o": [agent, base64 update, type] for the seqs up to
                    -- "s"), so followers need not read them back; the payload stays under
                    -- NOTIFY's 8,000 bytes, or the hint goes without them.
                    hint := json_build_object('k', 'ops', 'd', p_docs[lo], 's', head, 'n', p_node,
                        't', round(extract(epoch FROM clock_timestamp())::numeric, 6));
                    IF (SELECT sum(octet_length(p_updates[o.i])) FROM generate_series(lo, hi) AS o(i)
                         WHERE allowed[o.i - lo + 1]) <= 4000 THEN
                        with_ops := (hint::jsonb || jsonb_build_object('o', (
                            SELECT jsonb_agg(jsonb_build_array(p_agents[o.i],
                                       translate(encode(p_updates[o.i], 'base64'), E'\n', ''), p_types[o.i])
                                       ORDER BY o.i)
                              FROM generate_series(lo, hi) AS o(i) WHERE allowed[o.i - lo + 1])))::text;
                        IF octet_length(with_ops) <= 7900 THEN
                            hint := with_ops;
                        END IF;
                    END IF;
                    PERFORM pg_notify('tandem', hint::text);
                END IF;
            END IF;
            next_seq := head - kept;
            FOR k IN lo .. hi LOOP
                IF allowed[k - lo + 1] THEN
                    next_seq := next_seq + 1;
                    seq := next_seq; refused := NULL; holder := NULL;
                ELSE
                    seq := NULL; holder := live_holder;
                    refused := CASE WHEN p_fences[k] IS NULL THEN 'locked' ELSE 'stale_fence' END;
                END IF;
                RETURN NEXT;
            END LOOP;
        END IF;
        lo := hi + 1;
    END LOOP;
END;
$$;
