"""One sweep invocation at a time per output folder: a lock file, <out>/sweep.lock.

A run still going counts as failed for another invocation of the same sweep, which would resume
it; so `monollm.experiments.sweep` takes the lock before it plans and holds it until its report is written.
The lock holds the holder's pid, host and start time (JSON). A second invocation stops at once
with a message naming them; a lock left by a process that is no longer alive on this host (a
killed sweep) is taken over with a note. A lock from another host cannot be checked and is
never taken over. `--dry-run` and `--report-only` start no run, so they take no lock. Taking the
lock, stale or not, happens under an exclusive flock of <out>/sweep.lock.guard, so that of two
invocations taking over one stale lock at once, the second reads the first's fresh lock and stops.

The runs themselves are recorded in <out>/running (record_intent, then the run's pid and id): a
run outlives a sweep killed with SIGKILL, and the next invocation waits for it instead of
starting its pair again.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import time

FILE = "sweep.lock"
GUARD = "sweep.lock.guard"
"""Held with flock while the lock is read, checked and written: one takeover at a time."""


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
    with _guard(folder):  # the check and the takeover are one step for every invocation on this host
        if _create(path, me):
            return path, None
        holder = _read(path)
        if stale(holder):
            os.unlink(path)
            if _create(path, me):
                return path, f"took over the stale lock {path} of {describe(holder)}: that process is not alive"
            holder = _read(path)
    raise SweepLocked(f"another invocation of this sweep holds the lock {path}: {describe(holder)}. "
                      "Wait for it to finish (its runs would be resumed by this one otherwise); if that "
                      f"process is gone (e.g. on another host), remove the lock: rm {path}")


@contextlib.contextmanager
def _guard(folder: str):
    """Hold an exclusive flock of <folder>/sweep.lock.guard inside the block (the file stays: removing
    it would let a later invocation lock another file of the same name)."""
    with open(os.path.join(folder, GUARD), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def release(path: str) -> None:
    """Remove the lock if this process still holds it."""
    with _guard(os.path.dirname(path)):
        holder = _read(path)
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            os.unlink(path)


# --- the runs a sweep started -------------------------------------------------------------------
# Each run starts in its own process group, so it outlives a sweep killed with SIGKILL. Before it
# starts, <out>/running/<pair>.json records the intent: the pair, a token, and the sweep's pid and
# host. The run's process gets the token in its environment (TOKEN_ENV), which every process of the
# run inherits; once started, the record gains its pid and the process's start time (which tells a
# reused pid apart), and its run id as soon as Metaflow writes it. A later invocation of the sweep
# finds the runs still going there (by pid, or by the token in /proc/*/environ where the sweep was
# killed before it wrote the pid) and waits for them before it plans, instead of starting their
# pairs again.
RUNNING = "running"
TOKEN_ENV = "MONOLLM_SWEEP_RUN"
"""Environment variable holding a run's token (its record's "token") in every process of the run."""
_GROUPS: dict[int, str] = {}  # process group -> pair, of every run going that a signal is passed to
STOP = {"signal": 0}  # the SIGTERM or SIGINT this invocation received (0: none): no run starts after it
HOOKS = {"started": None}
"""Tests: "started" is called after a run's process started and before its pid is recorded."""


def started_at(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat), None where there is none
    (no /proc, or no such process); with the pid it names one process, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]  # a zombie has exited


def _write_record(path: str, record: dict) -> None:
    """Write a record whole or not at all (a kill mid-write leaves the previous one)."""
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)


def record_intent(folder: str, pair: str, run_id_file: str) -> tuple[str, dict]:
    """(path, record): write <folder>/running/<pair>.json before the pair's run starts, naming the
    pair, a fresh token for the run's environment and this sweep's pid and host."""
    os.makedirs(os.path.join(folder, RUNNING), exist_ok=True)
    path = os.path.join(folder, RUNNING, f"{pair}.json")
    record = {"pair": pair, "token": secrets.token_hex(8), "host": socket.gethostname(), "sweep_pid": os.getpid(),
              "run_id_file": run_id_file, "since": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    _write_record(path, record)
    return path, record


def record_run(folder: str, pair: str, pid: int, run_id_file: str, intent: dict | None = None) -> str:
    """Add the started run's pid (and its process's start time) to <folder>/running/<pair>.json; its path."""
    os.makedirs(os.path.join(folder, RUNNING), exist_ok=True)
    path = os.path.join(folder, RUNNING, f"{pair}.json")
    _write_record(path, {**(intent or {"host": socket.gethostname(), "pair": pair, "run_id_file": run_id_file,
                                       "since": time.strftime("%Y-%m-%d %H:%M:%S %z")}),
                         "pid": pid, "started_at": started_at(pid)})
    return path


def with_token(token: str) -> list[int] | None:
    """Pids of this host's processes whose environment holds TOKEN_ENV=token (a run's processes);
    None where there is no /proc to look in. Processes of other users cannot be read: not listed."""
    if not os.path.isdir("/proc/self"):
        return None
    needle, found = f"{TOKEN_ENV}={token}".encode(), []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if needle in f.read().split(b"\0") and started_at(int(name)) is not None:
                        found.append(int(name))
            except OSError:  # gone meanwhile, or not ours
                continue
    return found


def running(holder: dict) -> bool:
    """Whether the run a record names is still going: its process exists on this host and started
    when the record says, or a process carries its token. A record from another host counts as
    going (it cannot be checked)."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname():
        return True
    if isinstance(pid, int) and alive(pid) and (not holder.get("started_at")  # no /proc: the pid alone
                                                or started_at(pid) == holder["started_at"]):
        return True  # the same process, not a later one given its pid, and not a zombie
    return bool(holder.get("token")) and bool(with_token(holder["token"]))


def run_records(folder: str) -> list[dict]:
    """The records in <folder>/running (each with its "path"), oldest pair name first."""
    where = os.path.join(folder, RUNNING)
    names = sorted(n for n in os.listdir(where) if n.endswith(".json")) if os.path.isdir(where) else []
    return [{**_read(os.path.join(where, n)), "path": os.path.join(where, n)} for n in names]


def read_run_id(path: str) -> str | None:
    """The run id Metaflow wrote to a --run-id-file, None before it has."""
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def attempt(cmd: list[str], out: str, pair: str, log: str, id_file: str) -> tuple[int | None, str | None]:
    """(exit status, run id) of one run of `cmd`: recorded in <out>/running before it starts and
    while it goes, started in its own process group (a signal to the sweep reaches it only as the
    sweep passes it on, and it outlives a sweep killed outright), its output appended to `log`
    after a header line. The run id is what Metaflow wrote to `id_file`. (None, None): not
    started, the sweep was stopped."""
    os.makedirs(os.path.dirname(id_file), exist_ok=True)
    if os.path.exists(id_file):
        os.unlink(id_file)
    with open(log, "a") as f:
        f.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S %z')} sweep pid {os.getpid()} on "
                f"{socket.gethostname()} starts: {shlex.join(cmd)}\n")
        f.flush()
        if STOP["signal"]:
            return None, None
        record, intent = record_intent(out, pair, id_file)  # before the run exists: no window without a record
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, TOKEN_ENV: intent["token"]})
        _GROUPS[proc.pid] = pair
        if HOOKS["started"]:
            HOOKS["started"]()
        record_run(out, pair, proc.pid, id_file, intent)
        if STOP["signal"]:  # came while it started: pass it on here
            _signal_group(proc.pid, STOP["signal"])
        try:
            rc = _wait(proc, record, id_file)
        finally:
            _GROUPS.pop(proc.pid, None)
    run_id = read_run_id(id_file)
    for path in (record, id_file):
        if os.path.exists(path):
            os.unlink(path)
    return rc, run_id


def _wait(proc, record: str, id_file: str, poll_s: float = 0.5) -> int:
    """proc's exit status; meanwhile, the run id goes into the record as soon as Metaflow writes it."""
    noted = False
    while True:
        try:
            return proc.wait(timeout=poll_s)
        except subprocess.TimeoutExpired:
            run_id = None if noted else read_run_id(id_file)
            if run_id:
                _write_record(record, {**_read(record), "run_id": run_id})
                noted = True


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def stop(signum, frame) -> None:
    """SIGTERM / SIGINT: no new run starts, and every run going gets the same signal; the sweep
    goes on waiting for them (and then stops)."""
    STOP["signal"] = signum
    groups = list(_GROUPS)
    os.write(2, f"sweep: {signal.Signals(signum).name}: passed on to {len(groups)} run(s); waiting for them to "
                f"stop; no other run starts\n".encode())
    for pgid in groups:
        _signal_group(pgid, signum)


def wait_for_earlier_runs(out: str, poll_s: float = 1.0) -> None:
    """Runs an earlier invocation of the sweep started (<out>/running) that are still going: wait
    for each to end, so that the plan sees how it ended and never starts its pair again. A record
    from another host, or one without a pid where there is no /proc to find its token in, cannot
    be checked: raises SweepLocked naming it."""
    for rec in run_records(out):
        if not isinstance(rec.get("pid"), int) and not rec.get("token"):  # not a record this sweep writes
            print(f"sweep: note: {rec['path']} names no process; removed", flush=True)
        elif rec.get("host") != socket.gethostname() or (
                not isinstance(rec.get("pid"), int) and with_token(rec["token"]) is None):
            raise SweepLocked(
                f"{rec['path']} records a run of pair {rec.get('pair')} started on host {rec.get('host')} (pid "
                f"{rec.get('pid', 'not recorded')}), which cannot be checked from here: remove it once that run "
                "has ended")
        elif running(rec):
            _wait_for(rec, poll_s)
        for path in (rec["path"], rec.get("run_id_file")):
            if path and os.path.exists(path):
                os.unlink(path)


def _wait_for(rec: dict, poll_s: float) -> None:
    """Wait until the run a record names has ended; a signal to the sweep meanwhile is passed on to it."""
    pid = rec.get("pid") if isinstance(rec.get("pid"), int) else (with_token(rec["token"]) or [None])[0]
    run_id = rec.get("run_id") or read_run_id(rec.get("run_id_file") or "")
    print(f"sweep: {rec.get('pair')}: run {run_id or '(id not written yet)'} (pid {pid}, started "
          f"{rec.get('since')} by an earlier invocation of this sweep) is still going; waiting for it", flush=True)
    group = _group(pid)
    if group:
        _GROUPS[group] = rec.get("pair", "")
    while running(rec):
        time.sleep(poll_s)
    _GROUPS.pop(group, None)
    print(f"sweep: {rec.get('pair')}: run {run_id or ''} has ended", flush=True)


def _group(pid: int | None) -> int | None:
    try:
        return os.getpgid(pid) if pid else None
    except ProcessLookupError:
        return None
