"""Every database call of the document path, over the named statements in `server/db/sql/*.sql`.

All calls run as the application role inside `tenant_transaction`, which binds the tenant
transaction-locally (`set_config(..., true)`), so a pooled connection never carries one
tenant's context into the next transaction. Sequence numbers are per document and contiguous:
they are reserved under the document's row lock in the writer's own transaction, so they follow
commit order and a reader catching up with `seq > last_seen` never misses a row.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

import asyncpg

from server.core.errors import ErrorCode, TandemError

_NAME = re.compile(r"^-- (name|projection): (\w+)\n(?:--[^\n]*\n)*", re.MULTILINE)
_USE = re.compile(r"\{(\w+)(?: as (\w+))?\}")
_ALIAS = re.compile(r"^(?:(?P<expr>.+?)\s+AS\s+)?(?P<name>\w+)$", re.DOTALL | re.IGNORECASE)


def _prefixed(projection: str, prefix: str) -> str:
    """`projection` with every column's name prefixed (`{execution as x_}`): the columns of
    two projections in one row without a clash. A column is `expr AS name` or a bare name;
    columns are split at the commas outside parentheses."""
    columns, depth, start = [], 0, 0
    for i, char in enumerate(projection):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            columns.append(projection[start:i])
            start = i + 1
    columns.append(projection[start:])
    out = []
    for column in columns:
        match = _ALIAS.match(column.strip())
        if match is None:
            raise RuntimeError(f"a projection column needs a name to prefix: {column.strip()!r}")
        expr, name = match.group("expr") or match.group("name"), match.group("name")
        out.append(f"{expr} AS {prefix}{name}")
    return ", ".join(out)


def _load_queries() -> dict[str, str]:
    """Every named statement of every `server/db/sql/*.sql` file (one file per concern), with the
    projections it names (`{task}`: server/db/sql/projections.sql) expanded; `{task as p_}`
    names each column with the prefix `p_`."""
    queries: dict[str, str] = {}
    projections: dict[str, str] = {}
    for path in sorted(resources.files("server.db.sql").iterdir(), key=lambda f: f.name):
        if not path.name.endswith(".sql"):
            continue
        text = path.read_text()
        starts = list(_NAME.finditer(text))
        for i, match in enumerate(starts):
            kind, name = match.groups()
            found = queries if kind == "name" else projections
            if name in found:
                raise RuntimeError(f"{kind} {name} is defined twice (server/db/sql/{path.name})")
            end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
            found[name] = text[match.end() : end].strip()

    def expand(use: re.Match[str]) -> str:
        projection = projections.get(use.group(1))
        if projection is None:
            return use.group(0)  # other braces: SQL's own ('{}')
        return projection if use.group(2) is None else _prefixed(projection, use.group(2))

    return {name: _USE.sub(expand, sql) for name, sql in queries.items()}


Q = _load_queries()


class NewOperation(NamedTuple):
    """An operation a room's document applied (`Room.apply_update`), not yet sequenced. A named
    tuple, not a frozen dataclass: one is built per update, in 0.75 us instead of 2.4 (frozen
    dataclasses set each field through object.__setattr__)."""

    agent_id: str
    op_type: str
    vector_clock: str  # JSON text of the operation's own clock (`Applied.clock_text`)
    update: bytes
    # Where it came from (not stored): the connection to acknowledge, and its request id.
    origin: str | None = None
    request_id: str | int | None = None
    fence: int | None = None  # the fencing token the writer presented (docs/protocol.md#121)
    # The head the writer expects the document to have (an HTTP If-Match): the append refuses
    # the operation with `head_moved` unless it is the head in the log (migration 0029).
    expect_head: int | None = None


@dataclass(frozen=True)
class LockRefused:
    """An operation the document's lock did not allow: nothing of it was stored."""

    code: ErrorCode  # LOCKED (someone else's live lock) or STALE_FENCE (a fence not the live one)
    holder: str | None  # the live lock's holder, if any


@dataclass(frozen=True)
class LoggedOperation:
    """A row of the log, as the rooms need it to catch up."""

    seq: int
    agent_id: str
    op_type: str
    update: bytes


@asynccontextmanager
async def tenant_transaction(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, agent_id: str | None = None, client_ip: str | None = None,
    *, snapshot: bool = False,
) -> AsyncIterator[asyncpg.Connection]:
    """A transaction scoped to one tenant (RLS), with the actor recorded for the audit trail:
    the one way the server reaches tenant data. `snapshot`: read-only and repeatable-read, one
    view of the database however many statements read it (a replay paging through the log)."""
    options = {"isolation": "repeatable_read", "readonly": True} if snapshot else {}
    async with pool.acquire() as conn, conn.transaction(**options):
        await conn.execute(Q["set_context"], str(tenant_id), agent_id, client_ip)
        yield conn


async def set_tenant(conn: asyncpg.Connection, tenant_id: uuid.UUID, agent_id: str | None = None) -> None:
    """Switch the tenant inside an open transaction (a group commit spanning tenants)."""
    await conn.execute(Q["set_context"], str(tenant_id), agent_id, None)


async def append_operations(conn: asyncpg.Connection, doc_id: uuid.UUID, ops: Sequence[NewOperation]) -> list[int | LockRefused]:
    """Sequence and insert `ops` for one document of the current tenant in the caller's
    transaction; returns, in order, each one's seq or why its document's lock refused it
    (docs/protocol.md#121). The same call the group committer makes (`tandem_append_batch`,
    migration 0019): the lock check and the reservation are one step under the row lock, held
    until the caller commits. Raises LookupError when the document is not visible to the tenant.
    """
    if not ops:
        return []
    tenant = await conn.fetchval(Q["current_tenant"])
    n = len(ops)
    rows = await conn.fetch(
        Q["append_batch"], [tenant] * n, [doc_id] * n, [op.agent_id for op in ops], [op.fence for op in ops],
        [op.op_type for op in ops], [op.vector_clock for op in ops], [op.update for op in ops], None,
    )  # fmt: skip
    if rows[0]["refused"] == "not_found":
        raise LookupError(f"document {doc_id} not found")
    return [r["seq"] if r["seq"] is not None else LockRefused(ErrorCode(r["refused"]), r["holder"]) for r in rows]


async def operations_after(conn: asyncpg.Connection, doc_id: uuid.UUID, after_seq: int, limit: int = 1000) -> list[asyncpg.Record]:
    return await conn.fetch(Q["operations_after"], doc_id, after_seq, limit)


async def document_meta(conn: asyncpg.Connection, doc_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(Q["document_meta"], doc_id)


async def latest_snapshot(conn: asyncpg.Connection, doc_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(Q["latest_snapshot"], doc_id)


async def all_operations_after(conn: asyncpg.Connection, doc_id: uuid.UUID, after_seq: int, page: int = 5000) -> list[asyncpg.Record]:
    """Every operation after `after_seq`, read in pages (the load path: snapshot + tail)."""
    rows: list[asyncpg.Record] = []
    while True:
        batch = await operations_after(conn, doc_id, after_seq, page)
        rows += batch
        if len(batch) < page:
            return rows
        after_seq = batch[-1]["sequence_number"]


async def insert_snapshot(conn: asyncpg.Connection, doc_id: uuid.UUID, seq: int, state: bytes) -> None:
    await conn.execute(Q["insert_snapshot"], doc_id, seq, state)


async def update_content(conn: asyncpg.Connection, doc_id: uuid.UUID, content: str, agent_id: str | None) -> None:
    await conn.execute(Q["update_content"], doc_id, content, agent_id)


async def logged_operations_after(conn: asyncpg.Connection, doc_id: uuid.UUID, after_seq: int, limit: int) -> list[LoggedOperation]:
    rows = await operations_after(conn, doc_id, after_seq, limit)
    return [LoggedOperation(r["sequence_number"], r["agent_id"], r["operation_type"], r["update"]) for r in rows]


async def document_heads(conn: asyncpg.Connection, doc_ids: Sequence[uuid.UUID]) -> list[tuple[uuid.UUID, int]]:
    return [(r["id"], r["head_seq"]) for r in await conn.fetch(Q["document_heads"], list(doc_ids))]


async def notify(conn: asyncpg.Connection, payloads: Sequence[str]) -> None:
    if payloads:
        await conn.execute(Q["notify"], list(payloads))


@contextmanager
def input_errors(fields: Mapping[str, tuple[str, str]] | None = None) -> Iterator[None]:
    """Turn the database refusing a value into a typed error; the SQL text never leaves. A
    vanished parent (foreign key) is `not_found`; a refused value `invalid_message`, naming the
    request field when `fields` maps the constraint to `(field, message)`."""
    try:
        yield
    except asyncpg.ForeignKeyViolationError as exc:  # the parent went away after our check
        raise TandemError(ErrorCode.NOT_FOUND) from exc
    except (asyncpg.CheckViolationError, asyncpg.NotNullViolationError, asyncpg.DataError) as exc:
        known = (fields or {}).get(getattr(exc, "constraint_name", None) or "")
        details = {"errors": [{"field": known[0], "type": "value_error", "message": known[1]}]} if known else None
        raise TandemError(ErrorCode.INVALID_MESSAGE, details=details) from exc


async def ping(conn: asyncpg.Connection, timeout_s: float | None = None) -> None:
    """Raise unless the connection answers within `timeout_s`."""
    await conn.fetchval(Q["ping"], timeout=timeout_s)
