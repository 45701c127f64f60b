"""Where the server listens: its socket, bound before anything else starts, and the record of the
address in the data folder that `tandem quickstart` reads.

`bind` runs first in `server.app.run`, so a taken port fails at once, in one line, before the
embedded PostgreSQL starts or a welcome names a port that is another server's. The bound socket is
handed to uvicorn, which listens on it once the lifespan has started.

`record` writes `<data_dir>/server.json` (host, port, pid; mode 0600) once the embedded server
listens; `forget` removes it at stop. Only an embedded server writes it: it alone owns its data
folder, so the file names one server. `recorded` returns the record while its process lives.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from server.core.settings import Settings

RECORD_NAME = "server.json"


class PortError(OSError):
    """The listen address cannot be bound; the message is one line naming it."""


def bind(settings: Settings) -> socket.socket:
    """A TCP socket bound to `settings.host:settings.port` (not yet listening).

    Raises `PortError`: "port P on H is in use; pass --port or TANDEM_PORT", or the system's
    reason for another failure (no such address, a privileged port).
    """
    host, port = settings.host, settings.port
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise PortError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortError(f"port {port} on {host} is in use; pass --port or TANDEM_PORT") from exc
        raise PortError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


@dataclass(frozen=True, slots=True)
class Listening:
    """A running server's listen address, as recorded in its data folder."""

    host: str
    port: int
    pid: int


def record_path(data_dir: Path) -> Path:
    return Path(data_dir) / RECORD_NAME


def record(data_dir: Path, host: str, port: int) -> None:
    """Write this process's listen address to `<data_dir>/server.json`, mode 0600, atomically."""
    path = record_path(data_dir)
    tmp = path.with_name(f".{RECORD_NAME}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"host": host, "port": port, "pid": os.getpid()}, f)
    os.replace(tmp, path)


def forget(data_dir: Path) -> None:
    """Remove the record if this process wrote it."""
    found = _read(record_path(data_dir))
    if found is not None and found.pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            record_path(data_dir).unlink()


def recorded(data_dir: Path) -> Listening | None:
    """The record of the server running on `data_dir`, or None (no record, unreadable, or its
    process is gone: a killed server leaves it behind)."""
    found = _read(record_path(data_dir))
    if found is None or not _alive(found.pid):
        return None
    return found


def _read(path: Path) -> Listening | None:
    try:
        data = json.loads(path.read_text())
        listening = Listening(str(data["host"]), int(data["port"]), int(data["pid"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return listening if 0 < listening.port < 65536 and listening.pid > 0 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
