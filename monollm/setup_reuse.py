"""Taking `setup` from another run: its splits, packed blocks, attack examples and reference model.

    python flows/mono_flow.py --config config CELL.toml run --reuse-setup MonoFlow/RUN_ID

Runs that differ only in how the constraint is applied (monotonic.mode, init, floor, variant)
start from the same `setup`: the same documents, tokenizer, blocks, examples and pretrained
reference. A sweep over constraint modes would otherwise pretrain that reference once per cell.
With `--reuse-setup RUN`, `setup` copies RUN's setup artifacts instead of computing them, and
only if RUN's setup had the same *setup key*: a digest of the resolved configuration (every
key but IGNORED) and of the code of the monollm package (its Python files). Anything else that differs (the seed,
the data, the pretraining budget, the attack example counts, threads, a single line of code)
refuses the reuse with the keys that differ, and `setup` is then run in full without the option.
The run records where its setup came from (`setup_origin`); its card says so.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os

IGNORED = ("name", "resources", "parallel", "monotonic.mode", "monotonic.init", "monotonic.floor",
           "monotonic.variant")
"""Keys of the resolved configuration that `setup` never reads: where the run is labelled and
placed, and how the constraint is applied to the reference afterwards (make_monotonic). Every
other key, including monotonic.layers (checked against the model in setup) and
monotonic.activation (swapped into the reference in setup), is part of the setup key."""

ARTIFACTS = ("train_blocks", "blocks", "examples", "untrained_perplexity", "hidden_act", "pretraining",
             "sources", "activation_swap", "contamination", "reference_model")
"""What `setup` stores for the steps after it (the flow's setup step sets exactly these)."""

PACKAGE = os.path.dirname(os.path.abspath(__file__))


class ReuseRefused(ValueError):
    """The run named by --reuse-setup cannot lend its setup to this run; the message says why."""


def code_digest(package: str = PACKAGE) -> str:
    """SHA-256 over every Python file of the monollm package (relative path and bytes, sorted by
    path): any change to the code gives another digest. Python files only, which every Metaflow
    code package carries, so a step on a cluster computes what the sweep computes locally."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, package).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read())
            digest.update(b"\0")
    return digest.hexdigest()


def setup_config(resolved: dict) -> dict:
    """The resolved configuration without the IGNORED keys: what `setup` may read."""
    out = copy.deepcopy(resolved)
    for key in IGNORED:
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def key(resolved: dict, code: str | None = None) -> str:
    """The setup key of a run with this resolved configuration, made by this code (`code`: a
    code_digest, computed when None)."""
    text = json.dumps(setup_config(resolved), sort_keys=True, default=list)
    return hashlib.sha256((text + "\0" + (code or code_digest())).encode()).hexdigest()


def differences(theirs: dict, mine: dict) -> list[str]:
    """`key: theirs -> mine` for every setup-relevant key whose value differs."""
    from monollm.schema import flatten

    a, b = flatten(setup_config(theirs)), flatten(setup_config(mine))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if repr(a.get(k)) != repr(b.get(k))]


def stored_key(run) -> str | None:
    """The setup key a run's successful `setup` stored (a Client Run or a pathspec, any user's);
    None when there is no such run, its setup did not succeed or it predates setup keys."""
    from metaflow import Run
    from metaflow.exception import MetaflowNotFound

    from monollm.results import client

    try:
        with client.in_namespace(None):
            task = (Run(run) if isinstance(run, str) else run)["setup"].task
            return task["setup_key"].data if task is not None and task.successful and "setup_key" in task else None
    except (KeyError, MetaflowNotFound):
        return None


def load(ref: str, resolved: dict, my_key: str, flow: str = "MonoFlow") -> tuple[dict, str]:
    """({artifact: value} of ARTIFACTS, the run's pathspec) from the setup of run `ref` (an id
    or FLOW/ID, any user's); raises ReuseRefused when there is no such run, its setup did not
    succeed, or its setup key is not `my_key` (naming the keys that differ, or the code)."""
    from metaflow import Run
    from metaflow.exception import MetaflowNotFound

    from monollm.results import client

    pathspec = ref if "/" in ref else f"{flow}/{ref}"
    try:
        with client.in_namespace(None):
            run = Run(pathspec)
            task = run["setup"].task
    except MetaflowNotFound:
        raise ReuseRefused(f"--reuse-setup {ref}: no run {pathspec} with a setup step in this datastore") from None
    if task is None or not task.successful:
        raise ReuseRefused(f"--reuse-setup {ref}: the setup step of {pathspec} did not succeed")
    if "setup_key" not in task:
        raise ReuseRefused(f"--reuse-setup {ref}: {pathspec} recorded no setup key (made by an older version)")
    if task["setup_key"].data != my_key:
        theirs = run["start"].task["resolved_config"].data
        diff = differences(theirs, resolved)
        why = ("; ".join(diff) if diff else
               "the code of the monollm package differs from this run's (same configuration)")
        raise ReuseRefused(f"--reuse-setup {ref}: {pathspec}'s setup is not this run's: {why}")
    return {name: task[name].data for name in ARTIFACTS if name in task}, run.pathspec
