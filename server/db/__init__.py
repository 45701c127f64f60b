"""The database: reaching it (DATABASE_URL or the embedded PostgreSQL), migrations, the tenant
transaction every call goes through, and the named statements of `sql/`."""
