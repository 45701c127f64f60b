"""Which database errors mean "the database is away", as opposed to "this statement failed".

The write path refuses operations with `unavailable` (retryable) when the connection, the server
or the time allowed failed them, and reports a statement's own error as it is when only that
statement is at fault (one document's trigger, a deleted document). Imports asyncpg and
server.errors only.
"""

from __future__ import annotations

import asyncpg
from asyncpg import exceptions as pg

from server.core.errors import ErrorCode, TandemError

# Lost or refused connections (08, the client side's InterfaceError and OSError), the server
# going down or cancelling (57: admin/crash shutdown, cannot connect now, query canceled), no
# resources (53: too many connections, disk full), a standby after a failover (25006), system
# errors (58) and a statement over its time bound.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    pg.InternalClientError,
    pg.PostgresConnectionError,
    pg.OperatorInterventionError,
    pg.InsufficientResourcesError,
    pg.ReadOnlySQLTransactionError,
    pg.PostgresSystemError,
)


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database or the connection failed, not the statement.

    asyncpg's client-side DataError and ClientConfigurationError are InterfaceErrors about the
    values or options sent (they are also ValueErrors): the statement's fault, not the database's.
    """
    return isinstance(exc, UNAVAILABLE_ERRORS) and not isinstance(exc, ValueError)


def unavailable(cause: BaseException | None = None) -> TandemError:
    """A fresh `unavailable` error (one per operation: exceptions carry their traceback)."""
    error = TandemError(ErrorCode.UNAVAILABLE)
    error.__cause__ = cause
    return error


def describe(exc: BaseException) -> str:
    """One short line for logs and /healthz: the class and the message, no traceback."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
