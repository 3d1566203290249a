"""The flow's command line before Metaflow reads it (monollm/cli.py): `card get STEP` takes the
user's own latest run and says how it stands; a failed run reads "failed"."""
import datetime
from types import SimpleNamespace as NS

import pytest

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
