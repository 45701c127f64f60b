"""The embedded default: with no DATABASE_URL, run PostgreSQL from the wheel in the data folder.

The cluster lives in `<data_dir>/pgdata`, listens on a Unix socket in `<data_dir>/run` only, and
is stopped when the server stops. A second start reuses the same data. A lock file keeps two
servers from sharing one data folder; a cluster left running by a crashed server is adopted.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

import asyncpg

from server.core.settings import DATA_DIR_MODE
from server.db.pgcluster import OR_DATABASE_URL, Cluster, ClusterError, wheel_bin_dir

DATABASE = "tandem"


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.cluster = Cluster(self.data_dir, bin_dir=wheel_bin_dir())
        self._lock_fd: int | None = None

    @property
    def admin_url(self) -> str:
        return self.cluster.url(DATABASE)

    async def __aenter__(self) -> "EmbeddedPostgres":
        try:
            self.data_dir.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
            self._lock_fd = os.open(self.data_dir / "tandem.lock", os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:
            raise self._unusable(exc) from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise ClusterError(f"another Tandem server is using the data folder {self.data_dir}") from exc
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
        try:
            self.cluster.stop()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
