"""The flow's command line before Metaflow reads it (flows/mono_flow.py's `__main__` block).

    check_config_path(sys.argv, REPO) # `--config config PATH`: a file that exists, else where it looked
    check_runs_here(sys.argv)         # `card ...`, `resume`: a datastore with runs, else where it looked
    check_card_get(sys.argv)          # `card get STEP`: your latest run, said which when it did not succeed
    check_resume_origin(sys.argv)     # `resume --origin-run-id ID`: a run that exists
    resume_notes(sys.argv)            # `resume`: which run, and a warning when it already succeeded
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
        store, root = "", datastore_root() if local_datastore(argv) else None
        if local_datastore(argv):
            store = f" ({root})" if root else (f" (no .metaflow folder in {os.getcwd()} or above: cd to the directory "
                                               f"the flow ran in, or set METAFLOW_DATASTORE_SYSROOT_LOCAL to it)")
        raise SystemExit(f"resume: there is no {flow} run with id {run_id!r} in this metadata store{store}; "
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

    origin, _ = resume_origin(argv, flow)
    try:
        tags = Run(f"{flow}/{origin}", _namespace_check=False).user_tags if origin else []
    except MetaflowNotFound:  # Metaflow reports the missing run itself
        return []
    return [arg for tag in sorted(tags) if tag.startswith(RUN_TAGS) for arg in ("--tag", tag)]


# --- where the command looked -------------------------------------------------------------

COMMANDS = {"run", "resume", "card", "step", "logs", "show", "check", "dump", "tag", "spin", "init", "version",
            "help", "output-raw", "output-dot", "argo-workflows", "kubernetes", "batch", "step-functions", "airflow"}
"""Metaflow's commands: the first of these on a command line is its command (later ones are values)."""


def command(argv: list[str]) -> str | None:
    """The Metaflow command of `argv` (`run`, `resume`, `card`, ...); None when there is none."""
    return next((arg for arg in argv[1:] if arg in COMMANDS), None)


def check_config_path(argv: list[str], repo: str):
    """Exit with where it looked and what to do when `--config config PATH` names no readable file
    (Metaflow says only that it "could not be read", after creating a datastore in the current
    folder). A relative PATH is read from the current directory; `repo` is the repository root."""
    at = next((i for i, arg in enumerate(argv[:-2]) if arg == "--config" and argv[i + 1] == "config"), None)
    if at is None:
        return
    given = argv[at + 2]
    path = os.path.abspath(given)
    if os.path.isdir(path):
        raise SystemExit(f"--config config {given}: {path} is a folder; give a profile file, "
                         f"e.g. {repo}/config/tiny.toml")
    try:
        open(path, "rb").close()
        return
    except FileNotFoundError:
        pass
    except OSError as err:
        raise SystemExit(f"--config config {given}: {path} cannot be read ({err.strerror}); check its permissions")
    in_repo = os.path.join(repo, given)
    fix = (f"give its absolute path, {in_repo}, or run from the repository root" if not os.path.isabs(given)
           and os.path.isfile(in_repo) else f"run from the repository root ({repo}) or give an absolute path")
    raise SystemExit(f"--config config {given}: no file {path} (a relative path is read from the current directory, "
                     f"{os.getcwd()}); {fix}")


def local_datastore(argv: list[str]) -> bool:
    """Whether the command reads runs from Metaflow's local datastore (the default here)."""
    from metaflow.metaflow_config import DEFAULT_DATASTORE

    for i, arg in enumerate(argv[:-1]):
        if arg == "--datastore-root" or arg.startswith("--datastore-root="):
            return False
        if arg == "--datastore":
            return argv[i + 1] == "local"
        if arg.startswith("--datastore="):
            return arg.partition("=")[2] == "local"
    return DEFAULT_DATASTORE == "local"


def datastore_root() -> str | None:
    """The `.metaflow` folder a command started here reads runs from, found as Metaflow finds it:
    under METAFLOW_DATASTORE_SYSROOT_LOCAL when set, else the nearest `.metaflow` in the current
    directory or above; None when there is none (Metaflow would then create an empty one here)."""
    from metaflow.plugins.datastores.local_storage import LocalStorage

    return LocalStorage.get_datastore_root_from_config(lambda *args, **kwargs: None, create_on_absent=False)


def no_runs_message(what: str, flow: str, root: str | None, cwd: str, sysroot: str | None) -> str | None:
    """The line saying that `what` (`card get`, `resume`) found no run of `flow`, where it looked
    and what to do; None when the datastore folder `root` holds runs of `flow`."""
    if root and os.path.isdir(os.path.join(root, flow)):
        return None
    todo = "cd to the directory the flow ran in, or set METAFLOW_DATASTORE_SYSROOT_LOCAL to it"
    if sysroot:
        return (f"{what}: no {flow} runs in {root} (METAFLOW_DATASTORE_SYSROOT_LOCAL={sysroot}); set it to the "
                f"directory the flow ran in, or unset it and cd there")
    if root:
        return f"{what}: no {flow} runs in {root}, the .metaflow folder nearest {cwd}; {todo}"
    return f"{what}: no {flow} runs found from {cwd}: no .metaflow folder (where runs live) here or above; {todo}"


def check_runs_here(argv: list[str], flow: str = "MonoFlow"):
    """For `card ...` and a bare `resume` on the local datastore: exit with no_runs_message when there
    is no run of `flow` to read, before Metaflow leaves an empty `.metaflow` in the current directory
    (check_resume_origin answers `resume --origin-run-id`)."""
    cmd = command(argv)
    if cmd not in ("card", "resume") or "--origin-run-id" in argv or not local_datastore(argv):
        return
    from metaflow.metaflow_config import DATASTORE_SYSROOT_LOCAL

    sub = argv[argv.index("card") + 1: argv.index("card") + 2] if cmd == "card" else []
    what = " ".join([cmd] + [arg for arg in sub if not arg.startswith("-")])
    message = no_runs_message(what, flow, datastore_root(), os.getcwd(), DATASTORE_SYSROOT_LOCAL)
    if message:
        raise SystemExit(message)


# --- which run `resume` resumes -------------------------------------------------------------

RESUME_VALUE_OPTIONS = {"--origin-run-id", "--tag", "--with", "--run-id", "--run-id-file", "--runner-attribute-file",
                        "--max-workers", "--max-num-splits", "--max-log-size", "--resume-identifier"}
"""The options of `resume` that take a value (the word after them is not the step to rerun)."""


def resume_origin(argv: list[str], flow: str = "MonoFlow") -> tuple[str | None, bool]:
    """(the id of the run `resume` resumes, or None; whether Metaflow chose it). Without
    `--origin-run-id`, Metaflow takes the run id in the datastore's `<flow>/latest_run` file, which
    every `run` with this datastore writes, whoever started it (a `resume` does not)."""
    if "--origin-run-id" in argv[:-1]:
        return argv[argv.index("--origin-run-id") + 1], False
    from metaflow.util import get_latest_run_id

    return get_latest_run_id(lambda *args, **kwargs: None, flow), True


def resume_step(argv: list[str]) -> str | None:
    """The step named in `resume STEP ...` (rerun from there), None when none is named."""
    rest = argv[argv.index("resume") + 1:]
    return next((arg for i, arg in enumerate(rest) if not arg.startswith("-")
                 and (i == 0 or rest[i - 1] not in RESUME_VALUE_OPTIONS)), None)


def resume_lines(run, chosen: bool, step: str | None, clone_only: bool, root: str | None) -> list[str]:
    """What `resume` says before it starts: which run it resumes and why, when Metaflow chose it
    (`chosen`); a warning when that run already succeeded and no step is named, so nothing reruns."""
    lines = []
    if chosen:
        owner = next((tag for tag in sorted(run.system_tags) if tag.startswith("user:")), "an unknown user")
        state = "succeeded" if run.successful else run_state(run)
        lines.append(f"resume: resuming run {run.id}, the latest started by `run` with the datastore {root} "
                     f"(Metaflow's pick without --origin-run-id); it is {owner}'s and {state}; to resume another: "
                     f"python flows/mono_flow.py resume --origin-run-id RUN_ID")
    if run.successful and step is None and not clone_only:
        lines.append(f"resume: run {run.id} already succeeded, so every step is cloned and nothing reruns; to rerun "
                     f"a step and the steps after it: python flows/mono_flow.py resume STEP --origin-run-id {run.id}")
    return lines


def resume_notes(argv: list[str], flow: str = "MonoFlow") -> list[str]:
    """For `resume`: resume_lines of the run it resumes, printed to stderr and returned ([] for any
    other command, or when there is no such run: Metaflow then says so itself)."""
    if command(argv) != "resume":
        return []
    from metaflow import Run
    from metaflow.exception import MetaflowNotFound

    origin, chosen = resume_origin(argv, flow)
    try:
        run = Run(f"{flow}/{origin}", _namespace_check=False) if origin else None
    except MetaflowNotFound:
        return []
    lines = resume_lines(run, chosen, resume_step(argv), "--clone-only" in argv, datastore_root()) if run else []
    for line in lines:
        print(line, file=sys.stderr)
    return lines


FULL_BELOW = 1 << 20
"""Bytes free under which the datastore's disk counts as full once a run has failed."""

WIDTH = 120
"""The terminal width the lines printed after Metaflow's own output are wrapped to."""


def resume_command(run_id: str | None, repo: str, cwd: str | None = None, root: str | None = None) -> str:
    """The shell command that resumes run `run_id` (RUN_ID when unknown) as printed, from the
    directory `cwd` (default: the current one) of the shell that started it: `make resume` (the
    venv and USERNAME of `make run`) in the repository `repo`, with `-C REPO` from elsewhere, and
    METAFLOW_DATASTORE_SYSROOT_LOCAL naming the datastore when its `.metaflow` folder `root`
    (default: the one found from here) is not the repository's."""
    import shlex

    cwd = os.path.realpath(cwd or os.getcwd())
    repo = os.path.realpath(repo)
    root = root if root is not None else datastore_root()
    sysroot = os.path.dirname(os.path.realpath(root)) if root else cwd
    where = "" if sysroot == repo else f"METAFLOW_DATASTORE_SYSROOT_LOCAL={shlex.quote(sysroot)} "
    into = "" if cwd == repo else f"-C {shlex.quote(repo)} "
    return f"{where}make {into}resume RUN={run_id or 'RUN_ID'}"


def full_disk_last_words(argv: list[str], code, repo: str, flow: str = "MonoFlow") -> str | None:
    """After `run` or `resume` exited with `code` (not 0): where the local datastore's disk is
    full (less than FULL_BELOW free), what to do and the command that resumes the run
    (resume_command), so that these are the last lines on screen, after any traceback of
    Metaflow's own artifact writes; None otherwise."""
    if code in (0, None) or not {"run", "resume"} & set(argv):
        return None
    from monollm.saving import MORE_DISK, datastore_place, free_bytes

    place = datastore_place()
    free = free_bytes(place)
    if free is None or free >= FULL_BELOW:
        return None
    try:
        from metaflow import Flow

        run_id = Flow(flow).latest_run.id
    except Exception:  # no run recorded, or its metadata unreadable: the command then names RUN_ID
        run_id = None
    from monollm.results.last_screen import wrap

    said = wrap(f"monoflow: the run stopped because the datastore's disk is full ({free} bytes free at {place}). "
                f"{MORE_DISK}. Then resume the run:", WIDTH)
    return "\n".join(said) + f"\n  {resume_command(run_id, repo)}"


# --- what `run` says before it starts, and after Ctrl-C --------------------------------------

def check_profile(argv: list[str], default: str):
    """For `run`: load and validate the profile (`--config config PATH`, else `default`) before
    Metaflow starts, so that a bad key or value is the command's one line of output, not a line
    inside the `start` step's failure report (`start` checks it again)."""
    if command(argv) != "run":
        return
    import tomllib

    from monollm import config, errors

    at = next((i for i, arg in enumerate(argv[:-2]) if arg == "--config" and argv[i + 1] == "config"), None)
    path = os.path.abspath(argv[at + 2]) if at is not None else default
    seed = next((argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--seed"), None)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
        config.load(raw, int(seed) if seed is not None and seed.lstrip("-").isdigit() else None)
    except tomllib.TOMLDecodeError:
        return  # Metaflow's parser (profiles.parse) names the line and column
    except errors.ConfigError as err:
        raise SystemExit(f"profile {raw.get('name', path)!r} ({path}): {err}") from None


def datastore_note(argv: list[str], repo: str) -> str | None:
    """For `run` and `resume` on the local datastore from outside the repository `repo`: the line
    naming the `.metaflow` folder the runs go to (Metaflow makes one in the current directory when
    there is none above it), printed to stderr; None otherwise."""
    cwd = os.getcwd()
    if command(argv) not in ("run", "resume") or not local_datastore(argv) or \
            os.path.commonpath([cwd, repo]) == repo:
        return None
    root = datastore_root() or os.path.join(cwd, ".metaflow")
    line = (f"{command(argv)}: runs from {cwd}, outside the repository, go to the datastore {root}; `card get`, "
            f"`resume` and `compare` find them from {os.path.dirname(root)} (or with METAFLOW_DATASTORE_SYSROOT_LOCAL)")
    print(line, file=sys.stderr)
    return line


def interrupted_note(run_id: str | None, repo: str) -> str:
    """What `run` or `resume` says after Ctrl-C: how to go on from the step that stopped."""
    return f"Interrupted. To go on from the step that stopped:\n  {resume_command(run_id, repo)}"


def on_interrupt(argv: list[str], repo: str, flow: str = "MonoFlow"):
    """For `run` and `resume`: after Ctrl-C (SIGINT, which Metaflow turns into its own exit), say how
    to resume (interrupted_note) when the process exits; the interrupt itself is handled as before."""
    import atexit
    import signal

    if command(argv) not in ("run", "resume"):
        return
    seen = []

    def note(signum, frame):
        seen.append(signum)
        signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt, as without this handler

    def at_exit():
        if seen:  # a `run` is the latest in the datastore; a resumed run's id is in Metaflow's lines above
            origin = resume_origin(["resume"], flow)[0] if command(argv) == "run" else None
            print(interrupted_note(origin, repo), file=sys.stderr)

    signal.signal(signal.SIGINT, note)
    atexit.register(at_exit)
