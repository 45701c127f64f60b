"""Presence join storm: N sessions join one workspace and open one document at once, while a
bystander session keeps pinging; prints the storm's duration, the bystander's worst ping, the
presence frames each session received and what `presence.list` says afterwards.

Starts a throwaway PostgreSQL (and, with `--redis`, a redis-server) and one `tandem serve` node;
every phase is bounded in time, and everything started is stopped by pid. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    Postgres,
    ServerNode,
    cleanup_dir,
    cpu_seconds,
    jwt_secret,
    machine,
    raise_fd_limit,
    start_nodes,
    summarize,
    tree_pids,
    workdir,
)
from bench.lean_client import Agent, messages  # noqa: E402
from server.core.auth import issue_token  # noqa: E402
from server.db.pgcluster import free_port  # noqa: E402

CONNECT_CONCURRENCY = 64  # handshakes in flight while the sessions connect (before the storm)
STORM_TIMEOUT_S = 300.0  # bound on the storm itself
PING_EVERY_S = 0.05  # the bystander's pause between pings
# The default rate limit (100 messages/s) is per session and not what this measures; the list
# limit is raised so that 1,001 members fit in one `presence.list`.
SERVER_ENV = {"TANDEM_MAX_MESSAGES_PER_S": "100000", "TANDEM_MAX_MESSAGE_BURST": "100000", "TANDEM_MAX_LIST_ITEMS": "5000"}
PRESENCE_TYPES = ("presence.", "awareness.")


@dataclass
class Counter:
    """What one storm session received besides its replies."""

    frames: int = 0
    presence_messages: int = 0
    bytes: int = 0
    types: dict[str, int] = field(default_factory=dict)


def counting(agent: Agent, counter: Counter) -> None:
    """Count presence frames and messages as the session reads them (replies still resolve)."""

    def on_text(text: str) -> None:
        parsed = messages(text)
        kinds = ["" if "re" in m else m.get("type", "") for m in parsed]  # replies are not events
        if any(k.startswith(PRESENCE_TYPES) for k in kinds):
            counter.frames += 1
            counter.bytes += len(text)
        for message, kind in zip(parsed, kinds):
            if kind.startswith(PRESENCE_TYPES):
                counter.presence_messages += 1
                counter.types[kind] = counter.types.get(kind, 0) + 1
            else:
                agent.on_frame(message)

    assert agent.sock is not None
    agent.sock.on_text = on_text


async def bystander(agent: Agent, stop: asyncio.Event, rtts: list[float]) -> None:
    """Ping, one at a time, until `stop`; every round trip recorded."""
    while not stop.is_set():
        t0 = time.monotonic()
        await agent.request("ping", timeout_s=120)
        rtts.append(time.monotonic() - t0)
        try:
            await asyncio.wait_for(stop.wait(), PING_EVERY_S)
        except TimeoutError:
            pass


async def pinger_main(url: str, token: str, workspace_id: str, presence_batch: bool) -> None:
    """`--pinger`: a bystander in its own process (so its figure is the node's answer, not this
    process's load): joins, says `ready`, pings until a line arrives on stdin, prints its pings."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), stop.set)
    agent = await Agent.connect(url, token)
    if presence_batch:
        await agent.request("hello", protocol=1, presence_batch=True)
    await agent.request("workspace.join", workspace_id=workspace_id)
    print("ready", flush=True)
    rtts: list[float] = []
    async with asyncio.timeout(STORM_TIMEOUT_S + 120):
        await bystander(agent, stop, rtts)
    await agent.close()
    print(json.dumps(rtts), flush=True)


async def storm(
    url: str, secret: str, node_pid: int, pg_pid: int, sessions: int, batch: bool, presence_batch: bool,
    members: bool = False, py_spy: Path | None = None,
) -> dict[str, Any]:
    """One storm in a fresh tenant; `members`: the agents are members already (they joined and
    left before), so no join takes the workspace's row lock."""
    tenant = uuid.uuid4()

    def token(agent_id: str) -> str:
        return issue_token(secret, tenant, agent_id, 7200)

    hello: dict[str, Any] = {"presence_batch": True} if presence_batch else {}
    owner = await Agent.connect(url, token("agent-0"))
    if batch or hello:
        await owner.request("hello", protocol=1, batch=batch, **hello)
    ws = await owner.request("workspace.create", name="storm", visibility="team", max_members=1000)
    ws_id = ws["workspace"]["workspace_id"]
    await owner.request("workspace.join", workspace_id=ws_id)
    doc_id = (await owner.request("doc.create", workspace_id=ws_id, title="shared"))["document"]["doc_id"]
    watcher = Counter()
    counting(owner, watcher)

    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(i: int) -> Agent:
        async with gate:
            agent = await Agent.connect(url, token(f"agent-{i % 1000}"))
            if batch or hello:
                await agent.request("hello", protocol=1, batch=batch, **hello)
            return agent

    t0 = time.monotonic()
    agents = list(await asyncio.gather(*(connect(i) for i in range(sessions))))
    connect_s = time.monotonic() - t0
    if members:
        async def admit(agent: Agent) -> None:
            async with gate:
                await agent.request("workspace.join", workspace_id=ws_id)
                await agent.request("workspace.leave", workspace_id=ws_id)

        await asyncio.gather(*(admit(a) for a in agents))
    counters = [Counter() for _ in agents]
    for agent, counter in zip(agents, counters):
        counting(agent, counter)

    async def join(agent: Agent) -> float:
        s0 = time.monotonic()
        await agent.request("workspace.join", timeout_s=STORM_TIMEOUT_S, workspace_id=ws_id)
        await agent.request("doc.open", timeout_s=STORM_TIMEOUT_S, doc_id=doc_id)
        return time.monotonic() - s0

    other = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--pinger", url, token("agent-0"), ws_id, *([] if presence_batch else ["--legacy"]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert other.stdin is not None and other.stdout is not None
    async with asyncio.timeout(60):
        assert (await other.stdout.readline()).strip() == b"ready"
    stop = asyncio.Event()
    rtts: list[float] = []
    pinger = asyncio.create_task(bystander(owner, stop, rtts))
    await asyncio.sleep(0.3)  # a few quiet pings first: the baseline
    quiet = len(rtts)
    procs = {"node": tree_pids(node_pid), "postgres": tree_pids(pg_pid), "client": [os.getpid()]}
    cpu0 = {k: sum(cpu_seconds(v).values()) for k, v in procs.items()}
    spy = None
    if py_spy is not None:  # samples the node over the storm (collapsed stacks)
        argv = [str(Path(sys.executable).with_name("py-spy")), "record", "--nonblocking", "--format", "raw",
                "-d", str(int(STORM_TIMEOUT_S)), "-p", str(node_pid), "-o", str(py_spy / f"storm-{sessions}.txt")]  # fmt: skip
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(STORM_TIMEOUT_S):
            per_session = await asyncio.gather(*(join(a) for a in agents), return_exceptions=True)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled
            spy.wait(timeout=30)
    storm_s = time.monotonic() - t0
    cpu_s = {k: sum(cpu_seconds(v).values()) - cpu0[k] for k, v in procs.items()}
    await asyncio.sleep(1.0)  # presence windows flush, late frames arrive
    try:  # while both bystanders are still there
        listing = await owner.request("presence.list", timeout_s=60, workspace_id=ws_id)
    except (TimeoutError, ConnectionError) as exc:  # the bystander's session was closed
        assert owner.sock is not None
        listing = {"members": [], "partial": None, "truncated": None, "error": f"{exc!r} close {owner.sock.close_code}"}
    stop.set()
    await pinger
    other.stdin.write(b"stop\n")
    async with asyncio.timeout(60):
        other_rtts: list[float] = json.loads((await other.stdout.readline()).strip())
        await other.wait()
    open_sockets = sum(1 for a in agents if a.sock is not None and not a.sock.closed.done())
    failures = [r for r in per_session if isinstance(r, BaseException)]
    await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)
    await owner.close()
    joined = sorted(r for r in per_session if isinstance(r, float))
    return {
        "members": members, "sessions": sessions, "connect_s": connect_s, "storm_s": storm_s, "cpu_s": cpu_s,
        "join_open": summarize(joined) if joined else {}, "failures": len(failures),
        "failure": repr(failures[0]) if failures else "", "open_sockets": open_sockets,
        "ping_max_s": max(rtts[quiet:], default=0.0), "ping": summarize(rtts[quiet:]) if len(rtts) > quiet else {},
        "pings": len(rtts) - quiet, "other_ping_max_s": max(other_rtts, default=0.0), "other_pings": len(other_rtts), "listed": len(listing["members"]), "partial": listing["partial"],
        "truncated": listing["truncated"], "list_error": listing.get("error", ""), "watcher": watcher,
        "frames_max": max(c.frames for c in counters), "messages_max": max(c.presence_messages for c in counters),
        "bytes_total": sum(c.bytes for c in counters) + watcher.bytes,
    }



def report(r: dict[str, Any]) -> None:
    w: Counter = r["watcher"]
    jo = r["join_open"]
    print(f"sessions {r['sessions']} ({'members rejoining' if r['members'] else 'new members'}): connected in {r['connect_s']:.1f} s; join+open storm {r['storm_s']:.2f} s "
          f"(CPU s: {', '.join(f'{k} {v:.1f}' for k, v in r['cpu_s'].items())}); failures {r['failures']} {r['failure']}")
    if jo:
        print(f"  per session join+open: p50 {jo['p50'] * 1000:.0f} ms, p99 {jo['p99'] * 1000:.0f} ms")
    p = r["ping"]
    print(f"  bystander in this process: {r['pings']} pings, worst {r['ping_max_s'] * 1000:.0f} ms"
          + (f", p50 {p['p50'] * 1000:.1f} ms, p99 {p['p99'] * 1000:.0f} ms" if p else ""))
    print(f"  bystander in its own process: {r['other_pings']} pings, worst {r['other_ping_max_s'] * 1000:.0f} ms")
    print(f"  presence.list: {r['listed']} members (of {r['sessions'] + 2}), partial {r['partial']}, "
          f"truncated {r['truncated']}{r['list_error']}; sessions still open {r['open_sockets']}")
    print(f"  presence received by the bystander: {w.frames} frames, {w.presence_messages} messages "
          f"{json.dumps(w.types)}; busiest storm session {r['frames_max']} frames / {r['messages_max']} messages; "
          f"{r['bytes_total'] / 1e6:.1f} MB of frames carrying presence in all")


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server") or str(Path(sys.executable).with_name("redis-server"))
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="300,1000", help="storm sizes, comma-separated (default 300,1000)")
    parser.add_argument("--redis", action="store_true", help="presence in Redis (a redis-server is started)")
    parser.add_argument("--no-batch", action="store_true", help="one message per frame (no batched frames)")
    parser.add_argument("--legacy", action="store_true", help="sessions do not ask for presence.batch")
    parser.add_argument("--members", choices=["new", "rejoin", "both"], default="both",
                        help="storm of agents new to the workspace, of members rejoining, or both (default)")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR", help="sample the node during each storm")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE", help="extra node environment")
    parser.add_argument("--pinger", nargs=3, metavar=("URL", "TOKEN", "WORKSPACE_ID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pinger:
        asyncio.run(pinger_main(*args.pinger, not args.legacy))
        return
    env = dict(SERVER_ENV)
    for item in args.server_env:
        name, _, value = item.partition("=")
        env[name] = value
    sizes = [int(n) for n in args.sessions.split(",") if n]
    raise_fd_limit(2 * max(sizes) + 200)
    work = workdir("tandem-bench-presence-")
    pg = Postgres(work, fsync=True).start()
    redis_proc = None
    node: ServerNode | None = None
    try:
        if args.redis:
            redis_proc, env["REDIS_URL"] = start_redis(work)
            time.sleep(0.5)  # redis-server binds within milliseconds; the node retries anyway
        secret = jwt_secret()
        node = start_nodes(1, pg.admin_url, secret, work, env)[0]
        print(f"# Tandem presence join storm, {date.today().isoformat()}")
        for k, v in machine().items():
            print(f"{k:>8}: {v}")
        print(f"  server: 1 node, presence {'in Redis' if args.redis else 'in process'}, env "
              + " ".join(f"{k}={v}" for k, v in env.items() if k != "REDIS_URL"))
        print(f"  client: this process; sessions connect first ({CONNECT_CONCURRENCY} at a time), then all send "
              f"workspace.join + doc.open at once; batched frames {not args.no_batch}, presence.batch {not args.legacy}")
        print(f"    load: machine load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
        print()
        kinds = {"new": [False], "rejoin": [True], "both": [False, True]}[args.members]
        for n in sizes:
            for members in kinds:
                report(asyncio.run(storm(
                    node.ws_url, secret, node.pid, pg.postmaster_pid, n, not args.no_batch, not args.legacy, members, args.py_spy
                )))  # fmt: skip
    finally:
        if node is not None:
            node.stop()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
        pg.destroy()
        cleanup_dir(work)


if __name__ == "__main__":
    main()
