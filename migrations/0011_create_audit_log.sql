-- migrate:up
-- Audit trail, one partition per month (audit_log_YYYY_MM, UTC months) plus a DEFAULT partition
-- that catches any row no monthly partition covers (NOTES 15). The primary key includes the
-- partition column (NOTES 18). Only the audit trigger writes here (NOTES 5): the app may read
-- its own tenant's rows through the parent and nothing else.
CREATE TABLE audit_log (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL,
    table_name varchar(50) NOT NULL,
    record_id uuid NOT NULL,
    action varchar(20) NOT NULL
        CONSTRAINT audit_log_action_check CHECK (action IN ('INSERT', 'UPDATE', 'DELETE', 'SELECT')),
    old_data jsonb,
    new_data jsonb,
    changed_fields text[],
    changed_by varchar(255) NOT NULL,
    ip_address inet,
    user_agent text,
    changed_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT audit_log_pkey PRIMARY KEY (id, changed_at)
) PARTITION BY RANGE (changed_at);

CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT;

CREATE INDEX idx_audit_log_tenant_table ON audit_log (tenant_id, table_name);
CREATE INDEX idx_audit_log_record ON audit_log (record_id);
CREATE INDEX idx_audit_log_changed_at ON audit_log (changed_at DESC);
CREATE INDEX idx_audit_log_changed_by ON audit_log (changed_by);

-- NOTES 4: policies on the parent do not cover direct reads of a partition, so the app gets no
-- privilege on any partition (the functions below create them as the owner, with no grant).
ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;

-- NOTES 5: reading only; there is no UPDATE or DELETE policy, so nobody bound by RLS can edit
-- or remove audit rows.
CREATE POLICY audit_tenant_isolation ON audit_log
    FOR SELECT
    USING (tenant_id = current_tenant_id());

-- The audit trigger runs as the owner (SECURITY DEFINER); RLS is forced on the owner too.
CREATE POLICY audit_owner_insert ON audit_log
    FOR INSERT
    TO tandem_owner
    WITH CHECK (true);

-- Creates the monthly partition holding `for_month` unless it exists; returns true when created.
-- Rows of that month already in the DEFAULT partition are moved into the new partition (the
-- DEFAULT partition must not hold rows of a range being attached). Callers serialise on an
-- advisory lock, so concurrent calls from several nodes create each partition once.
CREATE FUNCTION tandem_ensure_audit_partition(for_month date) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
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
$$;

-- This month's and next month's partitions (UTC); returns how many were created. The server
-- calls it at start and on a schedule; idempotent and safe to call from several nodes at once.
CREATE FUNCTION tandem_maintain_partitions() RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public
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

-- NOTES 11: the app reads its tenant's audit rows through the parent and may run maintenance;
-- it has no privilege on partitions nor on tandem_ensure_audit_partition (any month).
REVOKE ALL ON FUNCTION tandem_ensure_audit_partition(date) FROM PUBLIC;
REVOKE ALL ON FUNCTION tandem_maintain_partitions() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tandem_maintain_partitions() TO tandem_app;
GRANT SELECT ON audit_log TO tandem_app;

-- migrate:down
REVOKE SELECT ON audit_log FROM tandem_app;
REVOKE EXECUTE ON FUNCTION tandem_maintain_partitions() FROM tandem_app;
DROP FUNCTION tandem_maintain_partitions();
DROP FUNCTION tandem_ensure_audit_partition(date);
DROP POLICY audit_owner_insert ON audit_log;
DROP POLICY audit_tenant_isolation ON audit_log;
ALTER TABLE audit_log NO FORCE ROW LEVEL SECURITY;
ALTER TABLE audit_log DISABLE ROW LEVEL SECURITY;
-- Drops the DEFAULT partition and every monthly partition with it.
DROP TABLE audit_log;
