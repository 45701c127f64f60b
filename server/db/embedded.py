"""The embedded default: with no DATABASE_URL, run PostgreSQL from the wheel in the data folder.

The cluster lives in `<data_dir>/pgdata`, listens on a Unix socket only (its folder and port follow
from the data folder alone, `Cluster.socket_dir`, so every process finds it) and trusts local
connections. Three locks in the data folder decide who starts and who stops it:

- `tandem.lock`, exclusive: held by the process that started (owns) the cluster. A second server
  on the folder is refused; a `tandem` command (`share=True`) attaches to the running cluster.
- `tandem.users`, shared: held by every process using the cluster, owner and attached alike.
- `tandem.turn`, exclusive and brief: taken around each arrival and departure, so these decisions
  never interleave.

Whoever leaves last stops the cluster: an owner leaving while others are attached leaves it
running and frees `tandem.lock`; an attached process leaving takes `tandem.lock` when it is free
and, when nobody else uses the cluster, stops it. A cluster left running by a crashed process is
adopted by the next owner.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Self

import asyncpg
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_delay,
    wait_fixed,
)

from server.core.settings import DATA_DIR_MODE
from server.db.pgcluster import OR_DATABASE_URL, Cluster, ClusterError, wheel_bin_dir

DATABASE = "tandem"
# A command finding the data folder busy waits this long for the cluster to accept connections
# (its owner may be starting it), polling every ATTACH_POLL_S.
ATTACH_TIMEOUT_S = 30.0
ATTACH_POLL_S = 0.1
PROBE_TIMEOUT_S = 5.0


class _Busy(Exception):
    """The cluster does not answer yet (its owner may be starting it)."""


class EmbeddedPostgres:
    """`async with EmbeddedPostgres(data_dir)`: the cluster runs while the block runs.

    `share=False` (the server): owning the data folder is required; another owner is a
    `ClusterError`. `share=True` (the commands): while another process owns it, its running
    cluster is used (`attached` is then True). Either way the last process to leave stops it.
    """

    def __init__(self, data_dir: Path, *, share: bool = False) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.cluster = Cluster(self.data_dir, bin_dir=wheel_bin_dir())
        self.share = share
        self.attached = False
        self._lock_fd: int | None = None
        self._users_fd: int | None = None

    @property
    def admin_url(self) -> str:
        return self.cluster.url(DATABASE)

    async def __aenter__(self) -> Self:
        turn = await self._take_turn()
        try:
            if not self._lock():
                if not self.share:
                    raise ClusterError(f"another Tandem server is using the data folder {self.data_dir}")
                self.attached = True
            self._users_fd = self._open("tandem.users")
            fcntl.flock(self._users_fd, fcntl.LOCK_SH)
        except BaseException:
            self._close_all()
            raise
        finally:
            os.close(turn)
        try:
            if self.attached and await self._wait_reachable():
                return self
            self.attached = False
            try:
                self.cluster.start()
            except OSError as exc:
                raise self._unusable(exc) from exc
            conn = await asyncpg.connect(self.cluster.url("postgres"))
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
                    await conn.execute(f"CREATE DATABASE {DATABASE}")
            finally:
                await conn.close()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Leave: the last user stops the cluster (see the module docstring)."""
        turn = await self._take_turn()
        try:
            if self._users_fd is not None:
                os.close(self._users_fd)
                self._users_fd = None
            if self._lock_fd is None and not self._lock():
                return  # an owner remains; it (or the last to leave after it) stops the cluster
            users = self._open("tandem.users")
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # others still use the cluster: the last of them stops it
            finally:
                os.close(users)
            if self.attached or not self.cluster.started_here:
                self.cluster.started_here = self.cluster.running()
            self.cluster.stop()
        finally:
            self._close_all()
            os.close(turn)

    # --- the locks -------------------------------------------------------------------------------

    async def _take_turn(self) -> int:
        """`tandem.turn`, exclusively: held for a moment (at most a stop) by whoever arrives or leaves."""
        fd = self._open("tandem.turn")
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open(self, name: str) -> int:
        try:
            self.data_dir.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
            return os.open(self.data_dir / name, os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:
            raise self._unusable(exc) from exc

    def _lock(self) -> bool:
        """Take the data folder's lock: True when this process now owns the cluster."""
        fd = self._open("tandem.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _close_all(self) -> None:
        for name in ("_users_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    async def _wait_reachable(self) -> bool:
        """Attached: wait up to ATTACH_TIMEOUT_S for the owner's cluster to accept connections.
        True once it does; False when the owner left without it answering (this process now
        owns the folder and starts the cluster itself)."""
        retrying = AsyncRetrying(
            stop=stop_after_delay(ATTACH_TIMEOUT_S),
            wait=wait_fixed(ATTACH_POLL_S),
            retry=retry_if_exception_type(_Busy),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if await self._reachable():
                        return True
                    if self._lock():
                        return False
                    raise _Busy
        except RetryError:
            raise ClusterError(
                f"another process holds the data folder {self.data_dir} but its PostgreSQL "
                f"accepted no connection within {ATTACH_TIMEOUT_S:g}s (socket in {self.cluster.socket_dir})"
            ) from None
        raise AssertionError("unreachable")

    async def _reachable(self) -> bool:
        """Whether the owner's cluster accepts connections to the Tandem database now."""
        try:
            conn = await asyncpg.connect(self.admin_url, timeout=PROBE_TIMEOUT_S)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        await conn.close()
        return True

    def _unusable(self, exc: OSError) -> ClusterError:
        """The data folder cannot be created or prepared: the cause, and the ways around it."""
        cause = exc.strerror or str(exc)
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            cause = "a file is in the way (it must be a folder)"
        where = f" ({exc.filename})" if exc.filename and Path(exc.filename) != self.data_dir else ""
        return ClusterError(
            f"cannot use the data folder {self.data_dir}: {cause}{where}; choose another with "
            f"--data-dir or TANDEM_DATA_DIR, {OR_DATABASE_URL}"
        )
