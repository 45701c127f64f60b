-- migrate:up
-- agent_listed_status is STABLE, not IMMUTABLE: its body subtracts an interval from a
-- timestamptz, a STABLE operator, and PostgreSQL inlines an IMMUTABLE SQL function only when
-- its body is immutable too. Declared IMMUTABLE it ran as a separate SQL function call per agent
-- row (ten per claim_agent_slot call with ten candidates, and per row of every agent listing);
-- STABLE, it is inlined into the caller's expression. Its result for given arguments is the same.
ALTER FUNCTION agent_listed_status(text, timestamptz, double precision, timestamptz) STABLE;

-- migrate:down
ALTER FUNCTION agent_listed_status(text, timestamptz, double precision, timestamptz) IMMUTABLE;
