"""`python -m monollm.browse [RUN_ID] [--out DIR]` (`make cards RUN=ID`): every card of one run,
saved into one folder with an index page that opens on the experiment card and names each card
by its step and its attack.

Metaflow's `card server` lists a run's cards from the oldest step to the newest, labels each only
`step/task`, and opens on the first (setup's model card). This page is the run's cards as this
project names them:

    cards-RUN_ID/index.html         a menu (step, attack, task) and the chosen card below it
    cards-RUN_ID/experiment.html    join_attacks' experiment card: the answer, first in the menu
    cards-RUN_ID/attack-uat.html    each attack branch's own card (also downstream, order)
    cards-RUN_ID/training-baseline.html, training-monotonic.html

The folder needs no server: open index.html in a browser, or copy the folder off a cluster.
A run that has not finished yet gives the cards its finished steps made, and says which are missing.
"""
from __future__ import annotations

import argparse
import html
import os
import sys

from monollm.branches import needs_four_models

FLOW = "MonoFlow"

TRAINING_STEPS = {"train_baseline": "baseline", "train_monotonic": "monotonic"}
"""The training steps and the arm each trains; their cards have the id `training`."""


def entries(run_id: str, steps: dict, branches: dict) -> list[dict]:
    """The cards of run `run_id` in the menu's order, each {label, file, step, task, card_id}:
    the experiment card, each branch of the attack foreach (`branches`: branch name -> task id, in
    the foreach's order), then the training cards. `steps`: step name -> its task id, for the steps
    that have one (a step not there yet has no entry)."""
    found = []
    if "join_attacks" in steps:
        found.append(dict(label=f"experiment card: the answer (join_attacks/{steps['join_attacks']})",
                          file="experiment.html", step="join_attacks", task=steps["join_attacks"], card_id="experiment"))
    for branch, task in branches.items():
        kind = "" if needs_four_models(branch) else "attack "
        found.append(dict(label=f"{kind}{branch} (attack/{task})", file=f"attack-{branch}.html", step="attack",
                          task=task, card_id="attack"))
    for step, arm in TRAINING_STEPS.items():
        if step in steps:
            found.append(dict(label=f"training: {arm} ({step}/{steps[step]})", file=f"training-{arm}.html",
                              step=step, task=steps[step], card_id="training"))
    return found


def index_html(run_id: str, cards: list[dict], missing: list[str]) -> str:
    """The folder's index page: a menu of `cards` (entries whose file was written) opening on the
    first, the chosen card in a frame below it, and a line naming what is `missing`."""
    options = "\n".join(f'<option value="{html.escape(c["file"])}">{html.escape(c["label"])}</option>'
                        for c in cards)
    links = " · ".join(f'<a href="{html.escape(c["file"])}">{html.escape(c["label"])}</a>' for c in cards)
    note = f'<p class="note">Not in this folder: {html.escape("; ".join(missing))}.</p>' if missing else ""
    first = html.escape(cards[0]["file"]) if cards else "about:blank"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MonoFlow run {html.escape(run_id)}: cards</title>
<style>
body {{ margin: 0; font-family: sans-serif; display: flex; flex-direction: column; height: 100vh; }}
header {{ padding: 8px 12px; border-bottom: 1px solid #ccc; display: flex; gap: 12px; align-items: center; }}
select {{ font-size: 15px; padding: 3px; }}
.note {{ margin: 0; color: #a33; }}
iframe {{ flex: 1; border: 0; width: 100%; }}
nav {{ padding: 4px 12px; font-size: 12px; }}
</style></head>
<body>
<header><strong>MonoFlow run {html.escape(run_id)}</strong>
<label>card <select id="card" onchange="document.getElementById('shown').src = this.value">
{options}
</select></label>{note}</header>
<iframe id="shown" src="{first}" title="the chosen card"></iframe>
<nav>Each card as its own page: {links}</nav>
</body></html>
"""


def save(run, out: str, log=print) -> str:
    """Write every card of `run` (a metaflow Run) and the index page into the folder `out`
    (created); the index page's path. Cards not made yet are named on the page and in `log`."""
    from metaflow.cards import get_cards

    from monollm.results.client import branch_tasks

    steps = {}
    for step in run:
        task = next((t for t in step if t.successful), None)
        if task is not None:
            steps[step.id] = task.id
    listed = entries(run.id, steps, branch_tasks(run.pathspec))  # {} before the attack step exists
    os.makedirs(out, exist_ok=True)
    written, missing = [], []
    for card in listed:
        found = get_cards(f"{run.pathspec}/{card['step']}/{card['task']}", id=card["card_id"])
        if len(found) == 0:
            missing.append(card["label"])
            continue
        with open(os.path.join(out, card["file"]), "w", encoding="utf-8") as f:
            f.write(found[0].get())
        written.append(card)
    if "join_attacks" not in steps:
        missing.insert(0, "the experiment card (join_attacks has not finished)")
    index = os.path.join(out, "index.html")
    with open(index, "w", encoding="utf-8") as f:
        f.write(index_html(run.id, written, missing))
    for what in missing:
        log(f"cards: not saved: {what}")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monollm.browse", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", help="a run id (default: your latest run, user:$USERNAME)")
    parser.add_argument("--out", help="the folder to write (default: cards-RUN_ID)")
    args = parser.parse_args(argv)

    from metaflow.exception import MetaflowNotFound

    from monollm import cli
    from monollm.results.client import get_run

    root = cli.datastore_root()
    problem = cli.no_runs_message("cards", FLOW, root, os.getcwd(), os.environ.get("METAFLOW_DATASTORE_SYSROOT_LOCAL"))
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.run is None:
        run = cli.latest_own_run(FLOW)
        if run is None:
            print(f"cards: {cli.user_namespace()} has no {FLOW} run; name one: make cards RUN=RUN_ID", file=sys.stderr)
            return 2
    else:
        try:
            run = get_run(args.run, flow=FLOW)
        except MetaflowNotFound:
            print(f"cards: there is no {FLOW} run with id {args.run!r} in {root}", file=sys.stderr)
            return 2
    out = args.out or f"cards-{run.id}"
    index = save(run, out, log=lambda line: print(line, file=sys.stderr))
    print(f"cards of run {run.id}: open {index} in a browser (it opens on the experiment card)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
