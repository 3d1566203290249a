"""Mid-step checkpoints through metaflow-checkpoint, so a dead step loses minutes, not hours.

A checkpoint is a folder of state files and `meta.json`, which lists the step and every
file's size and SHA-256, so that a truncated, corrupted or missing file is detected before
it is used. A one-process run writes one file, `state.pt` (the full training state: model,
optimizer, scheduler, data position, RNG states, history); a run over several processes
writes a sharded folder (see monollm.distributed). `meta.json` is written last: a folder
without it was never finished. State files hold only tensors and plain values and are read
with torch.load(weights_only=True): nothing read back from a datastore is unpickled.

Where a task continues from:
- a retry of the same task (@retry): the newest checkpoint of its earlier attempts
  (`@checkpoint(load_policy="fresh")` loads it into `current.checkpoint.directory`);
- a step re-run by `resume`: the newest checkpoint of the origin run's task of this step,
  loaded explicitly (a resumed task is a new task and loads nothing by itself);
- a brand-new run: nothing, ever.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import torch

STATE, META = "state.pt", "meta.json"


class CorruptCheckpoint(RuntimeError):
    """A checkpoint whose file is missing, truncated or does not match its checksum."""


def write(folder: str, state: dict):
    """Write `state` into `folder` (created) as `state.pt`, sealed; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, STATE)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)  # never leave a half-written state.pt behind
    return seal(folder, state["step"])


def seal(folder: str, step: int) -> str:
    """Record the size and checksum of every file in `folder` (its `meta.json`); returns the folder."""
    files = digests(folder, skip=(META,))
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


def digests(folder: str, skip: tuple[str, ...] = ()) -> dict:
    """Relative path -> {"sha256", "bytes"} of every file under `folder` but those in `skip`."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel not in skip:
                files[rel] = {"sha256": _sha256(path), "bytes": os.path.getsize(path)}
    return files


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
                                f"(damaged, or holds other objects, which are never unpickled): {err}") from err


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class StepCheckpointer:
    """Saves and finds the training checkpoints of one Metaflow step (needs @checkpoint)."""

    def __init__(self, current, name: str, log=print):
        """`name` must be unique within the step (e.g. per attack in a foreach)."""
        self.current, self.name, self.log = current, name, log

    def save(self, state: dict, step: int):
        """Save the state as this task's newest checkpoint."""
        folder = tempfile.mkdtemp(prefix=f"monollm-ckpt-{self.name}-")
        write(folder, state)
        self.save_folder(folder, step)
        shutil.rmtree(folder, ignore_errors=True)

    def save_folder(self, folder: str, step: int):
        """Save a folder already sealed (`seal`) as this task's newest checkpoint."""
        self.current.checkpoint.save(path=folder, name=self.name, metadata={"step": step}, storage_format="files")
        self.log(f"[{self.name}] checkpoint saved at step {step}")

    def restore(self, reader=read):
        """What to continue from, or None for a fresh start (see the module docstring).

        `reader(folder)` turns a checkpoint folder into it: `read` (default) gives the state,
        `check` the verified folder itself (sharded checkpoints, loaded by the processes)."""
        cp = self.current.checkpoint
        if cp.is_loaded:
            state = self._first_readable(self._listed(None), reader, loaded_dir=cp.directory)
            if state is not None:
                return state
        origin = getattr(self.current, "origin_run_id", None)
        if origin:
            return self._first_readable(self._origin_refs(origin), reader)
        return None

    def _listed(self, task) -> list:
        """Checkpoints of `task` (None: this task), all attempts, newest first."""
        found = []
        attempts = range(0, 10) if task is not None else [None]
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

    def _first_readable(self, refs, reader, loaded_dir: str | None = None):
        """Load the newest checkpoint that reads cleanly, falling back to older ones."""
        errors = []
        if loaded_dir:
            try:
                state = reader(loaded_dir)
                self.log(f"[{self.name}] continuing from checkpoint at step {step_of(loaded_dir)} (earlier attempt)")
                return state
            except CorruptCheckpoint as err:
                errors.append(str(err))
                self.log(f"[{self.name}] {err}; falling back to an earlier checkpoint")
        for ref in refs:
            folder = tempfile.mkdtemp(prefix=f"monollm-load-{self.name}-")
            try:
                self.current.checkpoint.load(ref, path=folder)
                state = reader(folder)
            except CorruptCheckpoint as err:
                errors.append(str(err))
                self.log(f"[{self.name}] {err}; falling back to an earlier checkpoint")
                continue
            self.log(f"[{self.name}] continuing from checkpoint at step {step_of(folder)}")
            return state
        if errors:
            raise CorruptCheckpoint("no readable checkpoint: " + "; ".join(errors))
        return None


def step_of(folder: str) -> int:
    """The optimizer step a sealed checkpoint folder was written at."""
    with open(os.path.join(folder, META)) as f:
        return json.load(f)["step"]
