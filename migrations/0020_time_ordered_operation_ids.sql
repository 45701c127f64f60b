-- migrate:up
-- The operation log grows by every update; two of its indexes cost each append more than
-- they need to (measured: docs/performance.md, "Time-ordered operation ids").
--
-- 1. Operation ids are time-ordered (the UUIDv7 layout: 48 bits of Unix milliseconds, then
--    random bits). With gen_random_uuid() every append wrote into a random leaf of both id
--    indexes (the primary key and UNIQUE (id, tenant_id)); after each checkpoint the first
--    change of a page logs the whole 8 kB page, so at 1,000,000 logged operations an append
--    wrote 6-11 kB of WAL per row, and a log larger than memory would read a cold page per
--    index. Time-ordered ids land on the rightmost leaves: under 2 kB of WAL per row. The id is
--    still unique and hard to guess (74 random bits); PostgreSQL 18's uuidv7() is the same.
CREATE FUNCTION tandem_uuidv7() RETURNS uuid
    LANGUAGE sql VOLATILE PARALLEL SAFE
    SET search_path = pg_catalog
AS $$
    -- A v4 uuid with its first 6 bytes replaced by the time and its version nibble 4 -> 7.
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
               PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
               FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;
REVOKE ALL ON FUNCTION tandem_uuidv7() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tandem_uuidv7() TO tandem_app;  -- the default runs as the inserter
ALTER TABLE document_operations ALTER COLUMN id SET DEFAULT tandem_uuidv7();

-- 2. idx_operations_not_applied (document_id) WHERE is_applied = false held every row: nothing
--    sets is_applied (the log is append-only and the server applies an update before logging
--    it), and no query reads the index. Operations by document are served by
--    UNIQUE (document_id, sequence_number).
DROP INDEX idx_operations_not_applied;

-- migrate:down
CREATE INDEX idx_operations_not_applied ON document_operations (document_id) WHERE is_applied = false;
ALTER TABLE document_operations ALTER COLUMN id SET DEFAULT gen_random_uuid();
REVOKE EXECUTE ON FUNCTION tandem_uuidv7() FROM tandem_app;
DROP FUNCTION tandem_uuidv7();
