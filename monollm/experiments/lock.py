"""One sweep invocation at a time per output folder: a lock file, <out>/sweep.lock.

A run still going counts as failed for another invocation of the same sweep, which would resume
it; so `monollm.experiments.sweep` takes the lock before it plans and holds it until its report is written.
The lock holds the holder's pid, host and start time (JSON). A second invocation stops at once
with a message naming them; a lock left by a process that is no longer alive on this host (a
killed sweep) is taken over with a note. A lock from another host cannot be checked and is
never taken over. `--dry-run` and `--report-only` start no run, so they take no lock.
"""
from __future__ import annotations

import json
import os
import socket
import time

FILE = "sweep.lock"


class SweepLocked(RuntimeError):
    """Another invocation of the sweep holds the output folder's lock."""


def alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):  # being written, or garbled: treat as held, described as unknown
        return {}


def _create(path: str, holder: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(holder, f)
    return True


def describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}" + (f" ({holder['command']})" if holder.get("command") else ""))


def stale(holder: dict) -> bool:
    """A lock whose holder is known to be gone: same host, pid not alive."""
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not alive(pid)


def acquire(folder: str, command: str = "") -> tuple[str, str | None]:
    """(lock path, note): create <folder>/sweep.lock for this process, or take over a stale one
    (note says whose); raises SweepLocked naming the holder and how to remove a stale lock."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, FILE)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
          "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    if _create(path, me):
        return path, None
    holder = _read(path)
    if stale(holder):
        os.unlink(path)
        if _create(path, me):  # another invocation taking it over at the same moment wins otherwise
            return path, f"took over the stale lock {path} of {describe(holder)}: that process is not alive"
        holder = _read(path)
    raise SweepLocked(f"another invocation of this sweep holds the lock {path}: {describe(holder)}. "
                      "Wait for it to finish (its runs would be resumed by this one otherwise); if that "
                      f"process is gone (e.g. on another host), remove the lock: rm {path}")


def release(path: str) -> None:
    """Remove the lock if this process still holds it."""
    if _read(path).get("pid") == os.getpid() and _read(path).get("host") == socket.gethostname():
        os.unlink(path)
