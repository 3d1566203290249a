"""The flow's command line before Metaflow reads it (flows/mono_flow.py's `__main__` block).

    check_card_get(sys.argv)          # `card get STEP`: your latest run, said which when it did not succeed
    check_resume_origin(sys.argv)     # `resume --origin-run-id ID`: a run that exists
    sys.argv += resume_tags(sys.argv) # `resume`: the origin run's profile/variant/mode/seed tags

Each takes the command line and returns or rewrites it; none changes what a step computes.
"""
from __future__ import annotations

import os
import sys

from monollm.results.client import RUN_TAGS, get_run, run_state


def check_resume_origin(argv: list[str], flow: str = "MonoFlow"):
    """Exit with a clear message when `resume --origin-run-id ID` names a run that does not exist
    (Metaflow itself fails with an internal error there)."""
    if "resume" not in argv or "--origin-run-id" not in argv[:-1]:
        return
    run_id = argv[argv.index("--origin-run-id") + 1]
    from metaflow import Run
    from metaflow.exception import MetaflowNotFound

    try:  # no namespace change here: the runtime hands its namespace to every task
        Run(f"{flow}/{run_id}", _namespace_check=False)
    except MetaflowNotFound:
        raise SystemExit(f"resume: there is no {flow} run with id {run_id!r} in this metadata store; "
                         f"list runs with: python -c \"from metaflow import Flow, namespace; "
                         f"namespace(None); print([r.id for r in Flow('{flow}')])\"") from None


def user_namespace() -> str:
    """The namespace of the user running the command, as Metaflow names it (`user:NAME`)."""
    from metaflow.util import get_username

    return f"user:{get_username() or os.environ.get('USERNAME', '')}"


def latest_own_run(flow: str = "MonoFlow"):
    """The newest run of `flow` in the user's own namespace, whatever its state; None if none."""
    from metaflow import Flow
    from metaflow.exception import MetaflowNamespaceMismatch, MetaflowNotFound

    from monollm.results.client import in_namespace

    with in_namespace(user_namespace()):
        try:
            return next(iter(Flow(flow)), None)
        except (MetaflowNotFound, MetaflowNamespaceMismatch):  # no run of yours
            return None


def card_get_step(argv: list[str]) -> int | None:
    """The index in `argv` of the bare step name of `card get STEP ...`; None for any other command
    (or a pathspec: RUN_ID/STEP names its run)."""
    if "card" not in argv or "get" not in argv[argv.index("card"):]:
        return None
    at = argv.index("get", argv.index("card")) + 1
    if at >= len(argv) or "/" in argv[at] or argv[at].startswith("-"):
        return None
    return at


def check_card_get(argv: list[str], flow: str = "MonoFlow") -> list[str]:
    """`card get STEP ...` with a bare step name means the latest run in the user's own namespace
    (Metaflow alone would take the latest run started from this directory, by anyone): STEP
    becomes RUN_ID/STEP in `argv`. When that run failed or is still running, say so and how to
    pick another; exit with that message when its STEP has not finished (no card yet)."""
    at = card_get_step(argv)
    if at is None:
        return argv
    run, step = latest_own_run(flow), argv[at]
    if run is None:
        raise SystemExit(f"card get: {user_namespace()} has no {flow} run; name another user's run: "
                         f"python flows/mono_flow.py card get RUN_ID/{step} ...")
    argv[at] = f"{run.id}/{step}"
    if run.successful:
        return argv
    done = step in [s.id for s in run] and any(t.successful for t in run[step])
    rest = " ".join(argv[at + 1:]) or "FILE"
    try:
        latest = f"the latest successful run is {get_run().id}: "
    except LookupError:
        latest = "there is no successful run yet; "
    note = (f"card get: your latest run ({user_namespace()}), {run.id}, {run_state(run)}; "
            + ("its card is from the steps that finished. " if done else f"its {step} step has no card. ")
            + f"To pick another run: {latest}python flows/mono_flow.py card get RUN_ID/{step} {rest}")
    if not done:
        raise SystemExit(note)
    print(note, file=sys.stderr)
    return argv


def resume_tags(argv: list[str], flow: str = "MonoFlow") -> list[str]:
    """For `resume`, the options `--tag T` for the origin run's profile, variant and seed tags;
    [] otherwise. A new run tags itself in `start`, but `resume` clones `start` (and Metaflow
    copies no tags), so a resumed run is given them when it is created: it is then found by tag
    like any other run, also when every step was cloned."""
    if "resume" not in argv:
        return []
    from metaflow import Run
    from metaflow.exception import MetaflowNotFound
    from metaflow.util import get_latest_run_id

    if "--origin-run-id" in argv[:-1]:
        origin = argv[argv.index("--origin-run-id") + 1]
    else:  # Metaflow's own default: the latest run started from this directory
        origin = get_latest_run_id(lambda *args, **kwargs: None, flow)
    try:
        tags = Run(f"{flow}/{origin}", _namespace_check=False).user_tags if origin else []
    except MetaflowNotFound:  # Metaflow reports the missing run itself
        return []
    return [arg for tag in sorted(tags) if tag.startswith(RUN_TAGS) for arg in ("--tag", tag)]
