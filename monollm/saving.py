"""A background checkpoint save's parts: the host copy of the state (`snapshot`), and what
mid-training checkpoints cost a training task, measured by the task itself (`SaveTimes`).

Two costs, kept apart because only one of them slows training:

* on the training loop: the seconds spent inside `save` (the copy into host memory, and
  waiting for the previous save when it is still being stored) and in the final `wait`;
* off the loop: the seconds a background thread (or the coordinating process of a run over
  several processes) spends storing each sealed folder in the datastore, and its bytes.

A store slower than `train.checkpoint_every` steps of training makes the next save wait:
that wait lands on the loop, and the checkpointer logs it when it happens. At the end of
training the task logs `stores_line` and `loop_line` (with several processes, the coordinator
the stores and rank 0 its own loop), and the training step keeps `as_dict()` as the artifact
`checkpoint_costs`, so the first run on a cluster reports its own checkpoint overhead and store
rate.

A write that finds its disk full stops with one line (`disk_space`): which path, how much the
write needed and how much was free there, instead of an `[Errno 28]` traceback.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time

import torch

from monollm.errors import DiskFull


def folder_bytes(folder: str) -> int:
    """Total size of the files under `folder`."""
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
MORE_DISK = ("Free space there, or give the step more disk: resources.disk (MB) on Kubernetes; TMPDIR (temporary "
             "files) or METAFLOW_DATASTORE_SYSROOT_LOCAL (the local datastore) on a larger disk")
"""What to do about a full disk (docs/cluster.md, "When a step fails")."""


def out_of_space(err: BaseException | None) -> bool:
    """Whether `err`, or an error it was raised from or while handling, is a full disk or a spent
    quota: torch.save reports one as a RuntimeError raised while handling the OSError, safetensors
    as its own error whose text quotes the operating system's."""
    seen, words = set(), [text for n in NO_SPACE for text in (os.strerror(n), f"os error {n})")]
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if (isinstance(err, OSError) and err.errno in NO_SPACE) or any(w in str(err) for w in words):
            return True
        err = err.__cause__ or err.__context__
    return False


def free_bytes(path: str) -> int | None:
    """Bytes free on the filesystem of `path` (of its nearest existing parent); None where it is not
    a local path (an s3:// datastore)."""
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


@contextlib.contextmanager
def disk_space(path: str, needed: int, what: str):
    """Inside the block, writing `what` (about `needed` bytes) under `path`: DiskFull before the block
    when less is free there, and a full disk inside it stops it with DiskFull naming `path`, what it
    needed and what was free there when the block began."""
    free = free_bytes(path)
    if free is not None and needed > free:  # refused before a byte is written: no half-written file
        raise DiskFull(f"no space left on the disk of {path}: {what} needs {_size(needed)}, {_size(free)} is free "
                       f"there. {MORE_DISK}")
    try:
        yield
    except DiskFull:
        raise
    except Exception as err:
        if not out_of_space(err):
            raise
        where, had = ((f"the disk of {path}", f"{_size(free)} was free there when it began") if free is not None
                      else (path, "free space unknown"))
        raise DiskFull(f"no space left on {where}: {what} needed {_size(needed)}, {had}. {MORE_DISK}") from err


def state_bytes(value) -> int:
    """Bytes of the tensors in a state (dicts, lists and tuples of tensors and plain values): about
    what writing it takes."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(state_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(state_bytes(v) for v in value)
    return 0


def datastore_place() -> str:
    """Where this process's steps store what they save: the local datastore's folder, or the kind
    of the datastore ("s3", ...) for a remote one."""
    from metaflow.metaflow_config import DEFAULT_DATASTORE

    if DEFAULT_DATASTORE != "local":
        return f"the {DEFAULT_DATASTORE} datastore"
    from metaflow.plugins.datastores.local_storage import LocalStorage

    return LocalStorage.get_datastore_root_from_config(print, create_on_absent=False) or os.getcwd()


class SaveTimes:
    """Running totals of one task's checkpoint costs (module docstring). `train_s`: the seconds
    of training they fall in, once the caller has set it."""

    def __init__(self):
        self.stores, self.stored_bytes, self.store_s = 0, 0, 0.0
        self.loop_s, self.waits, self.waited_s, self.train_s = 0.0, 0, 0.0, None

    def stored(self, folder_size: int, seconds: float) -> str:
        """Count one folder stored; the log line's tail (size, time, rate)."""
        self.stores, self.stored_bytes, self.store_s = self.stores + 1, self.stored_bytes + folder_size, \
            self.store_s + seconds
        return f"{_size(folder_size)} stored in {seconds:.1f} s ({folder_size / 1e6 / max(seconds, 1e-9):.0f} MB/s)"

    def loop(self, fn, *args):
        """fn(*args) (a save, or the final wait), its time counted as the training loop's."""
        with Clock() as c:
            out = fn(*args)
        self.loop_s += c.seconds
        return out

    def finish(self, busy: bool, join) -> float | None:
        """join() a background save; when it was still `busy`, the wait counts as blocked: its seconds."""
        if not busy:
            join()
            return None
        with Clock() as c:
            join()
        self.waits, self.waited_s = self.waits + 1, self.waited_s + c.seconds
        return c.seconds

    def stores_line(self) -> str:
        rate = f" ({self.stored_bytes / 1e6 / self.store_s:.0f} MB/s)" if self.store_s > 0 else ""
        return f"checkpoints: {self.stores} stored, {_size(self.stored_bytes)} in {self.store_s:.1f} s{rate}"

    def loop_line(self, train_s: float) -> str:
        """Set `train_s`; the loop's share of it."""
        self.train_s = train_s
        waits = (f", {self.waited_s:.1f} s of it waiting {self.waits} time(s) for an earlier save to finish"
                 if self.waits else "")
        return (f"the training loop spent {self.loop_s:.1f} s of {self.train_s:.1f} s of training in checkpoint "
                f"saves ({100 * self.loop_s / max(self.train_s, 1e-9):.1f}%){waits}")

    def report(self, who: str, train_s: float, stored_only: bool = False) -> str:
        """Set `train_s`; the end-of-training line. `stored_only`: this process only stored the
        checkpoints (several training processes: rank 0 reports its own loop's share)."""
        self.train_s = train_s
        return f"[{who}] {self.stores_line()}" + ("" if stored_only else f"; {self.loop_line(train_s)}")

    def as_dict(self) -> dict:
        return dict(stores=self.stores, stored_bytes=self.stored_bytes, store_s=self.store_s, loop_s=self.loop_s,
                    waits=self.waits, waited_s=self.waited_s, train_s=self.train_s)


class Clock:
    """`with Clock() as c: ...` then `c.seconds`."""

    def __enter__(self):
        self.start, self.seconds = time.perf_counter(), 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


def snapshot(value, reuse=None):
    """A copy of a state that later training cannot change: tensors copied to host memory, dicts,
    lists and tuples rebuilt (the history grows after a save), other (immutable) values shared.
    `reuse`: an earlier snapshot nothing reads any more; a tensor whose place there holds a host
    tensor of its shape and dtype is copied into it, memory already mapped: several times faster
    than fresh memory (benchmarks/checkpoint_io.py)."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if (isinstance(reuse, torch.Tensor) and reuse.device.type == "cpu" and reuse.shape == value.shape
                and reuse.dtype == value.dtype and reuse.data_ptr() != value.data_ptr()):
            return reuse.copy_(value)
        return value.to("cpu", copy=True)
    if isinstance(value, dict):
        old = reuse if isinstance(reuse, dict) else {}
        return {k: snapshot(v, old.get(k)) for k, v in value.items()}
    if type(value) in (list, tuple):
        old = list(reuse) if type(reuse) is type(value) and len(reuse) == len(value) else [None] * len(value)
        return type(value)(snapshot(v, o) for v, o in zip(value, old))
    return value
