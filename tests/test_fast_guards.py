"""Fast guards of two promises that the flow tests also check, at unit-test cost:

* both arms are trained on the same blocks in the same order (the comparison of the arms rests
  on it: only the constraint differs), in one process and when handed to training processes;
* `resume` gives the resumed run its origin's profile/variant/mode/seed tags (a resumed run is
  found by tag like any other), through monollm.cli.resume_tags and the flow's
  `__main__` block that appends them to the command line; and it says which run it resumes and
  warns when that run already succeeded (monollm.cli.resume_notes).
"""
import json
import os
import runpy
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import FLOW, MICRO, flow_env

from monollm import cli, config, pipeline
from monollm.model import foundation
from monollm.train import distributed, loop

T = 16
ARMS = ("baseline", "monotonic")


def guard_cfg() -> config.ExperimentConfig:
    """6 optimizer steps of 4 blocks over 20 training blocks: the order wraps into a second epoch.
    The monotonic arm's lr and warmup differ from the baseline's, as in real profiles."""
    train = dict(tokens=6 * 4 * T, batch_size=4, grad_accum=1, lr=2e-3, warmup_frac=0.2, monotonic_lr=5e-3,
                 monotonic_warmup_frac=0.5, log_every=0, val_blocks=4, eval_every=3)
    return config.load({"device": "cpu", "threads": 1, "seed": 11, "train": train,
                        "monotonic": {"variant": "mlp_both"}})


def guard_blocks() -> dict:
    """Train and validation blocks for the conftest model (vocabulary 320); every block distinct."""
    rng = np.random.default_rng(3)
    return {"train": rng.integers(0, 300, (20, T)).astype(np.int32),
            "val": rng.integers(0, 300, (4, T)).astype(np.int32)}


def train_recording(model_dir: str, cfg, blocks: dict, arm: str, out: str) -> tuple[list, list]:
    """pipeline.train_arm of `arm` in one process; (the input_ids of every training forward pass,
    in order, as arrays; the arm's history). The model the arm loads gets a forward pre-hook, so
    what is recorded is what the model was fed, whatever chose it."""
    seen = []

    def record(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if module.training and torch.is_grad_enabled():  # not the validation passes
            seen.append(ids.detach().cpu().numpy().copy())

    real_load = foundation.load

    def load(*args, **kwargs):
        model, tokenizer = real_load(*args, **kwargs)
        model.register_forward_pre_hook(record, with_kwargs=True)
        return model, tokenizer

    with pytest.MonkeyPatch.context() as m:
        m.setattr(foundation, "load", load)
        history = pipeline.train_arm(cfg, model_dir, blocks, arm, out).history
    return seen, history


@pytest.fixture(scope="module")
def one_process(model_dir, tmp_path_factory) -> dict:
    """Each arm trained in one process from the same model: arm -> (batches fed, history)."""
    cfg, blocks = guard_cfg(), guard_blocks()
    return {arm: train_recording(model_dir, cfg, blocks, arm, str(tmp_path_factory.mktemp(arm))) for arm in ARMS}


def test_both_arms_are_fed_identical_blocks_in_identical_order(one_process):
    (base, base_history), (mono, mono_history) = one_process["baseline"], one_process["monotonic"]
    assert len(base) == loop.steps_for(guard_cfg().train, T) == 6
    assert len(mono) == len(base), "the arms took different numbers of training steps"
    for step, (b, m) in enumerate(zip(base, mono), 1):
        np.testing.assert_array_equal(m, b, err_msg=f"step {step}: the arms were fed different blocks")
    # the history's fingerprints are those of the fed batches, so comparing runs by them is sound
    for history, fed in ((base_history, base), (mono_history, mono)):
        assert [r["batch_hash"] for r in history] == [loop.batch_hash(ids) for ids in fed]
    # a real shuffled order of training blocks, not one batch repeated or the blocks as stored
    train = guard_blocks()["train"]
    rows = [int(np.flatnonzero((train == row).all(axis=1))[0]) for ids in base for row in ids]
    assert len(rows) == 24 and sorted(rows[:20]) == list(range(20)) and rows[:20] != list(range(20))


def test_training_processes_of_both_arms_get_the_blocks_and_seed_of_one_process(model_dir, tmp_path,
                                                                                  monkeypatch, one_process):
    """With several training processes, each arm's job (what every rank reads) names the same
    training blocks and data seed, and they give the order that one process follows."""

    class Started(Exception):
        pass

    jobs = {}

    def run(job, world, arm, checkpointer, on_step):
        with open(os.path.join(job, distributed.JOB)) as f:
            spec = json.load(f)
        jobs[arm] = (spec["seed"], np.load(os.path.join(job, "train.npy")))
        raise Started  # no torchrun: what the ranks would be handed is recorded

    monkeypatch.setattr(distributed, "processes", lambda cfg, device: 2)
    monkeypatch.setattr(distributed, "_run", run)
    cfg, blocks = guard_cfg(), guard_blocks()
    for arm in ARMS:
        with pytest.raises(Started):
            pipeline.train_arm(cfg, model_dir, blocks, arm, str(tmp_path / arm))
    (base_seed, base_train), (mono_seed, mono_train) = jobs["baseline"], jobs["monotonic"]
    assert mono_seed == base_seed, "the arms' training processes get different data seeds"
    np.testing.assert_array_equal(mono_train, base_train)
    for arm in ARMS:  # the ranks' order (loop.train with the job's seed) is the one-process order
        plan = loop.Plan.of(cfg.train_for(arm), jobs[arm][1], jobs[arm][0])
        fed = one_process[arm][0]
        assert plan.total == len(fed)
        for step, ids in enumerate(fed):
            np.testing.assert_array_equal(plan.batch(jobs[arm][1], step), ids, err_msg=f"{arm} step {step + 1}")


# --- resume keeps the run's tags ---------------------------------------------------------

def origin_tags() -> list[str]:
    """The tags a new run of the micro profile with seed 4 gives itself (pipeline.tags)."""
    return pipeline.tags(config.load_file(MICRO, seed=4))


class FakeRun:
    """Stand-in for metaflow.Run: any run id exists, carries `TAGS` plus a user's own tag, and
    failed (`SUCCESSFUL` False) in a step with no task (so run_state reads "still running")."""
    TAGS: list[str] = []
    SUCCESSFUL = False
    asked: list[str] = []

    def __init__(self, pathspec, _namespace_check=True):
        FakeRun.asked.append(pathspec)
        self.id = pathspec.split("/")[-1]
        self.user_tags = frozenset(FakeRun.TAGS + ["my-own-tag"])
        self.system_tags = frozenset({"user:someone", "runtime:dev"})
        self.tags = self.user_tags | self.system_tags
        self.successful = FakeRun.SUCCESSFUL

    def __iter__(self):
        return iter(())


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """metaflow.Run is FakeRun; the latest run is 77; the datastore (a temporary folder) holds runs."""
    import metaflow
    import metaflow.util

    monkeypatch.setattr(FakeRun, "TAGS", origin_tags())
    monkeypatch.setattr(FakeRun, "SUCCESSFUL", False)
    monkeypatch.setattr(FakeRun, "asked", [])
    monkeypatch.setattr(metaflow, "Run", FakeRun)
    monkeypatch.setattr(metaflow.util, "get_latest_run_id", lambda echo, flow: "77")
    os.makedirs(tmp_path / ".metaflow" / "MonoFlow")
    monkeypatch.setattr(cli, "datastore_root", lambda: str(tmp_path / ".metaflow"))
    return FakeRun


def tag_options(argv: list[str]) -> set[str]:
    """The values of every `--tag` option in `argv`."""
    return {argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--tag"}


@pytest.mark.parametrize("argv, origin", [(["flows/mono_flow.py", "resume", "--origin-run-id", "12"], "12"),
                                          (["flows/mono_flow.py", "resume", "attack"], "77")],
                         ids=["origin-run-id", "latest-run"])
def test_resume_tags_forward_the_origin_runs_profile_and_seed(fake_run, argv, origin):
    got = cli.resume_tags(argv)
    assert fake_run.asked == [f"MonoFlow/{origin}"]
    assert got[::2] == ["--tag"] * (len(got) // 2)  # option, value pairs only
    forwarded = tag_options(got)
    assert {t for t in forwarded if t.startswith(("profile:", "seed:"))} == {"profile:micro", "seed:4"}
    assert set(origin_tags()) <= forwarded
    assert cli.resume_tags(["flows/mono_flow.py", "run"]) == []


def flow_main(monkeypatch, argv: list[str]) -> list[str]:
    """flows/mono_flow.py run as a script with `argv`, stopped where MonoFlow() would hand its
    command line to Metaflow; that command line."""
    import metaflow
    from monollm.cluster import slurm

    class Started(Exception):
        pass

    handed = []

    def init(self, *args, **kwargs):
        handed.append(list(sys.argv))
        raise Started

    monkeypatch.setattr(metaflow.FlowSpec, "__init__", init)
    monkeypatch.setattr(slurm, "use_step_resources", lambda **kw: None)  # no metaflow-slurm patching here
    monkeypatch.setattr(sys, "argv", list(argv))
    with pytest.raises(Started):
        runpy.run_path(FLOW, run_name="__main__")
    return handed[0]


def test_flow_main_appends_the_origin_runs_tags_to_a_resume(fake_run, monkeypatch):
    """By the time MonoFlow() reads it, a `resume` has the origin's tags as `--tag` options."""
    handed = flow_main(monkeypatch, [FLOW, "resume", "--origin-run-id", "12"])
    assert handed[:4] == [FLOW, "resume", "--origin-run-id", "12"]
    forwarded = tag_options(handed)
    assert {"profile:micro", "seed:4"} <= forwarded and set(origin_tags()) <= forwarded


def test_flow_main_says_which_run_a_resume_takes_and_warns_when_it_succeeded(fake_run, monkeypatch, capsys):
    """Before Metaflow starts: a bare `resume` names the run Metaflow picks (77) and why; the resume
    of a run that succeeded says that nothing reruns and how to rerun a step."""
    flow_main(monkeypatch, [FLOW, "resume"])
    said = capsys.readouterr().err
    assert "resume: resuming run 77, the latest started by `run` with the datastore" in said
    assert "it is user:someone's and is still running" in said and "already succeeded" not in said
    fake_run.SUCCESSFUL = True
    flow_main(monkeypatch, [FLOW, "resume", "--origin-run-id", "12"])
    assert capsys.readouterr().err == ("resume: run 12 already succeeded, so every step is cloned and nothing "
                                       "reruns; to rerun a step and the steps after it: python flows/mono_flow.py "
                                       "resume STEP --origin-run-id 12\n")
    flow_main(monkeypatch, [FLOW, "resume", "attack", "--origin-run-id", "12"])
    assert capsys.readouterr().err == ""  # attack and what follows rerun


TAG_FLOW = '''
from metaflow import FlowSpec, step


class GuardTagFlow(FlowSpec):
    """One step that tags its run the way MonoFlow's start does."""

    @step
    def start(self):
        from monollm.results import client

        client.tag_current_run({tags!r})
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    GuardTagFlow()
'''


@pytest.fixture(scope="module")
def tag_flow_run(tmp_path_factory):
    """A real local run of GuardTagFlow, tagged by client.tag_current_run: (the flow file, the Run)."""
    from metaflow import Runner

    folder = tmp_path_factory.mktemp("tag_flow")
    flow = folder / "guard_tag_flow.py"
    flow.write_text(textwrap.dedent(TAG_FLOW.format(tags=origin_tags())))
    with Runner(str(flow), cwd=str(folder), env=flow_env()).run() as running:
        assert running.status == "successful", running.stderr
        return str(flow), running.run


def test_tags_of_a_real_local_run_come_back_through_resume_tags(tag_flow_run, monkeypatch):
    """A real local Metaflow run tagged by client.tag_current_run, read back by resume_tags through
    the Client API: every run tag, profile and seed included, becomes a `--tag` option."""
    flow, run = tag_flow_run
    tags, run_id = origin_tags(), run.id
    assert set(tags) <= run.user_tags
    forwarded = cli.resume_tags([flow, "resume", "--origin-run-id", run_id], flow="GuardTagFlow")
    assert {"profile:micro", "seed:4"} <= tag_options(forwarded) and set(tags) <= tag_options(forwarded)
    monkeypatch.chdir(os.path.dirname(flow))  # without --origin-run-id: the latest run started from this directory
    assert tag_options(cli.resume_tags([flow, "resume"], flow="GuardTagFlow")) == tag_options(forwarded)


def test_resume_notes_of_a_real_succeeded_run_name_it_and_warn(tag_flow_run):
    """resume_notes through the Client API on a real run: a bare `resume` names the run Metaflow
    takes, its user and state; the run succeeded, so nothing would rerun, which it says."""
    flow, run_id = tag_flow_run[0], tag_flow_run[1].id
    chosen, warning = cli.resume_notes([flow, "resume"], flow="GuardTagFlow")
    assert chosen.startswith(f"resume: resuming run {run_id}, the latest started by `run` with the datastore "
                             f"{cli.datastore_root()} ")
    assert f"it is user:{os.environ['USERNAME']}'s and succeeded" in chosen
    assert warning.startswith(f"resume: run {run_id} already succeeded, so every step is cloned and nothing reruns")
    assert cli.resume_notes([flow, "resume", "--origin-run-id", run_id], flow="GuardTagFlow") == [warning]
