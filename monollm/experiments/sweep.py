"""Grids of MonoFlow runs (seeds x values of chosen config keys) and a report that contrasts them.

    python -m monollm.sweep config/sweeps/attribution.toml        # run what is missing, then report
    python -m monollm.sweep SWEEP.toml --max-parallel 3           # three runs at a time
    python -m monollm.sweep SWEEP.toml --dry-run                  # the plan only
    python -m monollm.sweep SWEEP.toml --report-only              # the report from the runs there are
    python -m monollm.sweep SWEEP.toml -- --with kubernetes       # options for every run and resume
    python -m monollm.sweep SWEEP.toml --argo create              # one Argo Workflows template per cell
    python -m monollm.sweep SWEEP.toml --argo trigger             # one Argo run per (cell, seed) not done

Every cell's profile is written to <out>/cells/<cell>.toml (out: sweeps/<name> in the current
directory) and checked with the project's loader before any run starts. Each (cell, seed) runs
as `python flows/mono_flow.py --config config CELL.toml run --seed S --tag sweep:NAME --tag
cell:CELL`, in the current directory (the local datastore is ./.metaflow). Re-running the sweep
skips pairs that have a successful run of the sweep with that configuration and seed, and
resumes the newest failed one (`resume --origin-run-id RUN`). Runs whose setup would be the
same (monollm.setup_reuse: cells that differ only in how the constraint is applied, at one seed)
compute it once: the first runs in full, the others take its setup with --reuse-setup
(--no-reuse-setup: each computes its own). An invocation that starts runs
holds <out>/sweep.lock (monollm.experiments.lock): a second one stops at once. Each run starts in a
process group of its own; SIGTERM and SIGINT to the sweep are passed on to its runs, which it
waits for. A run outlives a sweep killed outright; it is recorded in <out>/running, and the next
invocation waits for it before planning, so no pair runs twice. The report (sweep_report) is
written to <out>/report.html with its tables as CSV.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from monollm import setup_reuse
from monollm.cluster import argo
from monollm.experiments import lock as sweep_lock, sweep_report
from monollm.experiments.plan import (RunRecord, SweepError, Task, check_cells, expand, load_sweep, plan, resolved,
                                write_cell)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
FLOW_FILE = os.path.join(ROOT, "flows", "mono_flow.py")


def prepare(path: str, out: str | None = None):
    """(sweep, cells, {cell: profile path}, {(cell, seed): resolved config}, out folder): the
    sweep file checked, every cell built, validated and written; raises SweepError."""
    sweep = load_sweep(path)
    with open(sweep.profile, "rb") as f:
        raw = tomllib.load(f)
    cells = expand(sweep, raw)
    check_cells(cells, sweep.seeds[0])
    expected = {(c.name, s): resolved(c, s) for c in cells for s in sweep.seeds}
    out = out or os.path.join("sweeps", sweep.name)
    paths = {c.name: os.path.abspath(write_cell(c, os.path.join(out, "cells"))) for c in cells}
    return sweep, cells, paths, expected, out


def records(name: str, flow: str = "MonoFlow", namespace: str | None = None) -> list[RunRecord]:
    """Every run tagged sweep:<name>, newest first, with the configuration its `start` stored."""
    from metaflow import Flow
    from metaflow.exception import MetaflowNotFound

    from monollm.results import client

    with client.in_namespace(namespace):
        try:
            runs = list(Flow(flow).runs(f"sweep:{name}"))
        except MetaflowNotFound:  # the flow has never run here
            return []
    return [RunRecord(str(r.id), bool(r.successful), _start_config(r), r) for r in runs]


def _start_config(run) -> dict | None:
    from metaflow.exception import MetaflowNotFound

    try:  # a failed run has no `end` data: its configuration is start's artifact
        return run["start"].task["resolved_config"].data
    except (KeyError, AttributeError, MetaflowNotFound):
        return None


def command(sweep, task: Task, paths: dict, extra: list[str], reuse: str | None = None,
            run_id_file: str | None = None) -> list[str]:
    """The flow command of a task: `run` a cell's profile with its seed (taking its setup from run
    `reuse`, if given), or `resume` the failed run (which keeps that run's configuration and
    parameters). Both tag the run with the sweep and the cell; Metaflow writes the run's id to
    `run_id_file` (`--run-id-file`) when the run starts."""
    tags = ["--tag", f"sweep:{sweep.name}", "--tag", f"cell:{task.cell.name}",
            *(["--run-id-file", run_id_file] if run_id_file else [])]
    if task.action == "resume":
        return [sys.executable, FLOW_FILE, "resume", "--origin-run-id", task.runs[0].id, *tags, *extra]
    return [sys.executable, FLOW_FILE, "--config", "config", paths[task.cell.name], "run",
            "--seed", str(task.seed), *(["--reuse-setup", reuse] if reuse else []), *tags, *extra]


def setup_sources(found: list[RunRecord]) -> dict:
    """{setup key: pathspec of the newest run whose setup stored it} over the sweep's runs."""
    out = {}
    for r in found:
        k = setup_reuse.stored_key(r.run) if r.run is not None else None
        if k is not None:
            out.setdefault(k, r.run.pathspec)
    return out


def describe(task: Task) -> str:
    what = {"skip": "skip: done by run " + ", ".join(r.id for r in task.runs),
            "resume": f"resume failed run {task.runs[0].id}" if task.runs else "", "run": "run"}[task.action]
    return f"cell {task.cell.name} seed {task.seed}: {what}"


def execute(sweep, tasks: list[Task], paths: dict, out: str, max_parallel: int = 1, extra=(),
            expected: dict | None = None, sources: dict | None = None) -> list[dict]:
    """Run every task that is not a skip, `max_parallel` at a time (lock.attempt: each in its own
    process group, its log appended in <out>/logs, its run id from --run-id-file); a failed one
    never stops the others, and none starts once the sweep got SIGTERM or SIGINT. One progress
    line per start and finish; returns {"task", "rc", "run_id", "log"} per task (rc None: not
    started).

    With `expected` ({(cell, seed): resolved configuration}), runs that share a setup key
    (monollm.setup_reuse: cells that differ only in how the constraint is applied, at one seed)
    share one setup: a run takes it from `sources` ({setup key: run}, earlier runs) or, when there
    is none, the first of them runs in full, and the others follow it with --reuse-setup."""
    todo = [t for t in tasks if t.action != "skip"]
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    lock, sources = threading.Lock(), dict(sources or {})
    keys = _setup_keys(todo, expected)
    first, later = _waves(todo, keys, sources)

    def say(line: str):
        with lock:
            print(line, flush=True)

    def one(i_task):
        i, task = i_task
        pair = f"{task.cell.name}.seed{task.seed}"
        log, id_file = os.path.join(out, "logs", f"{pair}.log"), os.path.join(out, sweep_lock.RUNNING, f"{pair}.run-id")
        reuse = sources.get(keys.get(id(task)))
        if sweep_lock.STOP["signal"]:
            return {"task": task, "rc": None, "run_id": None, "log": log}
        say(f"[{i}/{len(todo)}] start {describe(task)}" + (f", setup from run {reuse}" if reuse else "")
            + f" (log: {log})")
        began = time.monotonic()
        cmd = command(sweep, task, paths, list(extra), reuse, id_file)
        rc, run_id = sweep_lock.attempt(cmd, out, pair, log, id_file)
        state = ("succeeded" if rc == 0 else "not started (the sweep was stopped)" if rc is None
                 else f"FAILED (exit {rc}; see {log})")
        say(f"[{i}/{len(todo)}] finish cell {task.cell.name} seed {task.seed}: run {run_id} {state} "
            f"after {time.monotonic() - began:.0f} s")
        return {"task": task, "rc": rc, "run_id": run_id, "log": log}

    with ThreadPoolExecutor(max_workers=max(1, max_parallel)) as pool:
        done = list(pool.map(one, enumerate(first, 1)))
        for d in done:  # a first run's setup, once it succeeded, serves the runs that share its key
            k = keys.get(id(d["task"]))
            if k is not None and k not in sources and d["run_id"] and \
                    setup_reuse.stored_key(f"MonoFlow/{d['run_id']}") == k:
                sources[k] = f"MonoFlow/{d['run_id']}"
        return done + list(pool.map(one, enumerate(later, len(first) + 1)))


def _setup_keys(todo: list[Task], expected: dict | None) -> dict:
    """{id(task): setup key} of the tasks that start a new run (a resume keeps its own setup)."""
    if expected is None:
        return {}
    code = setup_reuse.code_digest()
    return {id(t): setup_reuse.key(expected[(t.cell.name, t.seed)], code) for t in todo if t.action == "run"}


def _waves(todo: list[Task], keys: dict, sources: dict) -> tuple[list, list]:
    """(first, later): later holds the runs whose setup key has no source yet and is another
    first run's; they start once the first wave has finished."""
    first, later, leading = [], [], set()
    for t in todo:
        k = keys.get(id(t))
        if k is None or k in sources or k not in leading:
            first.append(t)
            leading.add(k)
        else:
            later.append(t)
    return first, later


def per_run(tasks: list[Task]) -> tuple[pd.DataFrame, list[str]]:
    """(table, notes): one row per (cell, seed) with a successful run (cell, seed, run and the
    numbers sweep_report.pick takes from it; attrs["compute"]: cell -> its runs' findings["compute"]).
    A run and its resumed copies are one computation (compare.one_per_computation); where a pair
    still has several runs, the oldest counts."""
    from monollm.experiments import across, compare, flagged

    done = [t for t in tasks if t.action == "skip"]
    kept, notes = compare.one_per_computation([r.run for t in done for r in t.runs])
    kept_ids = {str(r.id) for r in kept}
    rows, computes = [], {}
    for t in done:
        mine = [r.run for r in t.runs if str(r.run.id) in kept_ids]
        if not mine:  # its runs count under another pair's computation (not expected: one config each)
            continue
        if len(mine) > 1:
            notes.append(f"cell {t.cell.name} seed {t.seed}: runs {', '.join(str(r.id) for r in mine)} repeat one "
                         f"computation; run {mine[0].id} counts")
        rows.append({"cell": t.cell.name, "seed": t.seed, "run": mine[0].pathspec,
                     **sweep_report.pick(compare.key_numbers(mine[0].data)),
                     sweep_report.FLAGS: flagged.run_flags(mine[0].data.findings)})
        computes.setdefault(t.cell.name, []).append(across.run_compute(mine[0].data))
    table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["cell", "seed", "run"])
    table.attrs["compute"] = computes  # cell -> its runs' findings["compute"] (sweep_report.write)
    return table, notes


def report(sweep, cells, tasks: list[Task], out: str) -> dict:
    """Write the report of the runs `tasks` found (see sweep_report.write); prints its tables."""
    table, notes = per_run(tasks)
    missing = [t for t in tasks if t.action != "skip"]
    lines = [f"Sweep {sweep.name}: profile {sweep.profile}; seeds {list(sweep.seeds)}; grid "
             + ("; ".join(f"{k} = {list(v)}" for k, v in sweep.grid.items()) or "none")
             + ("; set " + "; ".join(f"{k} = {v!r}" for k, v in sweep.fixed.items()) if sweep.fixed else ""),
             f"{len(tasks) - len(missing)} of {len(tasks)} (cell, seed) pairs have a successful run."]
    lines += [f"Not done: cell {t.cell.name} seed {t.seed}: " + (f"run {t.runs[0].id} failed (re-running the sweep "
              "resumes it)" if t.action == "resume" else "no run") for t in missing]
    lines += [f"Note: {n}" for n in notes]
    written = sweep_report.write(out, f"Sweep {sweep.name}", lines, table, cells, sweep.grid)
    print("\n".join(lines) + "\n")
    print(sweep_report.console_text(written["cells"], written["contrasts"], written["compute"]))
    print(f"\nreport: {written['html']} (tables: report.csv, contrasts.csv, runs.csv, compute.csv)")
    return written


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m monollm.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="the sweep file (TOML; see config/sweeps/)")
    parser.add_argument("--out", help="the sweep's folder: cells, logs and report (default: sweeps/<name>)")
    parser.add_argument("--max-parallel", type=int, default=1, metavar="N", help="runs at a time (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (cells, seeds, skip/resume/run)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the runs there are")
    parser.add_argument("--argo", choices=("create", "trigger"), default=None,
                        help="on Argo Workflows: `create` deploys one template per cell (options after -- go "
                             "to `argo-workflows create`, e.g. --only-json), `trigger` starts one run per "
                             "(cell, seed) without a successful run (see monollm.cluster.argo)")
    parser.add_argument("--no-reuse-setup", action="store_true",
                        help="every run computes its own setup (default: runs whose setup configuration is "
                             "the same, e.g. cells that differ only in monotonic.mode at one seed, share one)")
    parser.add_argument("--namespace", default=None, metavar="NS",
                        help="Metaflow namespace to look runs up in (default: every user's runs)")
    args = parser.parse_args(argv)
    from metaflow.util import get_username

    if not get_username():  # the flow would refuse every run: say so once, before any
        print("sweep: Metaflow needs a user name: set USERNAME (the Makefile uses USERNAME=monollm)", file=sys.stderr)
        return 2
    try:
        sweep, cells, paths, expected, out = prepare(args.sweep, args.out)
    except (SweepError, OSError, tomllib.TOMLDecodeError) as err:
        print(f"sweep: {err}", file=sys.stderr)
        return 2
    if args.argo and args.report_only:
        print("sweep: --report-only reads the runs there are; leave out --argo", file=sys.stderr)
        return 2
    if args.argo == "create":  # deploys templates, starts no run: no lock
        return _argo_create(sweep, cells, paths, out, extra, args.dry_run)
    if args.dry_run or args.report_only:  # no run starts: no lock (see sweep_lock)
        return _plan_and_run(args, sweep, cells, paths, expected, out, extra)
    return _locked(args, argv, sweep, cells, paths, expected, out, extra)


def _locked(args, argv, sweep, cells, paths, expected, out, extra) -> int:
    """Plan and run holding the lock, with SIGTERM and SIGINT passed on to the runs (lock.stop),
    once the runs an earlier invocation left going have ended."""
    try:
        lock, note = sweep_lock.acquire(out, " ".join(["python -m monollm.sweep", *argv]))
    except sweep_lock.SweepLocked as err:
        print(f"sweep: {err}", file=sys.stderr)
        return 3
    if note:
        print(f"sweep: note: {note}", flush=True)
    sweep_lock.STOP["signal"] = 0
    previous = {s: signal.signal(s, sweep_lock.stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        sweep_lock.wait_for_earlier_runs(out)
        if sweep_lock.STOP["signal"]:
            return 128 + sweep_lock.STOP["signal"]
        return _plan_and_run(args, sweep, cells, paths, expected, out, extra)
    except sweep_lock.SweepLocked as err:
        print(f"sweep: {err}", file=sys.stderr)
        return 3
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sweep_lock.release(lock)


def _argo_create(sweep, cells, paths, out, extra, dry_run: bool) -> int:
    print(f"sweep {sweep.name}: {len(cells)} cell(s), one Argo Workflows template each; cells in {out}/cells")
    if dry_run:
        print("\n".join("  " + shlex.join(argo.create_command(FLOW_FILE, sweep, c.name, paths[c.name], extra))
                        for c in cells))
        return 0
    return 1 if argo.create(FLOW_FILE, sweep, cells, paths, out, extra) else 0


def _plan_and_run(args, sweep, cells, paths, expected, out, extra) -> int:
    found = records(sweep.name, namespace=args.namespace)
    tasks = plan(cells, sweep.seeds, found, expected)
    print(f"sweep {sweep.name}: {len(cells)} cell(s) x {len(sweep.seeds)} seed(s); cells in {out}/cells")
    print("\n".join(f"  {describe(t)}" for t in tasks), flush=True)
    if args.argo == "trigger":
        if args.dry_run:
            todo, notes = argo.to_trigger(tasks)
            print("\n".join([f"  note: {n}" for n in notes] + [
                "  " + shlex.join(argo.trigger_command(FLOW_FILE, sweep, t, paths, extra)) for t in todo]))
            return 0
        return 1 if argo.trigger(FLOW_FILE, sweep, tasks, paths, out, extra) else 0
    if args.dry_run:
        return 0
    if not args.report_only:
        ran = execute(sweep, tasks, paths, out, args.max_parallel, extra,
                      expected=None if args.no_reuse_setup else expected,
                      sources=None if args.no_reuse_setup else setup_sources(found))
        if sweep_lock.STOP["signal"]:
            print(f"sweep: stopped by {signal.Signals(sweep_lock.STOP['signal']).name}; the runs it started have ended",
                  file=sys.stderr)
            return 128 + sweep_lock.STOP["signal"]
        if ran:
            tasks = plan(cells, sweep.seeds, records(sweep.name, namespace=args.namespace), expected)
    report(sweep, cells, tasks, out)
    return 0 if args.report_only or all(t.action == "skip" for t in tasks) else 1


if __name__ == "__main__":
    sys.exit(main())
