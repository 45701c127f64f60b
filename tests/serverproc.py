"""Run real Tandem server processes in tests: free loopback port, readiness under a deadline.

A `ServerProcess` starts any command (the `tandem` script, `python -m server`, a README line
under `bash -c`) with its output in a log file, waits for `GET /healthz` until a deadline, and
stops by pid: SIGTERM, then SIGKILL after a timeout. `Servers` owns the processes of one test:
it stops the ones still running at teardown and prints every log, which pytest shows only when
the test fails. Failures raise `ServerFailed` carrying the log's tail.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from server.db.pgcluster import free_port

REPO = Path(__file__).resolve().parent.parent
# The console script installed next to the interpreter running the tests (.venv/bin/tandem).
TANDEM = str(Path(sys.executable).with_name("tandem"))
# Variables that say where a server runs and what it connects to: each test sets its own.
PLACEMENT_VARS = (
    "DATABASE_URL",
    "REDIS_URL",
    "TANDEM_APP_DATABASE_URL",
    "TANDEM_DATA_DIR",
    "TANDEM_HOST",
    "TANDEM_PORT",
    "TANDEM_NODE_ID",
)
LOG_TAIL_CHARS = 20_000


class ServerFailed(AssertionError):
    """The server exited, never became ready, or would not stop; the message ends with its log."""


def server_env(**overrides: str | None) -> dict[str, str]:
    """This process's environment without the placement variables, plus `overrides` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k not in PLACEMENT_VARS}
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def postgres_pids(data_dir: Path) -> list[int]:
    """PostgreSQL server processes running on `<data_dir>/pgdata` (the postmaster's command line names it)."""
    pgdata = str(Path(data_dir).resolve() / "pgdata")
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if any(Path(arg).name == "postgres" for arg in cmdline[:1]) and pgdata in cmdline:
            found.append(proc.pid)
    return found


def stop_postgres(data_dir: Path, timeout_s: float = 30.0) -> None:
    """SIGINT (fast shutdown) the PostgreSQL of `data_dir`, if running, and wait for it to exit."""
    procs = []
    for pid in postgres_pids(data_dir):
        try:
            proc = psutil.Process(pid)
            proc.send_signal(signal.SIGINT)
            procs.append(proc)
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        proc.kill()


@dataclass
class ServerProcess:
    """One server process. `command` is an argv list; a `str` runs under `bash -c`."""

    command: list[str] | str
    env: Mapping[str, str]
    log_path: Path
    port: int
    host: str = "127.0.0.1"
    cwd: Path = REPO
    proc: subprocess.Popen[bytes] | None = None
    # The process that listens on the port: the command itself, or a child of `bash -c`.
    server_pid: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerProcess:
        argv = ["bash", "-c", self.command] if isinstance(self.command, str) else list(self.command)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.cwd,
                env=dict(self.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the test terminal stays ours
            )
        return self

    # --- readiness ---------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = 60.0, path: str = "/healthz", poll_s: float = 0.1) -> httpx.Response:
        """Poll `path` until it answers 200; the pause between polls is a wait on the process exit."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        last: str = "no answer yet"
        while time.monotonic() < deadline:
            try:
                response = httpx.get(self.base_url + path, timeout=2.0)
                if response.status_code == 200:
                    self.server_pid = self._find_listener()
                    return response
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            try:
                code = self.proc.wait(timeout=poll_s)
            except subprocess.TimeoutExpired:
                continue
            raise ServerFailed(f"server exited with {code} before it was ready\n{self.log_tail()}")
        raise ServerFailed(f"server not ready within {timeout_s}s ({last})\n{self.log_tail()}")

    def _find_listener(self) -> int:
        assert self.proc is not None
        try:
            root = psutil.Process(self.proc.pid)
            for candidate in [root, *root.children(recursive=True)]:
                for conn in candidate.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == self.port:
                        return int(candidate.pid)
        except psutil.Error:
            pass
        return self.proc.pid

    def get(self, path: str, timeout_s: float = 10.0) -> httpx.Response:
        return httpx.get(self.base_url + path, timeout=timeout_s)

    # --- stopping ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send `sig` to the server process (not to a wrapping shell)."""
        assert self.proc is not None
        try:
            os.kill(self.server_pid or self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout_s: float) -> int:
        """Wait for the started process to exit; raise `ServerFailed` after `timeout_s`."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ServerFailed(f"server still running after {timeout_s}s\n{self.log_tail()}") from None

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM the server, wait up to `timeout_s`, then SIGKILL it; returns the exit code.

        With `bash -c` the code is the shell's, which is the server's when it ran last.
        """
        assert self.proc is not None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        for pid in {self.server_pid, self.proc.pid} - {None}:
            try:
                os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)

    # --- log ---------------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        text = self.log_text()
        cut = "[...]\n" if len(text) > chars else ""
        return f"--- log {self.log_path} ---\n{cut}{text[-chars:]}--- end of log ---"


@dataclass
class Servers:
    """The server processes and data folders of one test."""

    workdir: Path
    started: list[ServerProcess] = field(default_factory=list)
    _data_dirs: list[Path] = field(default_factory=list)

    def data_dir(self, name: str = "data") -> Path:
        """A data folder whose parents the `postgres` OS user can traverse (as root, its PostgreSQL
        then runs without CAP_DAC_READ_SEARCH; tests/test_embedded_root.py covers closed parents)."""
        parent = Path(tempfile.mkdtemp(prefix="tandem-srv-"))
        parent.chmod(0o755)
        self._data_dirs.append(parent / name)
        return parent / name

    def start(
        self,
        command: list[str] | str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        cwd: Path = REPO,
        ready: bool = True,
        ready_timeout_s: float = 60.0,
    ) -> ServerProcess:
        """Start `command` (default: `tandem serve`) on a free port; wait for /healthz if `ready`.

        The port is passed as TANDEM_PORT, so the command needs no flag for it.
        """
        port = port or free_port()
        env = dict(server_env() if env is None else env)
        env["TANDEM_PORT"] = str(port)
        index = len(self.started)
        server = ServerProcess(
            command=command if command is not None else [TANDEM, "serve"],
            env=env,
            log_path=self.workdir / f"server-{index}-{port}.log",
            port=port,
            cwd=cwd,
        )
        self.started.append(server)
        server.start()
        if ready:
            server.wait_ready(timeout_s=ready_timeout_s)
        return server

    def close(self) -> None:
        try:
            for server in self.started:
                if server.proc is not None and server.running:
                    server.stop()
        finally:
            for server in self.started:
                # Captured by pytest and shown only for a failing test.
                print(server.log_tail(), file=sys.stderr)
            for data_dir in self._data_dirs:
                # Only a killed server leaves its embedded PostgreSQL running: stop it (fast mode).
                stop_postgres(data_dir)
                shutil.rmtree(data_dir.parent, ignore_errors=True)


def servers_for(workdir: Path) -> Iterator[Servers]:
    """Body of a `servers` fixture: `yield from servers_for(tmp_path)`."""
    servers = Servers(workdir)
    try:
        yield servers
    finally:
        servers.close()
