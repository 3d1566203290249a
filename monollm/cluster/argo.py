"""A sweep on Argo Workflows: one workflow template per cell, one triggered run per seed.

    python -m monollm.sweep SWEEP.toml --argo create                  # deploy every cell's template
    python -m monollm.sweep SWEEP.toml --argo create -- --only-json   # render them, deploy nothing
    python -m monollm.sweep SWEEP.toml --argo trigger                 # one run per (cell, seed) not done
    python -m monollm.sweep SWEEP.toml --report-only                  # later: the report, found by tag

Metaflow freezes the profile (`--config config CELL.toml`) into a template at `argo-workflows
create`, and the seed is a run Parameter (`trigger --seed S`). So each cell is its own
template, named by `template_name` (`argo-workflows --name`), created with `--tag sweep:NAME
--tag cell:CELL`: Metaflow puts a template's tags on every run it starts, since `trigger` takes
parameters only, not tags. The report finds those runs by the sweep tag through the same
metadata service the cluster's runs record in.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys

NAME_LIMIT = 45
"""Metaflow refuses a longer `argo-workflows --name` (Argo's limit with its suffixes)."""


def template_name(sweep_name: str, cell_name: str) -> str:
    """A valid, distinct Argo template name for a cell: the sweep and cell names lowercased,
    other characters as '-', cut to fit, then a hash of both names (so two cells whose names
    differ only in case or punctuation, or past the cut, still get two templates)."""
    digest = base64.b32encode(hashlib.sha1(f"{sweep_name}/{cell_name}".encode()).digest()).decode()[:6].lower()
    text = re.sub(r"[^a-z0-9]+", "-", f"{sweep_name}-{cell_name}".lower())
    text = re.sub(r"^[^a-z]+", "", text)[:NAME_LIMIT - len(digest) - 1].strip("-") or "sweep"
    return f"{text}-{digest}"


def tags(sweep, cell_name: str) -> list[str]:
    return ["--tag", f"sweep:{sweep.name}", "--tag", f"cell:{cell_name}"]


def create_command(flow_file: str, sweep, cell_name: str, path: str, extra=()) -> list[str]:
    """`argo-workflows create` of one cell's profile under its template name, with the sweep's tags."""
    return [sys.executable, flow_file, "--config", "config", path, "argo-workflows", "--name",
            template_name(sweep.name, cell_name), "create", *tags(sweep, cell_name), *extra]


def trigger_command(flow_file: str, sweep, task, paths: dict, extra=(), run_id_file: str | None = None) -> list[str]:
    """`argo-workflows trigger` of a task's cell template with its seed (the same profile is
    named, as Metaflow parses the flow and its config to trigger); Metaflow writes the triggered
    run's id to `run_id_file` (`--run-id-file`)."""
    name = task.cell.name
    return [sys.executable, flow_file, "--config", "config", paths[name], "argo-workflows", "--name",
            template_name(sweep.name, name), "trigger", "--seed", str(task.seed),
            *(["--run-id-file", run_id_file] if run_id_file else []), *extra]


def to_trigger(tasks: list) -> tuple[list, list[str]]:
    """(tasks, notes): the pairs to trigger, those without a successful run; a pair whose newest
    run has not finished (still running on the cluster) is left alone, with a note. A failed
    run is triggered afresh: Argo starts runs, it does not resume them."""
    todo, notes = [], []
    for t in tasks:
        if t.action == "skip":
            continue
        newest = t.runs[0].run if t.runs else None
        if newest is not None and not getattr(newest, "finished", True):
            notes.append(f"cell {t.cell.name} seed {t.seed}: run {t.runs[0].id} is still running: not triggered")
            continue
        todo.append(t)
    return todo, notes


def _json_of(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):])


def _run(cmd: list[str], log: str) -> tuple[int, str]:
    """Run a command, its stdout and stderr into `log`; (exit status, stdout)."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    with open(log, "w") as f:
        f.write(proc.stdout + proc.stderr)
    return proc.returncode, proc.stdout


def create(flow_file: str, sweep, cells, paths: dict, out: str, extra=()) -> int:
    """Deploy (or with `--only-json` in `extra`, render to <out>/argo/<cell>.json) every cell's
    template, one at a time, each with its log in <out>/logs; returns the number that failed."""
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    only_json, failed = "--only-json" in extra, 0
    for cell in cells:
        name, log = template_name(sweep.name, cell.name), os.path.join(out, "logs", f"argo-create.{cell.name}.log")
        rc, stdout = _run(create_command(flow_file, sweep, cell.name, paths[cell.name], extra), log)
        if rc == 0 and only_json:
            os.makedirs(os.path.join(out, "argo"), exist_ok=True)
            path = os.path.join(out, "argo", f"{cell.name}.json")
            with open(path, "w") as f:
                json.dump(_json_of(stdout), f, indent=1)
            print(f"cell {cell.name}: template {name} rendered to {path}", flush=True)
        elif rc == 0:
            print(f"cell {cell.name}: template {name} deployed", flush=True)
        else:
            failed += 1
            print(f"cell {cell.name}: template {name} FAILED (exit {rc}; see {log})", flush=True)
    return failed


def trigger(flow_file: str, sweep, tasks: list, paths: dict, out: str, extra=()) -> int:
    """Trigger one run per task of `to_trigger(tasks)` on its cell's template; returns the
    number of triggers that failed. The run ids are printed (argo-...)."""
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    todo, notes = to_trigger(tasks)
    for note in notes:
        print(f"note: {note}", flush=True)
    failed = 0
    for t in todo:
        log = os.path.join(out, "logs", f"argo-trigger.{t.cell.name}.seed{t.seed}.log")
        id_file = log[:-len(".log")] + ".run-id"
        if os.path.exists(id_file):
            os.unlink(id_file)
        rc, stdout = _run(trigger_command(flow_file, sweep, t, paths, extra, id_file), log)
        run_id = open(id_file).read().strip() if os.path.exists(id_file) else ""
        state = f"triggered run {run_id or '?'}" if rc == 0 else f"FAILED (exit {rc}; see {log})"
        failed += rc != 0
        print(f"cell {t.cell.name} seed {t.seed}: {state}", flush=True)
    print(f"{len(todo) - failed} run(s) triggered; when they finish: python -m monollm.sweep SWEEP.toml "
          "--report-only (with the cluster's metadata service configured)", flush=True)
    return failed
