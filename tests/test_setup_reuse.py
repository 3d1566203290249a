"""Taking `setup` from another run (monollm.setup_reuse, --reuse-setup) and the sweep's use of it.

The flow path itself (a sweep cell that takes the micro run's setup, and its baseline trained
afresh to the same perplexity) is in test_sweep.py; a refused reuse through the flow is below."""
import os
import shutil
import subprocess
import sys

import pytest
import tomllib

from conftest import FLOW, MICRO, flow_env
from monollm import config, setup_reuse
from monollm.experiments import sweep
from monollm.experiments.plan import Task, load_sweep

SWEEP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sweeps", "micro.toml")


def resolved(**changes) -> dict:
    """The micro profile's resolved configuration with dotted keys set."""
    with open(MICRO, "rb") as f:
        raw = tomllib.load(f)
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config.to_dict(config.load(raw))


CODE = "0" * 64


def test_the_key_ignores_only_how_the_constraint_is_applied_and_where_the_run_runs():
    base = setup_reuse.key(resolved(), CODE)
    same = [{"monotonic.mode": "sign_frozen"}, {"monotonic.init": "clip"}, {"monotonic.floor": 1e-3},
            {"monotonic.variant": "mlp_in"}, {"name": "other"}, {"resources.cpu": 7}]
    for change in same:
        assert setup_reuse.key(resolved(**change), CODE) == base, change
    other = [{"seed": 1}, {"pretrain.tokens": 80_000}, {"train.tokens": 10_000}, {"monotonic.layers": "top:1"},
             {"monotonic.activation": "relu"}, {"attack.examples": 8}, {"data.builtin_docs": 800}, {"threads": 2}]
    for change in other:
        assert setup_reuse.key(resolved(**change), CODE) != base, change
    assert setup_reuse.key(resolved(), "1" * 64) != base  # other code


def test_differences_name_each_setup_key_that_differs_and_leave_out_the_ignored_ones():
    theirs, mine = resolved(), resolved(**{"seed": 3, "pretrain.tokens": 80_000, "monotonic.mode": "abs_init_free"})
    assert setup_reuse.differences(theirs, mine) == ["pretrain.tokens: 160000 -> 80000", "seed: 0 -> 3"]
    assert setup_reuse.differences(theirs, resolved(**{"monotonic.mode": "sign_frozen"})) == []


def test_the_code_digest_changes_with_any_python_file_and_only_with_python_files(tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(setup_reuse.PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    assert setup_reuse.code_digest(str(pkg)) == setup_reuse.code_digest()
    (pkg / "resources" / "notes.txt").write_text("not code")
    assert setup_reuse.code_digest(str(pkg)) == setup_reuse.code_digest()
    with open(pkg / "attacks" / "common.py", "a") as f:
        f.write("\n# one more line\n")
    assert setup_reuse.code_digest(str(pkg)) != setup_reuse.code_digest()


def tasks_of(*pairs) -> list[Task]:
    from monollm.experiments.plan import expand

    with open(load_sweep(SWEEP).profile, "rb") as f:
        raw = tomllib.load(f)
    by_name = {c.name: c for c in expand(load_sweep(SWEEP), raw)}
    return [Task(by_name[name], seed, action) for name, seed, action in pairs]


def test_runs_that_share_a_setup_key_wait_for_the_first_of_them():
    nonneg, frozen = "monotonic.mode=nonneg", "monotonic.mode=sign_frozen"
    todo = tasks_of((nonneg, 0, "run"), (nonneg, 1, "run"), (frozen, 0, "run"), (frozen, 1, "resume"))
    keys = {id(t): f"seed{t.seed}" for t in todo if t.action == "run"}
    first, later = sweep._waves(todo, keys, {})
    assert [(t.cell.name, t.seed) for t in first] == [(nonneg, 0), (nonneg, 1), (frozen, 1)]  # a resume keeps its own
    assert [(t.cell.name, t.seed) for t in later] == [(frozen, 0)]
    first, later = sweep._waves(todo, keys, {"seed0": "MonoFlow/5"})  # an earlier run has seed 0's setup
    assert [(t.cell.name, t.seed) for t in first] == [(nonneg, 0), (nonneg, 1), (frozen, 0), (frozen, 1)]
    assert later == []


def test_the_run_command_passes_the_setup_source():
    todo = tasks_of(("monotonic.mode=sign_frozen", 0, "run"))
    cmd = sweep.command(load_sweep(SWEEP), todo[0], {todo[0].cell.name: "cell.toml"}, [], "MonoFlow/42")
    assert cmd[cmd.index("--reuse-setup") + 1] == "MonoFlow/42" and cmd.index("--reuse-setup") > cmd.index("run")
    assert "--reuse-setup" not in sweep.command(load_sweep(SWEEP), todo[0], {todo[0].cell.name: "c.toml"}, [])


@pytest.mark.flow
def test_a_setup_of_another_seed_is_refused_in_setup_naming_the_key(micro_run, tmp_path):
    """--reuse-setup with the micro run (seed 0) in a run of seed 1: setup stops with one line that
    names the seed, before any training step starts."""
    done = subprocess.run([sys.executable, FLOW, "--config", "config", MICRO, "run", "--seed", "1",
                           "--reuse-setup", micro_run.id], cwd=str(tmp_path), env=flow_env(),
                          capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"--reuse-setup {micro_run.id}: {micro_run.pathspec}'s setup is not this run's: seed: 0 -> 1" in out, out
    assert "Traceback" not in out and "train_baseline" not in out, out
