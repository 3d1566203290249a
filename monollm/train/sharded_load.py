"""Reading a sharded checkpoint (monollm.train.sharded_save writes it) without running any code from it.

`resume_state` reads a rank's non-sharded part (scheduler, history, step, its RNG streams) with
torch.load(weights_only=True). `load_shards` reads the shards with torch.distributed.checkpoint,
after restricted unpicklers have checked its `.metadata` and every non-tensor entry: a folder
planted in the datastore cannot execute anything.
"""
from __future__ import annotations

import os
import pickle

import torch

from monollm import checkpoints


def resume_state(folder: str, rank: int) -> dict:
    """The non-sharded part of a checkpoint for `rank`, read without unpickling (weights_only)."""
    rest = checkpoints.load_tensors(os.path.join(folder, "rest.pt"))
    rng_path = os.path.join(folder, f"rng-{rank}.pt")
    if not os.path.exists(rng_path):  # fewer ranks wrote it: RNG streams of rank 0 (no dropout in these models)
        rng_path = os.path.join(folder, "rng-0.pt")
    rest["rng"] = checkpoints.load_tensors(rng_path)
    return {**rest, "folder": folder}


def load_shards(state: dict, path: str):
    """dcp.load into `state`, refusing anything but tensors and plain values: torch's reader
    unpickles the `.metadata` file and its planner the non-tensor entries in full, so both are
    first read by restricted unpicklers, which raise before any other object is built."""
    import torch.distributed.checkpoint as dcp

    from torch.distributed.checkpoint.api import CheckpointException

    with open(os.path.join(path, ".metadata"), "rb") as f:
        _MetadataUnpickler(f).load()
    try:
        dcp.load(state, storage_reader=dcp.FileSystemReader(path), planner=_weights_only_planner())
    except CheckpointException as err:  # DCP wraps every rank's error: give back the refusal itself
        refused = [e for e, _ in err.failures.values() if isinstance(e, checkpoints.CorruptCheckpoint)]
        if refused:
            raise refused[0] from None
        raise


# what DCP's `.metadata` pickle may name: its own metadata dataclasses, tensor sizes, dtypes, layouts
_METADATA_GLOBALS = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
                     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
                     ("pathlib", "PurePosixPath"), ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's `.metadata` (tensor shapes, dtypes and file offsets) and nothing else."""

    def find_class(self, module: str, name: str):
        if (module == "torch.distributed.checkpoint.metadata" or (module, name) in _METADATA_GLOBALS
                or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))):
            return super().find_class(module, name)
        raise checkpoints.CorruptCheckpoint(f"sharded checkpoint metadata names {module}.{name}, which "
                                            f"checkpoint metadata never holds; it is not unpickled")


def _weights_only_planner():
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class Planner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):
            try:
                torch.load(value, weights_only=True)  # raises on anything but tensors and plain values ...
            except Exception as err:
                raise checkpoints.CorruptCheckpoint(f"sharded checkpoint entry {read_item.dest_index.fqn} is "
                                                    f"not tensors and plain values: {err}") from err
            value.seek(0)
            super().load_bytes(read_item, value)  # ... so the full unpickling of the same bytes builds nothing else
    return Planner()
