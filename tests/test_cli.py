"""The flow's command line before Metaflow reads it (monollm/cli.py): `card get STEP` takes the
user's own latest run and says how it stands; a failed run reads "failed"; a command started in the
wrong directory says where it looked and what to do; `resume` says which run it resumes and warns
when nothing will rerun."""
import datetime
import os
import subprocess
import sys
from types import SimpleNamespace as NS

import pytest
from conftest import FLOW, ROOT, flow_env

from monollm import cli
from monollm.results import client


def fake_run(run_id: str, steps: dict, successful: bool = False):
    """A Client Run stand-in: steps maps a step name -> its tasks (SimpleNamespace objects)."""
    made = [type("Step", (list,), {"id": name})(tasks) for name, tasks in steps.items()]

    class Run(list):
        id = run_id

        def __getitem__(self, key):
            return next(s for s in made if s.id == key) if isinstance(key, str) else list.__getitem__(self, key)

    run = Run(made)
    run.successful = successful
    return run


def failed_task():
    """A task whose attempt raised: Metaflow stores _task_ok False, so `finished` is False."""
    return NS(finished=False, successful=False, finished_at=datetime.datetime(2026, 1, 1))


def test_a_failed_task_reads_failed_not_still_running():
    run = fake_run("5", {"start": [failed_task()]})
    assert client.run_state(run) == "failed (in step start)"
    running = fake_run("6", {"start": [NS(finished=False, successful=False, finished_at=None)]})
    assert client.run_state(running).startswith("is still running")


@pytest.fixture
def own_latest(monkeypatch):
    """cli.latest_own_run answers with the run set on the returned namespace."""
    box = NS(run=None)
    monkeypatch.setattr(cli, "latest_own_run", lambda flow="MonoFlow": box.run)
    monkeypatch.setattr(cli, "get_run", lambda: NS(id="3"))
    monkeypatch.setenv("USERNAME", "alice")
    return box


def test_card_get_bare_step_names_the_users_latest_run(own_latest):
    own_latest.run = fake_run("42", {"join_attacks": [NS(finished=True, successful=True)]}, successful=True)
    argv = ["flows/mono_flow.py", "card", "get", "join_attacks", "report.html"]
    assert cli.check_card_get(argv)[3] == "42/join_attacks" and argv[3] == "42/join_attacks"
    given = ["flows/mono_flow.py", "card", "get", "7/join_attacks", "report.html"]
    assert cli.check_card_get(list(given)) == given  # a pathspec names its own run


def test_card_get_on_a_run_that_failed_in_start_says_failed(own_latest):
    own_latest.run = fake_run("43", {"start": [failed_task()]})
    with pytest.raises(SystemExit) as stop:
        cli.check_card_get(["flows/mono_flow.py", "card", "get", "join_attacks", "report.html"])
    msg = str(stop.value)
    assert "43, failed (in step start)" in msg and "user:alice" in msg
    assert "card get RUN_ID/join_attacks report.html" in msg and "latest successful run is 3" in msg


def test_card_get_when_the_user_has_no_run_says_so(own_latest):
    with pytest.raises(SystemExit, match="user:alice has no MonoFlow run; name another user's run: "
                                         "python flows/mono_flow.py card get RUN_ID/join_attacks"):
        cli.check_card_get(["flows/mono_flow.py", "card", "get", "join_attacks", "report.html"])


# --- wrong directory: say where the command looked and what to do ---------------------------

def flow_from(folder, *args) -> subprocess.CompletedProcess:
    """The flow's command line run from `folder`, with no METAFLOW_DATASTORE_SYSROOT_LOCAL: Metaflow
    then looks for `.metaflow` in `folder` and above, as for a user who never set it."""
    env = {k: v for k, v in flow_env().items() if k != "METAFLOW_DATASTORE_SYSROOT_LOCAL"}
    return subprocess.run([sys.executable, FLOW, *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=120)


def test_config_path_from_another_directory_names_the_path_tried_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        cli.check_config_path(["flows/mono_flow.py", "--config", "config", "config/tiny.toml", "run"], ROOT)
    assert str(stop.value) == (f"--config config config/tiny.toml: no file {tmp_path}/config/tiny.toml (a relative "
                               f"path is read from the current directory, {tmp_path}); give its absolute path, "
                               f"{ROOT}/config/tiny.toml, or run from the repository root")
    with pytest.raises(SystemExit, match=rf"run from the repository root \({ROOT}\) or give an absolute path"):
        cli.check_config_path(["flows/mono_flow.py", "--config", "config", "nope.toml", "run"], ROOT)
    given = os.path.join(ROOT, "config", "tiny.toml")  # a file that exists: nothing to say
    assert cli.check_config_path(["flows/mono_flow.py", "--config", "config", given, "run"], ROOT) is None


def test_no_runs_message_says_where_it_looked_and_what_to_do(tmp_path):
    cwd = str(tmp_path / "sub")
    todo = "cd to the directory the flow ran in, or set METAFLOW_DATASTORE_SYSROOT_LOCAL to it"
    assert cli.no_runs_message("card get", "MonoFlow", None, cwd, None) == (
        f"card get: no MonoFlow runs found from {cwd}: no .metaflow folder (where runs live) here or above; {todo}")
    root = str(tmp_path / ".metaflow")
    assert cli.no_runs_message("resume", "MonoFlow", root, cwd, None) == (
        f"resume: no MonoFlow runs in {root}, the .metaflow folder nearest {cwd}; {todo}")
    assert cli.no_runs_message("card get", "MonoFlow", root, cwd, str(tmp_path)) == (
        f"card get: no MonoFlow runs in {root} (METAFLOW_DATASTORE_SYSROOT_LOCAL={tmp_path}); set it to the "
        f"directory the flow ran in, or unset it and cd there")
    os.makedirs(os.path.join(root, "MonoFlow"))
    assert cli.no_runs_message("card get", "MonoFlow", root, cwd, None) is None


def test_card_get_and_config_from_an_empty_directory_say_where_they_looked_and_create_nothing(tmp_path):
    """Before these checks, `card get` said the step was "not found" and `--config` that the file
    "could not be read", and both left an empty `.metaflow` in the directory."""
    none = f"no MonoFlow runs found from {tmp_path}: no .metaflow folder (where runs live) here or above; cd to"
    for args, said in [(["card", "get", "end"], f"card get: {none}"), (["card", "get", "3/end", "x.html"], none),
                       (["resume"], f"resume: {none}"),
                       (["resume", "--origin-run-id", "5"], f"(no .metaflow folder in {tmp_path} or above: cd to"),
                       (["--config", "config", "config/tiny.toml", "run"], f"give its absolute path, {ROOT}/config/")]:
        done = flow_from(tmp_path, *args)
        assert done.returncode != 0 and said in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
    assert os.listdir(tmp_path) == [], "the commands left files behind"


# --- resume: which run, and a warning when nothing reruns -----------------------------------

def test_resume_step_is_the_word_after_resume_that_is_no_option_value():
    assert cli.resume_step(["f.py", "resume", "--origin-run-id", "12"]) is None
    assert cli.resume_step(["f.py", "resume", "--tag", "x", "attack", "--origin-run-id", "12"]) == "attack"
    assert cli.resume_step(["f.py", "resume", "--clone-only", "train_monotonic"]) == "train_monotonic"


def test_resume_lines_name_the_chosen_run_and_warn_when_it_already_succeeded():
    failed = fake_run("17", {"start": [NS(finished=True, successful=True)], "attack": [failed_task()]})
    failed.system_tags = frozenset({"user:alice", "runtime:dev"})
    assert cli.resume_lines(failed, True, None, False, "/data/.metaflow") == [
        "resume: resuming run 17, the latest started by `run` with the datastore /data/.metaflow (Metaflow's pick "
        "without --origin-run-id); it is user:alice's and failed (in step attack); to resume another: "
        "python flows/mono_flow.py resume --origin-run-id RUN_ID"]
    assert cli.resume_lines(failed, False, None, False, "/data/.metaflow") == []  # named by --origin-run-id
    done = fake_run("12", {"end": [NS(finished=True, successful=True)]}, successful=True)
    warning = ("resume: run 12 already succeeded, so every step is cloned and nothing reruns; to rerun a step and "
               "the steps after it: python flows/mono_flow.py resume STEP --origin-run-id 12")
    assert cli.resume_lines(done, False, None, False, None) == [warning]
    assert cli.resume_lines(done, False, "attack", False, None) == []  # attack and what follows rerun
    assert cli.resume_lines(done, False, None, True, None) == []  # --clone-only: cloning is what was asked


def test_a_run_that_failed_on_a_full_datastore_disk_ends_with_the_fix_and_the_resume_command(monkeypatch, tmp_path):
    """Metaflow's own artifact writes fail with tracebacks of their own on a full disk; the flow's
    entry point prints this after them: the full disk, what to do, and a resume command."""
    import re

    from monollm import cli, saving

    monkeypatch.setattr(saving, "datastore_place", lambda: str(tmp_path))
    free = {"bytes": 4096}
    monkeypatch.setattr(saving, "free_bytes", lambda path: free["bytes"] if path == str(tmp_path) else None)
    monkeypatch.setattr(cli, "datastore_root", lambda: "/repo/.metaflow")
    monkeypatch.chdir(tmp_path)
    last = cli.full_disk_last_words(["flows/mono_flow.py", "--config", "config", "p.toml", "run"], 1, "/repo")
    *said, command = last.split("\n")
    assert all(len(line) <= 120 for line in said) and len(said) > 1
    said = " ".join(said)
    assert f"disk is full (4096 bytes free at {tmp_path})" in said and "METAFLOW_DATASTORE_SYSROOT_LOCAL" in said
    assert re.fullmatch(r"  make -C /repo resume RUN=\S+", command), command
    assert cli.full_disk_last_words(["flows/mono_flow.py", "run"], 0, "/repo") is None  # it succeeded
    assert cli.full_disk_last_words(["flows/mono_flow.py", "card", "view"], 1, "/repo") is None  # not a run
    free["bytes"] = 10 ** 9
    assert cli.full_disk_last_words(["flows/mono_flow.py", "run"], 1, "/repo") is None  # failed for another reason


@pytest.mark.parametrize("cwd, root, expected", [
    ("/repo", "/repo/.metaflow", "make resume RUN=7"),
    ("/elsewhere", "/repo/.metaflow", "make -C /repo resume RUN=7"),  # a .metaflow above, or the variable set
    ("/repo", "/data/my runs/.metaflow", "METAFLOW_DATASTORE_SYSROOT_LOCAL='/data/my runs' make resume RUN=7"),
    ("/scratch", None, "METAFLOW_DATASTORE_SYSROOT_LOCAL=/scratch make -C /repo resume RUN=7"),  # made here
])
def test_the_resume_command_names_the_repository_and_the_datastore_it_needs(cwd, root, expected):
    from monollm import cli

    assert cli.resume_command("7", "/repo", cwd=cwd, root=root or "") == expected
    assert cli.resume_command(None, "/repo", cwd="/repo", root="/repo/.metaflow") == "make resume RUN=RUN_ID"


def test_a_bad_profile_key_is_the_one_line_run_prints(tmp_path):
    """`run` loads the profile before Metaflow starts: a typo is one line naming it, and no datastore is made."""
    from monollm import cli

    bad = tmp_path / "bad.toml"
    bad.write_text('name = "typo"\nseeed = 3\n')
    with pytest.raises(SystemExit) as stop:
        cli.check_profile(["mono_flow.py", "--config", "config", str(bad), "run"], "unused")
    assert str(stop.value).startswith(f"profile 'typo' ({bad}): unknown key 'seeed' (allowed: name, seed,")
    assert cli.check_profile(["mono_flow.py", "card", "get", "join_attacks"], str(bad)) is None  # only for `run`
    assert not (tmp_path / ".metaflow").exists()


def test_a_run_from_outside_the_repository_names_its_datastore(tmp_path, monkeypatch, capsys):
    from monollm import cli

    monkeypatch.delenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", raising=False)
    monkeypatch.setattr(cli, "datastore_root", lambda: None)  # no .metaflow above: Metaflow makes one here
    monkeypatch.chdir(tmp_path)
    line = cli.datastore_note(["mono_flow.py", "run"], "/nowhere/repo")
    assert line == (f"run: runs from {tmp_path}, outside the repository, go to the datastore {tmp_path}/.metaflow; "
                    f"`card get`, `resume` and `compare` find them from {tmp_path} (or with "
                    f"METAFLOW_DATASTORE_SYSROOT_LOCAL)")
    assert capsys.readouterr().err.strip() == line
    assert cli.datastore_note(["mono_flow.py", "run"], str(tmp_path)) is None  # inside the repository: nothing
    assert cli.interrupted_note("17", str(tmp_path)) == \
        "Interrupted. To go on from the step that stopped:\n  make resume RUN=17"
