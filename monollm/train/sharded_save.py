"""Saving one rank's part of a sharded checkpoint while training goes on (monollm.train.distributed).

A save stages the rank's shards of the model and optimizer in host memory (synchronously: the
training step after it may change them) and returns. The rest happens in the background:

1. torch.distributed.checkpoint writes the staged shards (`dcp.async_save`, its collectives on
   a gloo group of the checkpoint's own, so they never interleave with training's);
2. each rank hashes the files it wrote itself (its `.distcp` shards and `rng-<rank>.pt`;
   rank 0 also `shards/.metadata` and `rest.pt`) and leaves the digests in `digests-<rank>.json`;
3. rank 0 waits for every rank's digests, checks that together they name every file of the
   folder exactly once, and seals it (monollm.checkpoints.seal, `meta.json` last). The
   coordinator stores a folder only once it is sealed.

One save is in flight at a time: the next save, and the end of training, wait for it first
(`Pending.result`), and an error in the background (a full disk, a rank whose digests never
come) is raised there, stopping the rank as an error in training would.
"""
from __future__ import annotations

import json
import os
import threading
import time

import torch

from monollm import checkpoints

DIGESTS = "digests-{rank}.json"


class Pending:
    """A save running in the background: `result()` waits for it and raises its error, if any."""

    def __init__(self, work):
        self._error, self._done = None, threading.Event()
        # a daemon thread: a rank that fails for another reason never hangs at exit on its save
        threading.Thread(target=self._run, args=(work,), daemon=True, name="checkpoint-save").start()

    def _run(self, work):
        try:
            work()
        except BaseException as err:  # handed to whoever waits
            self._error = err
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self):
        self._done.wait()
        if self._error is not None:
            raise self._error


def start(folder: str, rank: int, world: int, state: dict, step: int, group, timeout_s: float) -> Pending:
    """Write `state` (model, optimizer, rng; rank 0 also scheduler, history, step) into `folder`
    as this rank's part of the sharded checkpoint of `step`, in the background once staged."""
    import torch.distributed.checkpoint as dcp

    os.makedirs(folder, exist_ok=True)
    torch.save(state["rng"], os.path.join(folder, f"rng-{rank}.pt"))
    if rank == 0:
        torch.save({k: state[k] for k in ("scheduler", "history", "step")}, os.path.join(folder, "rest.pt"))
    written = dcp.async_save({"model": state["model"], "optimizer": state["optimizer"]},
                             checkpoint_id=os.path.join(folder, "shards"), process_group=group)

    def finish():
        written.result()  # this rank's shards are on disk (rank 0's: with `.metadata`)
        mine = {rel for rel in checkpoints.files_of(folder) if wrote(rel, rank)}
        _write_json(os.path.join(folder, DIGESTS.format(rank=rank)), checkpoints.digests(folder, only=mine))
        if rank == 0:
            seal(folder, step, world, timeout_s)
    return Pending(finish)


def wrote(rel: str, rank: int) -> bool:
    """Whether `rank` wrote the file at relative path `rel` of a checkpoint folder."""
    name = os.path.basename(rel)
    if rel == f"rng-{rank}.pt" or (rel.startswith("shards/") and name.startswith(f"__{rank}_")
                                    and name.endswith(".distcp")):
        return True
    return rank == 0 and rel in ("rest.pt", "shards/.metadata")


def seal(folder: str, step: int, world: int, timeout_s: float, poll_s: float = 0.2) -> str:
    """Rank 0: once every rank's digests are in `folder`, seal it with all of them. Raises
    TimeoutError naming the ranks whose digests did not come within `timeout_s`, and
    CorruptCheckpoint when the digests do not cover each file of the folder exactly once."""
    paths = [os.path.join(folder, DIGESTS.format(rank=r)) for r in range(world)]
    deadline = time.monotonic() + timeout_s
    while not all(os.path.exists(p) for p in paths):
        if time.monotonic() > deadline:
            missing = [r for r, p in enumerate(paths) if not os.path.exists(p)]
            raise TimeoutError(f"checkpoint {folder}: no digests from rank(s) {missing} after {timeout_s:.0f} s "
                               f"(parallel.timeout_minutes)")
        time.sleep(poll_s)
    files, seen = {}, []
    for p in paths:
        with open(p) as f:
            part = json.load(f)
        seen += list(part)
        files.update(part)
    names = {os.path.basename(p) for p in paths}
    listed = [rel for rel in checkpoints.files_of(folder, skip=(checkpoints.META,)) if rel not in names]
    if sorted(seen) != listed:
        raise checkpoints.CorruptCheckpoint(
            f"checkpoint {folder}: the ranks' digests do not name each file once (unhashed: "
            f"{sorted(set(listed) - set(seen))}; hashed twice or not there: "
            f"{sorted({r for r in seen if seen.count(r) > 1} | (set(seen) - set(listed)))})")
    for p in paths:
        os.remove(p)
    return checkpoints.seal(folder, step, files=dict(sorted(files.items())))


def _write_json(path: str, value):
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)
