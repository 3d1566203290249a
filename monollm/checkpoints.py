# long: the checkpoint files and their checks, and the datastore checkpointer that falls back over them
"""Mid-step checkpoints through metaflow-checkpoint, so a dead step loses minutes, not hours.

A checkpoint is a folder of state files and `meta.json`, which lists the step and every
file's size and SHA-256, so that a truncated, corrupted or missing file is detected before
it is used. A one-process run writes one file, `state.pt` (the full training state: model,
optimizer, scheduler, data position, RNG states, history); a run over several processes
writes a sharded folder (see monollm.train.distributed). `meta.json` is written last: a folder
without it was never finished. State files hold only tensors and plain values and are read
with torch.load(weights_only=True): nothing read back from a datastore is unpickled.

Where a task continues from: a retry of the same task (@retry), the newest checkpoint of its
earlier attempts (`@checkpoint(load_policy="fresh")` loads it into
`current.checkpoint.directory`); a step re-run by `resume`, the newest checkpoint of the origin
run's task of this step, loaded explicitly (a resumed task loads nothing by itself); a
brand-new run, nothing, ever.

Only the newest `keep` checkpoints a training task saves stay stored (`train.keep_checkpoints`;
the attacks' small ones are all kept): an older one is deleted (`delete_model`) once a newer one
is stored, never those of an earlier attempt of the task (it may need them to fall back to).

Everything that saves progress speaks one contract, `Checkpoint`: `restore()` gives the newest
readable state (a dict of tensors and plain values, holding its "step") or None for a fresh
start, and `save(state, step)` stores a newer one. `StepCheckpointer` keeps them in Metaflow's
datastore; monollm.train.distributed's ranks write sharded folders; `InMemory` (tests, benchmarks).

`StepCheckpointer(background=True)` lets training go on while a checkpoint is written,
sealed (hashed) and stored: only a copy into host memory runs on the training loop.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from typing import Protocol

import torch

from monollm.errors import FixableError
from monollm.saving import Clock, SaveTimes, datastore_place, disk_space, folder_bytes, snapshot, state_bytes

STATE, META = "state.pt", "meta.json"


class CorruptCheckpoint(RuntimeError):
    """A checkpoint whose file is missing, truncated or does not match its checksum."""


class NoReadableCheckpoint(CorruptCheckpoint, FixableError):
    """Every checkpoint a task could continue from is damaged: the message names each one tried and
    what to do (a resume would only try them again)."""


def write(folder: str, state: dict):
    """Write `state` into `folder` (created) as `state.pt`, sealed (a full disk: DiskFull); returns the folder."""
    with disk_space(folder, state_bytes(state), f"a checkpoint of step {state['step']}"):
        return seal(write_unsealed(folder, state), state["step"])


def write_unsealed(folder: str, state: dict) -> str:
    """Write `state` into `folder` (created) as `state.pt`, without `meta.json`: not yet a
    checkpoint until `seal`ed. Returns the folder."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, STATE)
    with open(path + ".tmp", "wb") as f:  # through a Python file: a full disk surfaces as its OSError (ENOSPC)
        torch.save(state, f)
    os.replace(path + ".tmp", path)  # never leave a half-written state.pt behind
    return folder


def seal(folder: str, step: int, files: dict | None = None) -> str:
    """Record the size and checksum of every file in `folder` (its `meta.json`); returns the folder.

    `files`: the digests (as `digests` gives them) when already computed, e.g. by several
    processes each hashing the files it wrote (monollm.train.sharded_save)."""
    files = digests(folder, skip=(META,)) if files is None else files
    with open(os.path.join(folder, META + ".tmp"), "w") as f:
        json.dump({"step": step, "files": files}, f)
    os.replace(os.path.join(folder, META + ".tmp"), os.path.join(folder, META))
    return folder


def check(folder: str) -> str:
    """The folder if every file `meta.json` lists is there, whole and unchanged; else raises
    CorruptCheckpoint naming the file."""
    meta_path = os.path.join(folder, META)
    if not os.path.exists(meta_path):
        raise CorruptCheckpoint(f"checkpoint file missing: {meta_path}")
    with open(meta_path) as f:
        meta = json.load(f)
    problem = damage(folder, meta["files"], "checkpoint")
    if problem:
        raise CorruptCheckpoint(problem)
    return folder


def digests(folder: str, skip: tuple[str, ...] = (), only: set[str] | None = None) -> dict:
    """Relative path -> {"sha256", "bytes"} of every file under `folder` but those in `skip`
    (and, if `only` is given, of those relative paths only)."""
    return {rel: {"sha256": _sha256(os.path.join(folder, rel)), "bytes": os.path.getsize(os.path.join(folder, rel))}
            for rel in files_of(folder, skip) if only is None or rel in only}


def files_of(folder: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Relative paths of the files under `folder` but those in `skip`, sorted."""
    found = []
    for root, _, names in os.walk(folder):
        found += [os.path.relpath(os.path.join(root, name), folder) for name in names]
    return sorted(rel for rel in found if rel not in skip)


def damage(folder: str, files: dict, kind: str) -> str | None:
    """None when every file of `files` (as `digests` gives them) is in `folder`, whole and
    unchanged; else what is wrong, naming the file (`kind`: "checkpoint", "model", ...)."""
    for rel, expect in files.items():
        path = os.path.join(folder, rel)
        if not os.path.exists(path):
            return f"{kind} file missing: {path}"
        if os.path.getsize(path) != expect["bytes"]:
            return (f"{kind} file {path} is truncated or corrupted ({os.path.getsize(path)} bytes, "
                    f"expected {expect['bytes']})")
        if _sha256(path) != expect["sha256"]:
            return f"{kind} file {path} is corrupted (checksum mismatch at the expected size)"
    return None


def read(folder: str) -> dict:
    """The state saved by `write`; raises CorruptCheckpoint naming the file if it is damaged."""
    path = os.path.join(folder, STATE)
    check(folder)
    if not os.path.exists(path):
        raise CorruptCheckpoint(f"checkpoint file missing: {path} (a sharded checkpoint of several "
                                f"processes cannot be read by a one-process run)")
    return load_tensors(path)


def load_tensors(path: str):
    """A file of tensors and plain values (dicts, lists, numbers, strings), read without running
    any code: torch.load(weights_only=True) refuses every other object, so a file planted in the
    datastore cannot execute anything. Raises CorruptCheckpoint naming the file."""
    if not os.path.exists(path):
        raise CorruptCheckpoint(f"checkpoint file missing: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged or foreign pickle surfaces as many exception types
        raise CorruptCheckpoint(f"checkpoint file {path} cannot be read as tensors and plain values "
                                "(damaged, or holds other objects, which are never unpickled): "
                                f"{_reason(err)}") from err


def _reason(err: Exception) -> str:
    """One line of a load error: torch's refusal of a pickle spans several lines of advice, of which
    the unpickler's own line says what it refused."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = [line for line in lines if "global" in line.lower() and "weights only load failed" not in line.lower()] \
        or lines or [type(err).__name__]
    return said[0][:300]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Checkpoint(Protocol):
    """What training (one process or several) and attacks save progress through."""

    def restore(self) -> dict | None:
        """The newest readable state to continue from, or None for a fresh start."""

    def save(self, state: dict, step: int) -> None:
        """Store `state` (tensors and plain values) as the newest checkpoint, made at `step`."""


class InMemory:
    """A Checkpoint kept in memory: `saved` maps step -> a copy of each saved state; `restore`
    gives `start` (a state to continue from, or None)."""

    def __init__(self, start: dict | None = None):
        self.start, self.saved = start, {}

    def restore(self) -> dict | None:
        return self.start

    def save(self, state: dict, step: int):
        self.saved[step] = snapshot(state)


QUIET_BELOW = 1_000_000
"""Bytes: a checkpoint kept without a limit (`keep` None: an attack's search state) and smaller
than this is logged on its first save only."""


class StepCheckpointer:
    """The Checkpoint of one Metaflow step, in its datastore (the step needs @checkpoint)."""

    def __init__(self, current, name: str, log=print, keep: int | None = None, delete=None,
                 background: bool = False):
        """`name` must be unique within the step (e.g. per attack in a foreach). `keep`: how many
        of the newest checkpoints this task saves stay stored (at least 1; None: all, as the
        attacks' small search checkpoints). `delete(ref)` removes a stored checkpoint (default:
        metaflow-checkpoint's `delete_model`). `background`: `save` returns once the state is
        copied to host memory and stores it in a thread (`save_in_background`); call `wait`
        after the last one."""
        if keep is not None and keep < 1:
            raise ValueError(f"keep is {keep}: at least the newest checkpoint must be kept")
        self.current, self.name, self.log, self.keep, self.background = current, name, log, keep, background
        # _copy: the last background save's host copy, reused by the next one
        self._delete, self._stored, self._worker, self._failed, self._copy = delete, [], None, None, None
        self._pending, self.times = None, SaveTimes()  # the step being saved in the background; costs
        self._said_fresh = False  # the resumed-from-nothing line is logged once

    def save(self, state: dict, step: int):
        """Save the state as this task's newest checkpoint (in a thread if `background`); the time
        it takes the caller counts as the training loop's (`times`)."""
        self.times.loop(self.save_in_background if self.background else self._save_here, state, step)

    def _save_here(self, state: dict, step: int):
        self._finish()
        folder = tempfile.mkdtemp(prefix=f"monollm-ckpt-{self.name}-")
        try:
            write(folder, state)
            self.save_folder(folder, step)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def save_in_background(self, state: dict, step: int):
        """Copy the state to host memory now (into the previous save's copy: it refers to live
        weights and a growing history), then write, seal and store it in a thread while the caller
        trains on. The previous save is finished first (its error, if any, raised); call `wait`
        after the last. Holds host memory for one more copy of the state, from save to save."""
        self._finish()
        copy = self._copy = snapshot(state, reuse=self._copy)
        self._worker, self._pending = threading.Thread(target=self._write_seal_store, args=(copy, step),
                                                       name=f"checkpoint-{self.name}", daemon=True), step
        self._worker.start()

    def _write_seal_store(self, state: dict, step: int):
        folder = tempfile.mkdtemp(prefix=f"monollm-ckpt-{self.name}-")
        try:
            self.save_folder(write(folder, state), step)
        except BaseException as err:  # raised on the training thread by the next `wait`
            self._failed = err
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def wait(self):
        """Finish the save running in the background, if any; raise its error, if it failed. The
        time it takes counts as the training loop's (`times`)."""
        self.times.loop(self._finish)

    def _finish(self):
        if self._worker is not None:  # still storing: the loop waits, a cost `times` reports
            waited = self.times.finish(self._worker.is_alive(), self._worker.join)
            if waited is not None:
                self.log(f"[{self.name}] waited {waited:.1f} s for the checkpoint of step {self._pending} to be stored")
            self._worker = None
        failed, self._failed = self._failed, None
        if failed is not None:  # a full disk stays a FixableError: one line, not a traceback
            kind = type(failed) if isinstance(failed, FixableError) else RuntimeError
            raise kind(f"[{self.name}] saving a checkpoint failed: {failed}") from failed

    def save_folder(self, folder: str, step: int):
        """Save a folder already sealed (`seal`) as this task's newest checkpoint, then delete
        the ones this task saved before beyond the newest `keep`."""
        size = folder_bytes(folder)
        with Clock() as c, disk_space(datastore_place(), size, f"storing the checkpoint of step {step}"):
            ref = self.current.checkpoint.save(path=folder, name=self.name, metadata={"step": step},
                                               storage_format="files")
        line = f"[{self.name}] checkpoint saved at step {step}: {self.times.stored(size, c.seconds)}"
        if self.keep is not None or size >= QUIET_BELOW:
            self.log(line)
        elif self.times.stores == 1:  # an attack's small search state: its first save only
            self.log(line + f"; later saves under {QUIET_BELOW / 1e6:g} MB are not logged")
        self._stored.append(ref)
        self._prune()

    def _prune(self):
        """Delete this task's stored checkpoints beyond the newest `keep` (oldest first)."""
        delete = self._delete or _delete_model
        while self.keep is not None and len(self._stored) > self.keep:
            ref = self._stored.pop(0)
            try:
                delete(ref)
            except Exception as err:  # storage left over costs money, not correctness: go on training
                self.log(f"[{self.name}] could not delete an older checkpoint ({err}); it stays stored")
                continue
            self.log(f"[{self.name}] deleted the checkpoint of step {_step_in(ref)} (keeping the newest {self.keep})")

    def restore(self) -> dict | None:
        """The state to continue from, or None for a fresh start (see the module docstring)."""
        return self._restore(read)

    def restore_folder(self) -> str | None:
        """The verified folder to continue from (a sharded checkpoint, which the training
        processes load themselves), or None for a fresh start."""
        return self._restore(check)

    def _restore(self, reader):
        """`reader(folder)` applied to the newest checkpoint that reads cleanly, or None."""
        cp = self.current.checkpoint
        if cp.is_loaded:
            state = self._first_readable(self._listed(None), reader, loaded_dir=cp.directory)
            if state is not None:
                return state
        origin = getattr(self.current, "origin_run_id", None)
        if not origin:
            return None
        state = self._first_readable(self._origin_refs(origin), reader, run=origin)
        if state is None and not self._said_fresh:  # a resume that continues nothing: say so, once
            self._said_fresh = True
            self.log(self._fresh_start_line(origin))
        return state

    def _fresh_start_line(self, origin: str) -> str:
        """The one line a resumed task logs when the run it resumes left no checkpoint of it."""
        if self.name.startswith("attack"):
            return f"[{self.name}] run {origin} left no readable checkpoint of this search: it starts over"
        return (f"[{self.name}] run {origin} left no readable checkpoint of this step: training starts from step 1 "
                f"(train.checkpoint_every sets how often training saves one; 0 saves none)")

    def _listed(self, task) -> list:
        """Checkpoints of `task` (None: this task), all attempts, newest first."""
        found = []
        attempts = range(_attempts(task)) if task is not None else [None]
        for attempt in attempts:
            try:
                found += self.current.checkpoint.list(name=self.name, task=task, attempt=attempt)
            except Exception:  # an attempt that never ran has nothing to list
                continue
        return sorted(found, key=lambda c: (c.get("metadata", {}) or {}).get("step", 0), reverse=True)

    def _origin_refs(self, origin_run_id: str) -> list:
        """Checkpoints named like this one in the origin run's tasks of this step, newest first.

        Checkpoint names are unique within a step (one per arm or attack), which also picks the
        right branch of a foreach: a task killed mid-way has no artifacts to tell its index by.
        """
        from metaflow import Step

        try:
            tasks = list(Step(f"{self.current.flow_name}/{origin_run_id}/{self.current.step_name}",
                              _namespace_check=False))
        except Exception:  # the origin run never reached this step
            return []
        for task in tasks:
            refs = self._listed(task)
            if refs:
                return refs
        return []

    def _first_readable(self, refs, reader, loaded_dir: str | None = None, run: str | None = None):
        """Load the newest checkpoint that reads cleanly, falling back to older ones; when none does,
        NoReadableCheckpoint names each one tried. `run`: the run they belong to (None: this one)."""
        tried = []  # "step N (where it is stored): what is wrong"
        if loaded_dir:
            try:
                state = reader(loaded_dir)
                self.log(f"[{self.name}] continuing from checkpoint at step {step_of(loaded_dir)} (earlier attempt)")
                return state
            except CorruptCheckpoint as err:
                tried.append(f"step {_step_at(loaded_dir)} (loaded for this attempt): {err}")
                self.log(f"[{self.name}] {err}; falling back to an earlier checkpoint")
        for ref in refs:
            folder = tempfile.mkdtemp(prefix=f"monollm-load-{self.name}-")
            try:
                self._load(ref, folder)
                state = reader(folder)
            except CorruptCheckpoint as err:
                where = ref.get("url") or ref.get("key")  # the stored copy, not this download of it
                tried.append(f"step {_step_in(ref)}: " + (str(err).replace(folder, where) if folder in str(err)
                                                          else f"{err} (stored at {where})"))
                self.log(f"[{self.name}] {err}; falling back to an earlier checkpoint")
                continue
            self.log(f"[{self.name}] continuing from checkpoint at step {step_of(folder)}")
            return state
        if tried:  # a resume would list the same ones: only a new run starts afresh
            run = run or getattr(self.current, "run_id", None) or "RUN"
            raise NoReadableCheckpoint(
                f"[{self.name}] no readable checkpoint to continue from, all {len(tried)} tried are damaged: "
                + "; ".join(tried) + ". A resume would try them again: start a new run instead, which never loads "
                f"an old run's checkpoints (python flows/mono_flow.py --config config PROFILE run --reuse-setup {run} "
                f"takes run {run}'s setup instead of computing it again); this step then starts from its beginning")
        return None

    def _load(self, ref, folder: str):
        """Download `ref` into `folder`; CorruptCheckpoint if it cannot be (e.g. deleted while listed)."""
        try:
            self.current.checkpoint.load(ref, path=folder)
        except Exception as err:  # the datastore's errors come in many types
            raise CorruptCheckpoint(f"checkpoint of step {_step_in(ref)} cannot be loaded: {err}") from err


def _attempts(task) -> int:
    """How many attempts a finished or failed task made (a Metaflow client Task)."""
    try:
        return int(task.current_attempt) + 1
    except Exception:  # no record of its attempts: every attempt Metaflow allows a task
        from metaflow.metaflow_config import MAX_ATTEMPTS

        return MAX_ATTEMPTS


def _step_at(folder: str) -> int | str:
    """The step a checkpoint folder was written at, or "?" when its meta.json is what is damaged."""
    try:
        return step_of(folder)
    except Exception:  # missing, or not JSON any more
        return "?"


def _step_in(ref) -> int | str:
    """The step recorded in a stored checkpoint's reference (its metadata), or "?"."""
    return ((ref or {}).get("metadata") or {}).get("step", "?") if isinstance(ref, dict) else "?"


def _delete_model(ref):
    from metaflow import delete_model  # metaflow-checkpoint: deletes checkpoints as well as models

    if delete_model(ref) is False:
        raise RuntimeError("delete_model reported a failure")


def step_of(folder: str) -> int:
    """The optimizer step a sealed checkpoint folder was written at."""
    with open(os.path.join(folder, META)) as f:
        return json.load(f)["step"]
