-- migrate:up
-- One call appends a whole group-commit batch (server/documents/committer.py), instead of three statements
-- per document: for each document, in the order given (the caller sorts by document id, so two
-- writers lock rows in the same order), bind its tenant, reserve sequence numbers for the
-- operations its lock allows (`lock_allows_write`), insert them, and
-- send the fan-out hint. Operations of one document are contiguous in the arrays.
-- Not SECURITY DEFINER: it runs as the app role, under the tenant policies of each document's
-- tenant (set transaction-locally, as tenant_transaction does).
-- Returns one row per operation, in order: its seq, or why it was refused ('locked',
-- 'stale_fence', 'not_found') and the live lock's holder.
CREATE FUNCTION tandem_append_batch(
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

REVOKE ALL ON FUNCTION tandem_append_batch(uuid[], uuid[], text[], bigint[], text[], jsonb[], bytea[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tandem_append_batch(uuid[], uuid[], text[], bigint[], text[], jsonb[], bytea[], text) TO tandem_app;

-- migrate:down
REVOKE EXECUTE ON FUNCTION tandem_append_batch(uuid[], uuid[], text[], bigint[], text[], jsonb[], bytea[], text) FROM tandem_app;
DROP FUNCTION tandem_append_batch(uuid[], uuid[], text[], bigint[], text[], jsonb[], bytea[], text);
