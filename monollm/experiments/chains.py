"""Which of several runs count as separate samples: a run and its resumed copies are one
computation (`one_per_computation`); where a seed was run again, the latest run of each seed, or
the one the reader is looking at (`latest_per_seed`, for the notebook)."""
from __future__ import annotations


def first_run(run, flow: str = "MonoFlow", known: dict | None = None) -> str:
    """The id of the run at the start of `run`'s resume chain: follows each run's origin
    (results.origin_run_id) back to a run that was started afresh. `known`: run id -> run, to
    look in before the metadata store; a chain that leaves the store ends where it leaves."""
    from metaflow import Run
    from metaflow.exception import MetaflowNotFound

    from monollm.results import client

    known, seen = known or {}, [str(run.id)]
    while (origin := client.origin_run_id(run)) and origin not in seen:
        seen.append(origin)
        try:
            run = known.get(origin) or Run(f"{flow}/{origin}", _namespace_check=False)
        except MetaflowNotFound:
            break
    return seen[-1]


def one_per_computation(runs: list, flow: str = "MonoFlow") -> tuple[list, list[str]]:
    """(runs, notes): one run for each original run among `runs` (a run and its resumed copies
    count once), and a note per run left out.

    A resume clones every step that had finished, so a resumed copy of a successful run repeats
    its numbers exactly, and resumes of one failed run share everything before the failure: none
    is another sample of the seed. Kept: the original run when it is among `runs` and finished,
    else the first of its descendants that finished."""
    known = {str(r.id): r for r in runs}
    groups = {}
    for r in runs:
        groups.setdefault(first_run(r, flow, known), []).append(r)
    kept, notes = [], []
    for root, members in groups.items():
        finished = [r for r in members if getattr(r.data, "findings", None) is not None]
        keep = next((r for r in finished if str(r.id) == root), (finished or members)[0])
        kept.append(keep)
        how = (f"is a resumed copy of run {keep.pathspec}" if str(keep.id) == root else
               f"and run {keep.pathspec} are both resumed from run {flow}/{root}")
        notes += [f"run {r.pathspec} {how}: one computation, counted once (kept {keep.pathspec})"
                  for r in members if r is not keep]
    order = {id(r): i for i, r in enumerate(runs)}
    return sorted(kept, key=lambda r: order[id(r)]), notes


def latest_per_seed(runs: list, keep=None) -> tuple[list, list[str]]:
    """(runs, notes): of runs that share a seed (runs oldest first, as compare.select_runs gives
    them, all of one configuration up to the seed), the latest, or `keep` where it is among them;
    a note per seed naming the run taken and the ones left out."""
    by_seed: dict = {}
    for r in runs:
        by_seed.setdefault(r.data.resolved_config.get("seed"), []).append(r)
    kept, notes = [], []
    for seed, members in by_seed.items():
        mine = next((r for r in members if keep is not None and r.pathspec == keep.pathspec), members[-1])
        kept.append(mine)
        if len(members) > 1:
            why = "the run shown above" if mine is not members[-1] else "the latest"
            notes.append(f"seed {seed}: {len(members)} runs; took {mine.pathspec} ({why}), left out "
                         + ", ".join(r.pathspec for r in members if r is not mine))
    return kept, notes
