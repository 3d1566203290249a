"""Downstream tasks through lm-evaluation-harness, for all four models.

The tasks are lm-eval tasks run on the flow's own models (an in-memory `HFLM`), in one foreach
branch beside the attacks (`branches`). A profile names them in `[eval.downstream]`:

* the built-in corpus tasks, generated here at run time from the built-in corpus
  (monollm.data.corpus), deterministically (the same `seed` gives the same items), and written in
  lm-eval's task format (YAML) with local jsonl data (`write_corpus_tasks`):
  `corpus_cloze`, a last-word cloze in the style of LAMBADA (the passage's next word is a name
  that the passage itself mentions earlier), and `corpus_choice`, a 4-way multiple choice over
  the corpus's world facts (a fact sentence without its last word; the true word and three
  other values of the same slot);
* lm-eval's own tasks that read their data from the hub (`HUB_TASKS`), for the paper profiles;
* the path of any lm-eval task YAML file (its data where the YAML says).

`python -m monollm.evaluation.downstream DIR` writes the corpus tasks to DIR, e.g. to run them with
lm-eval's own command line. lm_eval is imported only where a task is run (~1-2 s).

Results: `table` (task x model x metric: value, stderr, n, chance) and `items` (task x model
x item: the per-item value of every mean-aggregated metric), from which `cost` computes the
constraint's cost per task with a paired bootstrap over items.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import tempfile
from collections import Counter

import numpy as np
import pandas as pd

from monollm.data import corpus

CORPUS_TASKS = ("corpus_cloze", "corpus_choice")
"""Tasks generated from the built-in corpus (`write_corpus_tasks`)."""
HUB_TASKS = {"lambada_openai": "lambada", "hellaswag": "hellaswag", "piqa": "piqa", "arc_easy": "arc",
             "winogrande": "winogrande"}
"""lm-eval tasks whose data comes from the hub (Pythia's paper reports these) -> the folder of
lm_eval/tasks that defines each: only those folders are indexed (all of lm-eval's take ~30 s)."""
BRANCH = "downstream"
"""The foreach branch that runs the tasks, beside one branch per attack."""
TASK_SEED = 20240917
"""Seed of the corpus tasks' items: fixed, so that every run (whatever its own seed) is scored on
the same items, and apart from the training corpus' seed (corpus.DEFAULT_SEED)."""
CLOZE_DOCS = 1000
"""Documents generated for the cloze: one item each (where the document has a candidate)."""
CLOZE_WORDS = 20
"""Longest cloze passage, in words: short enough for a 64-position model to see it whole."""
METRIC = "acc"
"""The metric `cost` compares (every task here reports it)."""
COLUMNS = ["task", "model", "metric", "value", "stderr", "n", "chance"]


# ---- the corpus tasks -------------------------------------------------------------------

def _names(words: list[str]) -> list[str]:
    """Each word without punctuation where it is one of the corpus's proper names, else ""."""
    known = corpus.names()
    return [w.strip('.,?"') if w.strip('.,?"') in known else "" for w in words]


def cloze_items(seed: int = TASK_SEED, n_docs: int = CLOZE_DOCS, words: int = CLOZE_WORDS) -> list[dict]:
    """LAMBADA-style items {"context", "target"} from `n_docs` documents generated with `seed`.

    A target is a proper name (town, river, person, day) inside a sentence (never its first word)
    that the passage names earlier, so that the passage, not a fixed phrase, decides it: one
    target per document, drawn with `seed` among its candidates. The passage starts at the first
    sentence start within the `words` words before the target that keeps the name's last
    mention (else `words` words before it, inside a long sentence).
    """
    rng, out = random.Random(seed), []
    for doc in corpus.generate(n_docs, seed):
        w = doc.split()
        names = _names(w)
        candidates = [i for i in range(1, len(w)) if names[i] and not w[i - 1].endswith(".")
                      and names[i] in names[max(0, i - words):i]]
        if not candidates:
            continue
        i = rng.choice(candidates)
        lo = max(0, i - words)
        last = max(j for j in range(lo, i) if names[j] == names[i])  # the passage keeps this mention
        start = next((j for j in range(lo, last + 1) if j == 0 or w[j - 1].endswith(".")), lo)
        out.append({"context": " ".join(w[start:i]), "target": names[i]})
    return out


def choice_items(seed: int = TASK_SEED, n_choices: int = 4) -> list[dict]:
    """Multiple-choice items {"query", "choices", "label", "slot"}: every world fact
    (corpus.world_facts), its answer among `n_choices` - 1 other values of the same slot, in
    an order drawn with `seed`; items shuffled with `seed`. Chance is 1 / n_choices."""
    rng, out = random.Random(seed), []
    for fact in corpus.world_facts():
        others = sorted(set(corpus.FACT_SLOTS[fact["slot"]]) - {fact["answer"]})
        choices = rng.sample(others, n_choices - 1) + [fact["answer"]]
        rng.shuffle(choices)
        out.append({"query": fact["prefix"], "choices": choices, "label": choices.index(fact["answer"]),
                    "slot": fact["slot"]})
    rng.shuffle(out)
    return out


def _task_yaml(name: str, data_file: str, cache: str) -> dict:
    """lm-eval task config of corpus task `name` reading `data_file` (jsonl)."""
    common = {"task": name, "dataset_path": "json",
              "dataset_kwargs": {"data_files": {"test": data_file}, "cache_dir": cache},
              "test_split": "test", "metadata": {"version": 1.0}}
    if name == "corpus_cloze":  # as lm-eval's lambada_openai: greedy-match accuracy and perplexity
        return {**common, "output_type": "loglikelihood", "doc_to_text": "{{context}}",
                "doc_to_target": "{{' ' + target}}",
                "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                                {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    return {**common, "output_type": "multiple_choice", "doc_to_text": "{{query}}", "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{label}}",
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                            for m in ("acc", "acc_norm")]}


def write_corpus_tasks(folder: str, seed: int = TASK_SEED) -> str:
    """Both corpus tasks as lm-eval task YAML files + jsonl data in `folder` (lm-eval's
    `--include_path`); the `datasets` cache of their data stays inside it. Returns `folder`."""
    import yaml

    folder = os.path.abspath(folder)
    os.makedirs(folder, exist_ok=True)
    for name, items in (("corpus_cloze", cloze_items(seed)), ("corpus_choice", choice_items(seed))):
        data = os.path.join(folder, f"{name}.jsonl")
        with open(data, "w") as f:
            f.writelines(json.dumps(item) + "\n" for item in items)
        with open(os.path.join(folder, f"{name}.yaml"), "w") as f:
            yaml.safe_dump(_task_yaml(name, data, os.path.join(folder, "cache")), f, sort_keys=False)
    return folder


# ---- validation -------------------------------------------------------------------------

def _is_file_entry(entry: str) -> bool:
    return entry.endswith((".yaml", ".yml"))


def yaml_task_name(path: str) -> str:
    """The `task:` name of an lm-eval task YAML file (lm-eval's own tags, e.g. `!function`, are
    read as nothing: only the name is needed here)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    with open(path) as f:
        doc = yaml.load(f, Loader=Loader)
    name = doc.get("task") if isinstance(doc, dict) else None
    if not isinstance(name, str) or not name:
        raise ValueError(f"{path} has no 'task: NAME' entry")
    return name


def check(d, key: str = "eval.downstream"):
    """Raise ConfigError naming the key for an unknown task name, a task file that does not exist
    (or names no task), a task listed twice or a negative limit. d: config.DownstreamConfig."""
    from monollm.errors import ConfigError

    allowed = ", ".join(CORPUS_TASKS + tuple(HUB_TASKS)) + ", or the path of an lm-eval task YAML file"
    for i, entry in enumerate(d.tasks):
        where = f"'{key}.tasks[{i}]'"
        if _is_file_entry(entry):
            if not os.path.isfile(entry):
                raise ConfigError(f"{where} is {entry!r}: no such task file (allowed: {allowed})")
            try:
                yaml_task_name(entry)
            except Exception as err:  # any YAML or shape error: the file cannot name a task
                raise ConfigError(f"{where} is {entry!r}, which is not an lm-eval task file: {err}") from None
        elif entry not in CORPUS_TASKS + tuple(HUB_TASKS):
            raise ConfigError(f"{where} is {entry!r}; allowed: {allowed}")
    if len(set(d.tasks)) != len(d.tasks):
        raise ConfigError(f"'{key}.tasks' lists a task twice: {list(d.tasks)}")
    if d.limit < 0:
        raise ConfigError(f"'{key}.limit' must be >= 0 (0: every item)")


# ---- running ----------------------------------------------------------------------------

def resolve(tasks, folder: str) -> tuple[list[str], list[str]]:
    """(lm-eval task names, folders to include) for the profile's `tasks`; the corpus tasks are
    written to `folder` when listed."""
    names, include = [], []
    if any(t in CORPUS_TASKS for t in tasks):
        include.append(write_corpus_tasks(folder))
    for entry in tasks:
        if _is_file_entry(entry):
            names.append(yaml_task_name(entry))
            include.append(os.path.dirname(os.path.abspath(entry)))
        else:
            names.append(entry)
        if entry in HUB_TASKS:
            import lm_eval.tasks

            include.append(os.path.join(os.path.dirname(lm_eval.tasks.__file__), HUB_TASKS[entry]))
    return names, sorted(set(include))


class HubUnreachable(RuntimeError):
    """A hub task's data could not be read: offline, and not in the local `datasets` cache."""


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_tasks(names: list[str], include: list[str], hub: bool) -> tuple:
    """(lm-eval TaskManager, [Task]) for `names`, their data read now. A hub task whose data
    this offline run cannot read fails with one line (HubUnreachable), not a datasets traceback."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include, include_defaults=False)
    try:
        return manager, list(manager.load(names)["tasks"].values())
    except Exception as err:
        if not (hub and _offline()):
            raise
        listed = [n for n in names if n in HUB_TASKS]
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise HubUnreachable(
            f"downstream tasks {', '.join(listed)} (eval.downstream.tasks) read their data from the hub, but "
            f"this run is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and the datasets cache has no copy: "
            f"{first}. Run where the hub is reachable, or fill HF_DATASETS_CACHE first") from None


def run_tasks(model, tokenizer, manager, tasks: list, limit: int, batch_size: int, seed: int, n_boot: int) -> dict:
    """lm-eval's results (per-item samples kept) for one in-memory model (eval mode, on its
    device) on `tasks` (from `load_tasks`): the first `limit` items of each task (0: all)."""
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):  # no per-request progress bars in the step's log (its own lines say what runs)
        def loglikelihood(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood(requests, disable_tqdm=True)

    lm = QuietHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    return evaluator.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit or None,
                                     bootstrap_iters=n_boot, log_samples=True, random_seed=seed,
                                     numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)


def evaluate(cfg, model_dirs: dict, device: str, folder: str, log=print) -> dict:
    """Every task of `cfg.eval.downstream` on every model in `model_dirs` (name -> saved model
    directory), loaded as monollm.model.foundation does, in fp32 on `device`; the corpus tasks are written
    to `folder`. Returns {"table": `table` rows, "items": `items` rows} (DataFrames)."""
    from monollm.model import foundation

    d = cfg.eval.downstream
    names, include = resolve(d.tasks, folder)
    with quiet():
        manager, tasks = load_tasks(names, include, hub=any(n in HUB_TASKS for n in d.tasks))
    tables, items = [], []
    for model_name, path in model_dirs.items():
        log(f"downstream tasks {', '.join(names)} on {model_name}")
        model, tokenizer = foundation.load(path, device, cfg.model.attn_implementation, what=model_name)
        with quiet():
            result = run_tasks(model, tokenizer, manager, tasks, d.limit, cfg.eval.batch_size, cfg.seed,
                               cfg.eval.bootstrap)
        tables.append(table(result, model_name))
        items.append(item_table(result, model_name))
        del model
    return {"table": pd.concat(tables, ignore_index=True), "items": pd.concat(items, ignore_index=True)}


ALWAYS_SHOWN = ("error", "traceback", "exception", "critical")
"""Captured lines naming one of these (any case) are shown even when the block succeeds."""


@contextlib.contextmanager
def quiet():
    """lm-eval's and datasets' own output inside the block (progress bars, warnings about an
    in-memory model, the `git describe` probe of lm-eval's environment report, which writes
    "fatal: not a git repository" outside a repository) is captured at the file-descriptor level,
    so child processes are caught too, instead of filling the step's log. Nothing is hidden when
    it matters: if the block raises, everything captured is written to stderr before the error
    goes on; otherwise the lines that name an error are."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1), os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
            sink.seek(0)
            lines = sink.read().decode(errors="replace").replace("\r", "\n").splitlines()
            shown = lines if failed else [x for x in lines if any(w in x.lower() for w in ALWAYS_SHOWN)]
            if shown:
                print("\n".join(shown), file=sys.stderr, flush=True)


def chance(samples: list[dict], metric: str) -> float:
    """What `metric` scores without reading the item, from lm-eval's samples of one task:
    multiple choice, the mean of 1 / number of choices; a cloze's accuracy, the share of its
    most common target (the best answer that ignores the passage); NaN otherwise (perplexity)."""
    if metric not in ("acc", "acc_norm") or not samples:
        return float("nan")
    if len(samples[0]["arguments"]) > 1:
        return float(np.mean([1 / len(s["arguments"]) for s in samples]))
    return Counter(str(s["target"]) for s in samples).most_common(1)[0][1] / len(samples)


def table(result: dict, model: str) -> pd.DataFrame:
    """One row per task x metric of lm-eval's `result` for `model`: value, stderr (lm-eval's:
    the standard error of a mean, a bootstrap for perplexity), items scored and `chance`."""
    rows = []
    for task, res in result["results"].items():
        n = result["n-samples"][task]["effective"]
        for key, value in res.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr"):
                continue
            stderr = res.get(f"{metric}_stderr,{filt}")
            rows.append({"task": task, "model": model, "metric": metric, "value": float(value),
                         "stderr": float(stderr) if isinstance(stderr, (int, float)) else float("nan"),
                         "n": int(n), "chance": chance(result["samples"][task], metric)})
    return pd.DataFrame(rows, columns=COLUMNS)


def item_table(result: dict, model: str) -> pd.DataFrame:
    """One row per task x item x mean-aggregated metric (acc, acc_norm) of `model`: the item's
    value, for paired comparisons between models (`cost`)."""
    rows = [{"task": task, "model": model, "item": s["doc_id"], "metric": m, "value": float(s[m])}
            for task, samples in result["samples"].items() for s in samples
            for m in s["metrics"] if m in ("acc", "acc_norm")]
    return pd.DataFrame(rows, columns=["task", "model", "item", "metric", "value"])


def empty() -> dict:
    """The tables of a run that lists no downstream task."""
    return {"table": pd.DataFrame(columns=COLUMNS),
            "items": pd.DataFrame(columns=["task", "model", "item", "metric", "value"])}


def cost(items: pd.DataFrame, n_boot: int, seed: int, metric: str = METRIC) -> dict:
    """The constraint's cost per task: `metric` of monotonic minus baseline on the same items
    (negative: the constraint costs accuracy), with a paired bootstrap 95% CI over items.
    task -> {"metric", "baseline", "monotonic", "diff", "ci_low", "ci_high", "items"}."""
    from monollm import stats

    out = {}
    for task, g in items[items.metric == metric].groupby("task", sort=False):
        wide = g.pivot(index="item", columns="model", values="value")
        if not {"baseline", "monotonic"} <= set(wide.columns):
            continue
        diff = (wide["monotonic"] - wide["baseline"]).to_numpy()
        lo, hi = stats.bootstrap_ci(diff, n_boot, seed)
        out[task] = {"metric": metric, "baseline": float(wide["baseline"].mean()),
                     "monotonic": float(wide["monotonic"].mean()), "diff": float(diff.mean()),
                     "ci_low": lo, "ci_high": hi, "items": len(diff)}
    return out


def main(argv=None) -> int:
    """`python -m monollm.evaluation.downstream DIR`: write the corpus tasks to DIR."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.split("\n\n")[0] + "\n\nusage: python -m monollm.evaluation.downstream DIR", file=sys.stderr)
        return 2
    folder = write_corpus_tasks(argv[0])
    print(f"wrote {', '.join(CORPUS_TASKS)} to {folder} (lm_eval --include_path {folder} --tasks ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
