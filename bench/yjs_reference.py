"""The reference y-websocket server for bench/bench_yjs.py: `@y/websocket-server` as the npm
registry ships it (bench/node's lockfile), in memory or with `y-leveldb` persistence
(YPERSISTENCE), run on the test extra's Node.

It keeps documents by URL path, so the same driver (tests/node/bench.mjs) reaches it with the
same room URLs as Tandem (the token parameter is ignored). Started on a free loopback port, its
output in a log file, stopped by pid (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

from bench.common import REPO
from server.db.pgcluster import free_port
from tests.nodejs import NODE, install_node_clients, node_env

REFERENCE_DIR = REPO / "bench" / "node"
SERVER_JS = (
    REFERENCE_DIR / "node_modules" / "@y" / "websocket-server" / "src" / "server.js"
)


def install_reference() -> Path:
    """bench/node with its packages, from the lockfile (`npm ci`) when missing."""
    return install_node_clients(REFERENCE_DIR, marker="@y/websocket-server")


def package_version(name: str) -> str:
    return str(
        json.loads(
            (REFERENCE_DIR / "node_modules" / name / "package.json").read_text()
        )["version"]
    )


class ReferenceServer:
    """One `@y/websocket-server` process; `persist_dir` turns on y-leveldb."""

    def __init__(self, log_path: Path, persist_dir: Path | None = None) -> None:
        self.log_path, self.persist_dir = log_path, persist_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, ready_timeout_s: float = 30.0) -> ReferenceServer:
        env = {**node_env(), "HOST": "127.0.0.1", "PORT": str(self.port)}
        if self.persist_dir is not None:
            env["YPERSISTENCE"] = str(self.persist_dir)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [NODE, str(SERVER_JS)],
                cwd=REFERENCE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                pass
            try:
                code = self.proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(
                f"the reference server exited with {code}: {self.log_path.read_text()[-2000:]}"
            )
        self.stop()
        raise RuntimeError(
            f"the reference server did not listen within {ready_timeout_s}s"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


def preload(persist_dir: Path, doc_name: str, updates: list[bytes], work: Path) -> None:
    """Store `updates` as document `doc_name` in the y-leveldb store at `persist_dir` (no server
    may have it open), one update at a time as the reference server would have."""
    path = work / "history.bin"
    path.write_bytes(b"".join(struct.pack(">I", len(u)) + u for u in updates))
    done = subprocess.run(
        [
            NODE,
            str(REFERENCE_DIR / "preload.mjs"),
            str(persist_dir),
            doc_name,
            str(path),
        ],
        check=False,
        cwd=REFERENCE_DIR,
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0 or json.loads(done.stdout.splitlines()[-1]).get(
        "stored"
    ) != len(updates):
        raise RuntimeError(
            f"preloading y-leveldb failed ({done.returncode}): {done.stdout[-1000:]} {done.stderr[-2000:]}"
        )
