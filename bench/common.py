"""Shared pieces of the benchmarks: a throwaway PostgreSQL, server nodes as real `tandem serve`
processes, percentiles, and CPU/RSS readings of processes (the WebSocket client is
bench/lean_client.py).

Everything here is bounded: waits have deadlines, processes are stopped by pid (SIGTERM, then
SIGKILL). Imports nothing from tests/.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from server.db.pgcluster import Cluster, find_bin_dir, free_port

REPO = Path(__file__).resolve().parent.parent
TANDEM = str(Path(sys.executable).with_name("tandem"))


# --- machine, limits, statistics -----------------------------------------------------------------


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total
    return {
        "cpu": f"{model}, {os.cpu_count()} logical cores ({psutil.cpu_count(logical=False)} physical)",
        "memory": f"{mem / 2**30:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `needed` (up to the hard limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (nan when empty)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), -(-len(sorted_values) * p // 100)))
    return sorted_values[int(rank) - 1]


def summarize(values: Iterable[float], points: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """{'n', 'p50', 'p95', 'p99', 'max'} of `values` (nan when empty)."""
    ordered = sorted(values)
    out: dict[str, float] = {"n": float(len(ordered))}
    for p in points:
        out[f"p{p:g}"] = percentile(ordered, p)
    out["max"] = ordered[-1] if ordered else float("nan")
    return out


def median(values: Sequence[float]) -> float:
    ordered = sorted(v for v in values if v == v)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# --- processes: CPU and memory ---------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def tree_pids(pid: int) -> list[int]:
    """`pid` and its descendants (PostgreSQL: the postmaster and its backends)."""
    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """User + system CPU seconds of each live pid (children excluded)."""
    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return out


def cpu_percent(before: Mapping[int, float], after: Mapping[int, float], wall_s: float) -> float:
    """CPU used between two `cpu_seconds` readings, in % of one core (processes that started
    meanwhile count from zero; ones that ended are missed)."""
    used = sum(after[pid] - before.get(pid, 0.0) for pid in after)
    return 100.0 * used / wall_s if wall_s > 0 else float("nan")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, everything but idle and iowait)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


# --- PostgreSQL ----------------------------------------------------------------------------------


@dataclass
class Postgres:
    """A throwaway cluster on a free loopback port; `destroy()` deletes it."""

    workdir: Path
    fsync: bool = True
    cluster: Cluster | None = None

    def start(self) -> Postgres:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)  # the postgres OS user must traverse it when we run as root
        self.cluster = Cluster(self.workdir / "pg", bin_dir=find_bin_dir(), port=free_port(), fsync=self.fsync)
        self.cluster.start()
        return self

    @property
    def admin_url(self) -> str:
        assert self.cluster is not None
        return self.cluster.url()

    @property
    def postmaster_pid(self) -> int:
        assert self.cluster is not None
        return int((self.cluster.pgdata / "postmaster.pid").read_text().split()[0])

    def version(self) -> str:
        assert self.cluster is not None
        out = subprocess.run([str(self.cluster.bin_dir / "postgres"), "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip()

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()

    def destroy(self) -> None:
        if self.cluster is not None:
            self.cluster.destroy()


def workdir(prefix: str = "tandem-bench-") -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def jwt_secret() -> str:
    return secrets.token_hex(32)  # 64 characters: well over the 32 bytes HS256 needs


# --- server nodes --------------------------------------------------------------------------------


class NodeFailed(RuntimeError):
    """A node exited, did not become ready, or would not stop; the message ends with its log."""


@dataclass
class ServerNode:
    """One `tandem serve` process on a free loopback port, its output in a log file."""

    env: Mapping[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, ready_timeout_s: float = 60.0) -> ServerNode:
        env = {**self.env, "TANDEM_HOST": "127.0.0.1", "TANDEM_PORT": str(self.port)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [TANDEM, "serve"], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.wait_ready(ready_timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Poll /healthz until 200; the pause between polls is a wait on the process's exit."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            try:
                code = self.proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                continue
            raise NodeFailed(f"node exited with {code} before it was ready\n{self.log_tail()}")
        raise NodeFailed(f"node not ready within {timeout_s}s\n{self.log_tail()}")

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=30)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        return f"--- {self.log_path} ---\n{text[-chars:]}"


def start_nodes(
    count: int, database_url: str, secret: str, logdir: Path, extra_env: Mapping[str, str] | None = None
) -> list[ServerNode]:
    """Start `count` nodes on one database, one after the other (the first one migrates)."""
    nodes = []
    for i in range(count):
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TANDEM_") and k not in ("DATABASE_URL", "REDIS_URL")},
            "DATABASE_URL": database_url,
            "TANDEM_JWT_SECRET": secret,
            "TANDEM_NODE_ID": f"bench-node-{i}",
            "TANDEM_DATA_DIR": str(logdir / f"node-{i}"),
            **(extra_env or {}),
        }
        node = ServerNode(env, logdir / f"node-{i}.log")
        nodes.append(node)
        try:
            node.start()
        except BaseException:
            for started in nodes:
                started.stop()
            raise
    return nodes


def cleanup_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --- a node's /metrics ---------------------------------------------------------------------------

SCRAPE_TIMEOUT_S = 5.0
Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(node: ServerNode) -> Scrape:
    """Every sample of the node's /metrics, keyed by (name, sorted labels); {} if unreadable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.port}/metrics", timeout=SCRAPE_TIMEOUT_S) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def grew(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    """How much a counter grew between two scrapes (a labelled child not yet created counts as 0;
    nan when the later scrape failed)."""
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0) if after else math.nan
