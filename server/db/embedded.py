"""The embedded default: with no DATABASE_URL, run PostgreSQL from the wheel in the data folder.

The cluster lives in `<data_dir>/pgdata`, listens on a Unix socket only (its folder and port follow
from the data folder alone, `Cluster.socket_dir`, so every process finds it), trusts local
connections, and is stopped by the process that started it. That process holds an exclusive lock
on `<data_dir>/tandem.lock` meanwhile: a second server on the folder is refused, while a `tandem`
command (`share=True`) connects to the running cluster instead of starting one. A cluster left
running by a crashed server is adopted.
"""

from __future__ import annotations

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
    """The data folder is held and its cluster does not answer yet."""


class EmbeddedPostgres:
    """`async with EmbeddedPostgres(data_dir)`: the cluster runs while the block runs.

    `share=False` (the server): owning the data folder is required; another owner is a
    `ClusterError`. `share=True` (the commands): while another process owns it, its running
    cluster is used and left running (`attached` is then True).
    """

    def __init__(self, data_dir: Path, *, share: bool = False) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.cluster = Cluster(self.data_dir, bin_dir=wheel_bin_dir())
        self.share = share
        self.attached = False
        self._lock_fd: int | None = None

    async def _attach_or_lock(self) -> bool:
        """While another process holds the folder: True once its cluster answers (attached), False
        if the folder is freed meanwhile (now held here). Waits up to ATTACH_TIMEOUT_S."""
        retrying = AsyncRetrying(
            stop=stop_after_delay(ATTACH_TIMEOUT_S), wait=wait_fixed(ATTACH_POLL_S), retry=retry_if_exception_type(_Busy)
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if self._lock():
                        return False
                    if await self._reachable():
                        self.attached = True
                        return True
                    raise _Busy
        except RetryError:
            raise ClusterError(
                f"another process holds the data folder {self.data_dir} but its PostgreSQL "
                f"accepted no connection within {ATTACH_TIMEOUT_S:g}s (socket in {self.cluster.socket_dir})"
            ) from None
        raise AssertionError("unreachable")

    @property
    def admin_url(self) -> str:
        return self.cluster.url(DATABASE)

    async def __aenter__(self) -> Self:
        if not self._lock():
            if not self.share:
                raise ClusterError(f"another Tandem server is using the data folder {self.data_dir}")
            if await self._attach_or_lock():
                return self
        try:
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

    def _lock(self) -> bool:
        """Take the data folder's lock: True when this process now owns the cluster."""
        try:
            self.data_dir.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
            fd = os.open(self.data_dir / "tandem.lock", os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:
            raise self._unusable(exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

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

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.attached:
            return
        try:
            self.cluster.stop()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
