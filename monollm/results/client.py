"""Helpers for notebooks and scripts over the Metaflow Client API.

    from metaflow import Flow
    from monollm.results import client
    run = Flow("MonoFlow").latest_successful_run
    run.data.perplexity                          # one row per model
    model, tokenizer = client.load_model(run, "monotonic")

Runs are looked up in Metaflow's global namespace by default, so that a run is found
whoever (which USERNAME, which production token) ran it; `namespace="user:alice"` (or any
Metaflow namespace) restricts a lookup to that namespace.
"""
from __future__ import annotations

import contextlib
import os
import tempfile

from monollm.constants import MODELS

MODEL_ARTIFACTS = {name: f"{name}_model" for name in MODELS}
"""Model name -> the flow's artifact holding its stored checkpoint."""


@contextlib.contextmanager
def in_namespace(namespace: str | None = None):
    """Metaflow Client lookups inside the block use `namespace` (None: the global namespace,
    every run of every user); the caller's namespace is restored afterwards. Objects made
    inside keep the namespace they were made in, so they stay usable after the block."""
    import metaflow

    before = metaflow.get_namespace()
    metaflow.namespace(namespace)
    try:
        yield
    finally:
        metaflow.namespace(before)


def get_run(run=None, tag: str | None = None, flow: str = "MonoFlow", namespace: str | None = None):
    """A Run: a Run object as is, a run id or pathspec, the latest successful run with `tag`,
    or the latest successful run; looked up in `namespace` (None: the global namespace)."""
    from metaflow import Flow, Run

    if run is not None and not isinstance(run, (str, int)):
        return run
    with in_namespace(namespace):
        if run is not None:
            run = str(run)
            return Run(run if "/" in run else f"{flow}/{run}")
        for r in Flow(flow).runs(*([tag] if tag else [])):
            if r.successful:
                return r
    where = f" in namespace {namespace!r}" if namespace else ""
    raise LookupError(f"no successful {flow} run" + (f" tagged {tag!r}" if tag else "") + where)


def load_model(run, name: str, path: str | None = None, device: str = "cpu"):
    """(model, tokenizer) of one of the run's four models, as plain transformers objects.

    `run`: anything `get_run` accepts; `name`: reference, baseline, monotonic_init or monotonic.
    Files are fetched from the run's datastore into `path` (a new temporary folder by default)
    and verified against their checksums (models.CorruptModel names the run and model if not).
    """
    from metaflow import load_model as fetch

    from monollm.model import foundation

    if name not in MODEL_ARTIFACTS:
        raise KeyError(f"unknown model {name!r}; one of {', '.join(MODEL_ARTIFACTS)}")
    run = get_run(run)
    if run.data is None or not hasattr(run.data, MODEL_ARTIFACTS[name]):
        raise LookupError(f"run {run.pathspec} has no {MODEL_ARTIFACTS[name]} (did it finish?)")
    reference = getattr(run.data, MODEL_ARTIFACTS[name])
    path = path or tempfile.mkdtemp(prefix=f"monollm-{name}-")
    os.makedirs(path, exist_ok=True)
    fetch(reference, path)
    what, next_step = stored_model_words(name, reference, run.pathspec, "Fetch it again")
    return foundation.load(path, device, what=what, next_step=next_step)


def stored_model_words(name: str, reference, run: str, again: str) -> tuple[str, str]:
    """(what, next_step) for the message about a damaged stored model (models.CorruptModel): which
    model of which run (`run`: "MonoFlow/ID"), the task that saved it (from its artifact's
    `reference`), and what to do: `again` (how to fetch a fresh copy), then resume from the step
    that saved it."""
    task = reference.get("pathspec", "") if isinstance(reference, dict) else ""  # the task that saved it
    step = task.split("/")[2] if task.count("/") == 3 else "the step that produced it"
    what = f"{name} model of run {run}, artifact {MODEL_ARTIFACTS[name]}" + (f", saved by task {task}" if task else "")
    return what, (f"{again} (the copy may have been damaged in transfer); if it fails again, the stored files are "
                  f"damaged: resume the run from {step} (python flows/mono_flow.py resume {step if task else 'STEP'} "
                  f"--origin-run-id {run.split('/')[-1]}) or start a new run.")


@contextlib.contextmanager
def stored_models(dirs: dict, references: dict, run: str, step: str):
    """Inside a flow step, a damaged model loaded from one of `dirs` (model name -> the folder its
    artifact was fetched into; `references`: name -> that artifact) is refused with the words of
    `load_model`: which model of run `run`, which task saved it, and the commands to fetch it again
    (a resume of this `step`) and to resume from the step that saved it."""
    from monollm.model import foundation

    try:
        yield
    except foundation.CorruptModel as err:
        name = next((m for m, d in dirs.items() if err.path and os.path.realpath(d) == os.path.realpath(err.path)),
                    None)
        if name is None:
            raise
        again = f"Resume this step to fetch it again (python flows/mono_flow.py resume {step} --origin-run-id " \
                f"{run.split('/')[-1]})"
        raise foundation.damaged(err.path, err.problem, *stored_model_words(name, references.get(name), run, again)) \
            from None


def run_state(run) -> str:
    """How an unsuccessful run stands, in words: failed (a task ended without success; its step
    named) or still running (no task failed; a run stopped by a signal looks the same)."""
    for step in run:
        for task in step:
            if ended(task) and not task.successful:
                return f"failed (in step {step.id})"
    return "is still running, or was stopped before any step failed"


def ended(task) -> bool:
    """Whether a task's latest attempt ended, successfully or not. Metaflow's `task.finished` is
    False for a failed task (it reads the attempt's `_task_ok`, False then); `finished_at` is set
    whenever the attempt stored that artifact."""
    if getattr(task, "finished", False):
        return True
    try:
        return task.finished_at is not None
    except (AttributeError, KeyError):
        return False


RUN_TAGS = ("profile:", "variant:", "mode:", "seed:")
"""Prefixes of the tags every run carries (pipeline.tags)."""


def origin_run_id(run) -> str | None:
    """The id of the run `run` was resumed from (`resume --origin-run-id`), None for a run that
    was started afresh. Metaflow records it on every task of a resumed run, cloned or run again,
    so it is known even when the whole run was cloned; for objects without tasks (a stand-in),
    the run's `origin_run_id` artifact says."""
    try:
        value = run["start"].task.metadata_dict.get("origin-run-id")
    except (TypeError, KeyError, AttributeError):  # not a Client Run
        value = getattr(getattr(run, "data", None), "origin_run_id", None)
    return None if value in (None, "", "None") else str(value)


def tag_current_run(tags: list[str]):
    """Tag the running run (from inside a step) so that users can find it by profile/variant/seed."""
    from metaflow import Run, current

    Run(f"{current.flow_name}/{current.run_id}").add_tags(tags)


WIDTH = 120
"""Console summary width: every line of `summary_text` fits it."""


def text_table(df, columns: dict) -> list[str]:
    """Rows of `df` as `| a | b |` lines, columns padded to one width (text left, numbers right).

    columns: column -> (title, format or None for text). The leading `|` keeps the alignment
    where a log prefixes and strips each line."""
    cells = [[title for title, _ in columns.values()]]
    for _, row in df.iterrows():
        cells.append([str(row[c]) if fmt is None else format(row[c], fmt) for c, (_, fmt) in columns.items()])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    numeric = [fmt is not None for _, fmt in columns.values()]
    pad = [[c.rjust(w) if num and j else c.ljust(w) for c, w, num in zip(r, widths, numeric)]
           for j, r in enumerate(cells)]
    return ["| " + " | ".join(r) + " |" for r in pad]


def summary_text(data, run_id: str = "") -> str:
    """The end of a run on the console, at most WIDTH columns. The tables come first (perplexity,
    constraint checks, attack damage, the worst case, how far each search's gradient ranking can
    be trusted, downstream tasks, order preservation); the answer (the sentences that open the
    experiment card: the worst case, each attack's verdict, the perplexity cost, the seeds) and
    the command that fetches the card come last, so they are on the screen when the run ends."""
    from monollm.results.card_sections import arms_differ
    from monollm.results.headline import headline

    parts = detail_lines(data)
    from monollm.results.wording import pipeline_check_line

    caveat = pipeline_check_line(data.resolved_config)
    parts += ["", ANSWER_TITLE] + ([caveat] if caveat else []) + headline(data.findings,
                                                                          arms_differ(data.resolved_config))
    tasks = getattr(data, "attack_tasks", None) or {}
    if run_id:
        parts += ["", "Branch cards (each attack's own card):"] + card_commands(run_id, tasks) if tasks else []
        parts += ["", card_command(run_id)]
    return "\n".join(line for part in parts for line in _wrap(part))


CONSOLE_KINDS = {"control_random_positions": "control (rand pos)"}
"""Row kinds shortened in the console's attack table, so that it fits WIDTH (the card keeps the names)."""
ANSWER_TITLE = "Answer (the experiment card opens with it; the tables above hold the numbers behind it):"
"""The line that opens the answer, near the end of the console summary."""


def card_command(run_id: str) -> str:
    """The last line of the console summary: how to fetch the run's experiment card (Makefile)."""
    return f"Experiment card: make card RUN={run_id}"


def branch_tasks(run_pathspec: str, step: str = "attack") -> dict:
    """Branch name (an attack, "downstream", "order") -> the task id of its `step` task in run
    `run_pathspec` ("MonoFlow/ID"), in the foreach's order, read from each task's foreach frame;
    {} where the metadata cannot say (a run whose branches are not recorded yet)."""
    from metaflow import Step
    from metaflow.exception import MetaflowException

    try:
        with in_namespace(None):
            frames = [(t["_foreach_stack"].data[-1], t.id) for t in Step(f"{run_pathspec}/{step}")]
            return {frame.value: task for frame, task in sorted(frames, key=lambda pair: pair[0].index)}
    except (MetaflowException, KeyError, IndexError, AttributeError):
        return {}


def card_commands(run_id: str, tasks: dict) -> list[str]:
    """'<branch>: make card RUN=<run_id> STEP=attack/<task>' per branch of `tasks` (branch_tasks)."""
    return [f"{branch}: make card RUN={run_id} STEP=attack/{task}" for branch, task in tasks.items()]


def card_commands_text(run_id: str, tasks: dict) -> str:
    """The experiment card's line naming the command of each branch's own card ("" without `tasks`)."""
    if not (run_id and tasks):
        return ""
    return (f"Every card of this run in one folder, opening on this one: `make cards RUN={run_id}` (from the "
            f"repository root). Each branch's own card: " + "; ".join(
                f"`make card RUN={run_id} STEP=attack/{task}` ({branch})" for branch, task in tasks.items()))


def summary_file(text: str, run_pathspec: str) -> str | None:
    """Write the console summary `text` of run `run_pathspec` ("MonoFlow/ID"), free of Metaflow's log
    prefixes, to a file in the temp folder when the run's datastore is local (the step runs on this
    machine); its path, or None for a remote datastore (`end` stores the text as `summary` either way)."""
    import tempfile

    from metaflow.metaflow_config import DEFAULT_DATASTORE

    if DEFAULT_DATASTORE != "local":
        return None
    path = os.path.join(tempfile.gettempdir(), f"monollm-{run_pathspec.replace('/', '-')}-summary.txt")
    with open(path, "w") as f:
        f.write(text + "\n")
    return path


def keep_summary(text: str, run_pathspec: str) -> str:
    """`summary_file`, and the line that names the file, or, for a remote datastore, how to print
    the run's `summary` artifact."""
    path = summary_file(text, run_pathspec)
    return f"Without the log prefixes: {path}" if path else \
        f"Without the log prefixes: make summary RUN={run_pathspec.split('/')[-1]}"


def detail_lines(data) -> list[str]:
    """The console summary's tables and notes, before the answer."""
    f = data.findings
    ci = "[{:+.3f}, {:+.3f}]"
    parts = ["Perplexity on the test blocks (95% bootstrap CI over blocks):"]
    parts += text_table(data.perplexity, {"model": ("model", None), "perplexity": ("perplexity", ".3f"),
                                          "ppl_ci_low": ("CI low", ".3f"), "ppl_ci_high": ("CI high", ".3f"),
                                          "tokens": ("tokens", "d")})
    mode = f.get("mode", "nonneg")
    from monollm.results.report import promise_column

    parts += ["", f"Constraint verification (mode {mode}: {promise_column(mode)} must be 0):"]
    formats = {"matrices": "d", "negative": "d", "min": ".5g", "parametrized": "d"}
    parts += text_table(data.constraint, {c: (c, formats.get(c)) for c in data.constraint.columns})
    s = data.attack_summary
    if len(s):
        view = s.assign(kind=[CONSOLE_KINDS.get(k, k) for k in s["kind"]], dnll_ci=[ci.format(lo, hi) for lo, hi in zip(s["dnll_ci_low"], s["dnll_ci_high"])],
                        above=[("" if pd_isna(a) else f"{a:+.3f} " + ci.format(lo, hi))
                               for a, lo, hi in zip(s["above_control"], s["above_control_ci_low"],
                                                    s["above_control_ci_high"])])
        parts += ["", "Attacks (dNLL: attacked minus clean NLL, nats per continuation token; 95% CIs):"]
        parts += text_table(view, {"attack": ("attack", None), "kind": ("kind", None), "model": ("model", None),
                                   "source_model": ("found on", None), "dnll_mean": ("dNLL", "+.3f"),
                                   "dnll_ci": ("CI", None), "above": ("above control", None)})
    parts += robustness_lines(data)
    parts += guidance_lines(f)
    parts += downstream_lines(f) + order_lines(f)
    parts += ["", f["convergence_note"]] if f.get("convergence_note") else []
    return parts + ["", f["activation_note"]]


def robustness_lines(data) -> list[str]:
    """The worst-case table, the masking diagnostics and the budget curves ([] for a run made
    before they existed)."""
    from monollm.results import robustness_views as views

    worst = views.worst_case_view(getattr(data, "worst_case", None))
    if not len(worst):
        return []
    out = ["", views.WORST_CASE_TITLE] + text_table(worst, views.WORST_CASE_COLUMNS)
    out += [""] + views.diagnostic_lines(data.findings)
    curve = views.curve_view(getattr(data, "budget_curve", None))
    return out + (["", views.CURVE_TITLE] + text_table(curve, views.CURVE_COLUMNS) if len(curve) else [])


def guidance_lines(findings: dict) -> list[str]:
    """One line per attack whose gradient guidance was measured (findings["guidance"]): the ranking
    its search used and each model's Spearman rho, "weak" where rho is below the threshold; []
    where nothing was measured (or the run predates it)."""
    from monollm.results.report import WEAK_GUIDANCE, weak_guidance

    measured = {a: g for a, g in findings.get("guidance", {}).items() if g["spearman"]}
    if not measured:
        return []
    return ["", f"Gradient guidance (Spearman rho, first-order estimate vs exact loss change of a swap; "
                f"weak: rho < {WEAK_GUIDANCE:g}):"] + [
        f"{attack}: ranking {g['ranking']}; " + ", ".join(
            f"{m} {r:+.2f} over {g['swaps'][m]} swaps" + (" (weak)" if weak_guidance(r) else "")
            for m, r in g["spearman"].items()) for attack, g in measured.items()]


def downstream_lines(findings: dict) -> list[str]:
    """The downstream tasks' cost of the constraint (findings["downstream"]): per task, baseline,
    monotonic and monotonic minus baseline with its 95% interval; [] where none ran."""
    import pandas as pd

    tasks = findings.get("downstream") or {}
    if not tasks:
        return []
    rows = pd.DataFrame([{"task": t, "ci": f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]", **d} for t, d in tasks.items()])
    return ["", "Downstream tasks (monotonic minus baseline; negative = the constraint costs; 95% paired CI):"] + \
        text_table(rows, {"task": ("task", None), "metric": ("metric", None), "baseline": ("baseline", ".3f"),
                          "monotonic": ("monotonic", ".3f"), "diff": ("difference", "+.3f"), "ci": ("CI", None),
                          "items": ("items", "d")})


def order_lines(findings: dict) -> list[str]:
    """Order preservation at the deepest layer (findings["order_preservation"]): per model the
    share of probe directions along which the stronger text scores at least as high, with the
    method that measured it; [] where it was not measured."""
    import pandas as pd

    from monollm.results.card_sections import order_method

    o = findings.get("order_preservation") or {}
    if not o.get("models"):
        return []
    method = o.get("method", "per_axis")
    rows = pd.DataFrame([{"model": m, "method": method, "ci": f"[{v['ci_low']:.3f}, {v['ci_high']:.3f}]", **v}
                         for m, v in o["models"].items()])
    return ["", f"Order preservation, {method} method (layer {o['layer']}, {o['pooling']} pooling, "
                f"{o['n_pairs']} held-out pairs; monotonic minus baseline {o['monotonic_minus_baseline']:+.3f}):"] + \
        text_table(rows, {"model": ("model", None), "preserved": ("preserved", ".3f"), "ci": ("95% CI", None),
                          "method": ("method", None)}) + \
        [f"The {order_method(o)}; docs/method.md#order-preservation."]


def pd_isna(x) -> bool:
    return x is None or x != x


def _wrap(line: str) -> list[str]:
    """A prose line longer than WIDTH, wrapped at spaces (tables are built to fit)."""
    import textwrap

    return textwrap.wrap(line, WIDTH, subsequent_indent="  ") if len(line) > WIDTH else [line]
