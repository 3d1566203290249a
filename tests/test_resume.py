"""A training task killed with SIGKILL (a preemption) continues from its last checkpoint on
`resume`, and the results equal those of a run that was never interrupted."""
import asyncio
import glob
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import FLOW, LEAN, MICRO, flow_env, micro_variant, run_flow
from test_cards import card_data, walk

pytestmark = pytest.mark.flow
CHECKPOINT_EVERY = 50


@pytest.fixture(scope="module")
def resume_profile(tmp_path_factory) -> str:
    """The micro profile with a longer training budget and frequent checkpoints."""
    return micro_variant(tmp_path_factory.mktemp("profiles"), "resume", {
        **LEAN,  # resume of the attack and training steps is what these tests are about
        "tokens = 40_000": "tokens = 160_000",
        "log_every = 20": f"log_every = 50\ncheckpoint_every = {CHECKPOINT_EVERY}",
        "restarts = 2": "restarts = 8",  # a uat branch long enough to be killed mid-way
    })


def _task_pids(run_id: str, step: str, split_index: int | None = None) -> list[int]:
    """Processes executing `step` of run `run_id` (the local runtime's task workers),
    only the foreach branch `split_index` if given."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        args = [c.decode(errors="replace") for c in cmd]
        if "step" in args and step in args and any(a == run_id for a in args):
            if split_index is None or f"--split-index={split_index}" in args or (
                    "--split-index" in args and args[args.index("--split-index") + 1] == str(split_index)):
                pids.append(int(entry))
    return pids


def _checkpoints_written(root: str, run_id: str, step: str) -> int:
    pattern = os.path.join(root, ".metaflow", "mf.checkpoints", "checkpoints", "metadata", "MonoFlow",
                           run_id, step, "*", "*.metadata")
    return len(glob.glob(pattern))


def _run_and_kill(profile: str, root: str, step: str, checkpoints: int = 2, split_index: int | None = None,
                  **env) -> str:
    """Start the flow, SIGKILL `step`'s task once it has saved `checkpoints` checkpoints; the run id.
    `env`: extra environment of the run."""
    from metaflow import Runner

    async def go():
        runner = Runner(FLOW, cwd=root, env=flow_env(**env), config=[("config", profile)])
        running = await runner.async_run()
        run_id = running.run.id
        deadline, killed = time.time() + 300, False
        while time.time() < deadline and not killed:
            await asyncio.sleep(0.05)
            if _checkpoints_written(root, run_id, step) >= checkpoints:
                for pid in _task_pids(run_id, step, split_index):
                    os.kill(pid, signal.SIGKILL)
                    killed = True
        await running.wait()
        runner.cleanup()
        return run_id, killed, running.status

    run_id, killed, status = asyncio.run(go())
    assert killed, f"{step} never wrote {checkpoints} checkpoints or was not found"
    assert status == "failed"
    return run_id


def assert_resumed_run_is_labelled(run, origin: str):
    """A resumed run (whose `start` was cloned) carries the profile/variant/seed tags a new run
    gives itself, and records the run it was resumed from: artifact, metadata and card."""
    from metaflow.cards import get_cards

    from monollm import config, pipeline
    from monollm.results import client

    assert set(pipeline.tags(config.from_dict(run.data.resolved_config))) <= set(run.user_tags)
    assert run.data.origin_run_id == origin and client.origin_run_id(run) == origin
    card = card_data(get_cards(run["join_attacks"].task, id="experiment")[0].get())
    text = " ".join(part.get("source", "") for part in walk(card["components"][0]) if isinstance(part, dict))
    assert f"resumed from run {origin}" in text


@pytest.fixture(scope="module")
def whole(resume_profile):
    """The same profile, never interrupted."""
    return run_flow(resume_profile)


def test_killed_training_resumes_from_checkpoint(resume_profile, datastore_root, whole):
    from metaflow import Runner

    origin = _run_and_kill(resume_profile, datastore_root, "train_monotonic")
    with Runner(FLOW, cwd=datastore_root, env=flow_env()).resume(origin_run_id=origin) as resumed:
        assert resumed.status == "successful", resumed.stderr
        run = resumed.run

    # earlier steps and the other branch were cloned, not recomputed
    for step in ("start", "setup", "make_monotonic", "train_baseline"):
        assert run[step].task.origin_pathspec is not None, step
    assert run["train_monotonic"].task.origin_pathspec is None
    assert_resumed_run_is_labelled(run, origin)

    # the resumed step began at a checkpointed step, not at zero
    hist = run.data.training
    mono = hist[hist.arm == "monotonic"]
    starts = mono[mono.resumed_from >= 0]["resumed_from"].tolist()
    assert len(starts) == 1 and starts[0] >= 2 * CHECKPOINT_EVERY and starts[0] % CHECKPOINT_EVERY == 0
    assert list(mono["step"]) == list(range(1, len(mono) + 1))  # history restored, nothing lost

    # each arm's task counted the checkpoints it stored itself: the resumed one only those after its start
    saved = [s for s in range(CHECKPOINT_EVERY, len(mono), CHECKPOINT_EVERY)]
    costs = run.data.checkpoint_costs
    assert whole.data.checkpoint_costs["monotonic"]["stores"] == len(saved)
    assert costs["monotonic"]["stores"] == len([s for s in saved if s > starts[0]])
    assert costs["baseline"]["stores"] == len(saved)  # the origin run's task, cloned
    for arm_costs in costs.values():
        assert arm_costs["stored_bytes"] > 0 and 0 < arm_costs["loop_s"] < arm_costs["train_s"]
    assert f"[monotonic] checkpoints: {costs['monotonic']['stores']} stored" in run["train_monotonic"].task.stdout

    # same results as never stopping (CPU, same seed: exact)
    drop = ["tokens_per_s", "resumed_from"]
    pd.testing.assert_frame_equal(run.data.training.drop(columns=drop), whole.data.training.drop(columns=drop))
    pd.testing.assert_frame_equal(run.data.perplexity, whole.data.perplexity)
    pd.testing.assert_frame_equal(run.data.attacks, whole.data.attacks)


def test_killed_attack_branch_continues_with_finished_restarts(resume_profile, datastore_root, whole):
    from metaflow import Runner

    uat_index = whole.data.resolved_config["attacks"].index("uat")
    origin = _run_and_kill(resume_profile, datastore_root, "attack", checkpoints=3, split_index=uat_index)
    with Runner(FLOW, cwd=datastore_root, env=flow_env()).resume(origin_run_id=origin) as resumed:
        assert resumed.status == "successful", resumed.stderr
        run = resumed.run
    for step in ("setup", "train_baseline", "train_monotonic", "evaluate"):
        assert run[step].task.origin_pathspec is not None, step
    uat_task = next(t for t in run["attack"] if t.index == uat_index)
    assert uat_task.origin_pathspec is None
    assert_resumed_run_is_labelled(run, origin)
    assert "continuing after" in uat_task.stdout  # it did not start its search over
    pd.testing.assert_frame_equal(run.data.attacks, whole.data.attacks)
    pd.testing.assert_frame_equal(run.data.perplexity, whole.data.perplexity)


def test_resume_of_a_succeeded_run_warns_that_nothing_reruns(datastore_root, whole):
    """Metaflow clones every task of a run that succeeded into a new, "successful" run; the resume
    says so before it starts, and how to rerun a step."""
    from metaflow import Runner

    with Runner(FLOW, cwd=datastore_root, env=flow_env()).resume(origin_run_id=whole.id) as resumed:
        assert resumed.status == "successful", resumed.stderr
        said = resumed.stderr
    assert (f"resume: run {whole.id} already succeeded, so every step is cloned and nothing reruns; to rerun a step "
            f"and the steps after it: python flows/mono_flow.py resume STEP --origin-run-id {whole.id}") in said


def test_resume_unknown_run_is_a_clear_error(datastore_root):
    done = subprocess.run([sys.executable, FLOW, "resume", "--origin-run-id", "999999999"], cwd=datastore_root,
                          env=flow_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "there is no MonoFlow run with id '999999999'" in done.stderr
    assert "Traceback" not in done.stderr


def test_resume_refuses_a_new_config(datastore_root, micro_run):
    """A resume reuses the origin run's configuration; Metaflow refuses a new one outright."""
    done = subprocess.run([sys.executable, FLOW, "--config", "config", MICRO, "resume", "--origin-run-id", micro_run.id],
                          cwd=datastore_root, env=flow_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Cannot specify --config or --config-value with 'resume'" in done.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 512 MiB tmpfs mounted for the test: a datastore disk it can fill. Mounting needs root (CI runs
    as root); elsewhere the test is skipped and says why."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs datastore needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(disk)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"no tmpfs datastore: mount said {done.stderr.strip()!r}")
    yield str(disk)
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(folder: str) -> str:
    """Write zeros into a file in `folder` until its disk is full; the file's path."""
    path = os.path.join(folder, "filler")
    with open(path, "wb") as f:
        try:
            while True:
                f.write(bytes(1 << 20))
                f.flush()
        except OSError as err:
            assert err.errno == 28, err  # ENOSPC
    return path


def test_a_full_datastore_disk_during_training_ends_with_the_resume_command_which_resumes_it(
        resume_profile, small_disk, whole, tmp_path):
    """The datastore's disk fills up once training has stored a checkpoint: whatever failed first
    (a checkpoint's own check, or Metaflow's writes with their tracebacks), the run's last lines are
    the project's: the disk is full, what to do, and the command to resume. Run as printed, from
    the directory the run started in, after the space is freed, it gives the tables of a run that
    was never stopped."""
    import re
    import threading

    from conftest import ROOT

    if not os.path.exists(os.path.join(ROOT, ".venv", "bin", "python")):
        pytest.skip("the printed resume command uses the venv `make setup` makes; there is none here")
    env = flow_env(METAFLOW_DATASTORE_SYSROOT_LOCAL=small_disk)
    run = subprocess.Popen([sys.executable, FLOW, "--config", "config", resume_profile, "run"], cwd=small_disk,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    reader = threading.Thread(target=lambda: out.extend(run.stdout))
    reader.start()
    deadline = time.time() + 300
    while run.poll() is None and time.time() < deadline and _checkpoints_written(small_disk, "*", "train_monotonic") < 1:
        time.sleep(0.05)
    assert run.poll() is None, "".join(out)[-3000:]  # still training when the disk fills
    filler = _fill(small_disk)
    assert run.wait(timeout=600) != 0
    reader.join()
    lines = "".join(out).rstrip("\n").split("\n")
    first = max(i for i, line in enumerate(lines) if line.startswith("monoflow: the run stopped because the "
                                                                      "datastore's disk is full"))
    said, command = lines[first:-1], lines[-1]
    assert all(len(line) <= 120 for line in said) and len(said) <= 4, lines[first - 5:]
    assert "Then resume the run:" in said[-1]
    match = re.fullmatch(rf"  METAFLOW_DATASTORE_SYSROOT_LOCAL={small_disk} make -C {ROOT} resume RUN=(\d+)", command)
    assert match, command

    os.remove(filler)
    shell = {"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": os.environ.get("HOME", "/root"),
             **{k: v for k, v in flow_env().items() if k not in ("METAFLOW_DATASTORE_SYSROOT_LOCAL", "PYTHONPATH")}}
    done = subprocess.run(["bash", "-c", command.strip()], cwd=small_disk, env=shell, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # the resumed run's tables, read where it lives (this process's Metaflow reads the tests' datastore)
    tables = tmp_path / "tables.pkl"
    subprocess.run([sys.executable, "-c", (
        "import pickle, sys; from metaflow import Flow, namespace; namespace(None); run = Flow('MonoFlow').latest_run; "
        f"assert run.successful and run.data.origin_run_id == {match.group(1)!r}, run; "
        "pickle.dump({k: getattr(run.data, k) for k in ('training', 'perplexity', 'attacks')}, open(sys.argv[1], 'wb'))"),
        str(tables)], env=env, check=True, timeout=300)
    resumed = pd.read_pickle(tables)
    drop = ["tokens_per_s", "resumed_from"]
    pd.testing.assert_frame_equal(resumed["training"].drop(columns=drop), whole.data.training.drop(columns=drop))
    pd.testing.assert_frame_equal(resumed["perplexity"], whole.data.perplexity)
    pd.testing.assert_frame_equal(resumed["attacks"], whole.data.attacks)
