"""Speed and strength of the gradient-guided attacks on the default profile's reference model.

    python benchmarks/attacks.py                        # config/tiny.toml, this CPU
    python benchmarks/attacks.py --model-dir DIR        # a saved model (models.save format)

Prints up to six lines (`--parts`), all measured in this one run:

* `scoring/forward throughput ratio`: candidate sequences per second of the attack's
  scorer (`gradients.score_triggers`: builds trigger x example rows, forward, NLL of the
  continuation) over sequences per second of plain batched forward passes
  (`model(input_ids=...)`) on the same rows and batch size. Rounds alternate the two so
  that load from other processes hits both alike; each side keeps its best round.
* `uat time-to-match vs pool search`: the earlier pipeline's search (a fixed pool of 100
  random allowed tokens; per sweep and position, 20 random candidates from it, each decoded,
  re-tokenized with every optimization text and scored by its own forward passes; the best
  accepted if it raises the loss) runs for `--sweeps` sweeps; then `uat` (the profile's
  [attack.uat] settings, restarts as needed) runs until its objective reaches the pool
  search's final one. Both search the profile's `attack_opt` examples. Repeated for
  `--seeds` seeds (the pool search's dNLL varies a lot with its random pool);
  X = total pool-search wall time / total uat wall time.
* `uat dNLL at equal candidate budget: A vs B`: `uat` stopped after as many candidate
  evaluations as the pool search made (A) against the pool search (B); dNLL in nats per
  continuation token on the optimization examples, mean over the seeds.

* `hotflip dNLL at equal forward budget: gradient A, random B, exact C`: `hotflip.search` on
  the profile's `test` examples with the profile's [attack.hotflip] settings, first with
  "exact" ranking (every allowed token at the last `exact_positions` context positions), then
  with "gradient" and "random" ranking, each with `candidates` set so that its forward passes
  match the exact run's (`hotflip_equal_budget`). dNLL: mean over the examples, in nats per
  continuation token; each run's forward passes and the gradient guidance Spearman of the
  model (`guidance.flip_agreement`) go to stderr.
* `uat dNLL at equal forward budget: gradient A, random B, exact C`: `uat.search` on the
  profile's `attack_opt` examples, restarting as the budget allows, with each ranking at the
  same forward-pass budget (`uat_equal_budget`; `--uat-budget` candidates, default two
  positions' worth of exact scoring). dNLL: the best trigger's, nats per continuation token.
* `gcg dNLL at equal candidate budget vs uat: A vs B`: `gcg` (the profile's [attack.gcg]) stopped
  after as many candidate evaluations as `uat` made with the profile's settings (B), mean over
  `--seeds` seeds (`gcg_vs_uat`).
* `random_search vs uat at equal forward passes: A vs B`: `random_search` (the profile's
  [attack.random_search]) and `uat` (its [attack.uat]), each restarting until the profile's
  attack.budget forward passes are spent, from the same seeded random starts, as the flow runs
  them; best attack_opt dNLL in nats per continuation token, mean over `--seeds` seeds
  (`random_search_vs_uat`).

Progress goes to stderr. The reference model is built once (about 30 s: tokenizer,
pretraining) with `pipeline.setup` and cached under the temp dir, keyed by the profile and the code that
makes the model (benchmarks/reference_cache.py).
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEFAULT_PROFILE = os.path.join(ROOT, "config", "tiny.toml")


def note(msg: str):
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_PROFILE, help="TOML profile (default: config/tiny.toml)")
    p.add_argument("--model-dir", default="", help="a saved model to attack instead of the profile's reference")
    p.add_argument("--sweeps", type=int, default=4, help="pool-search sweeps (its fixed budget)")
    p.add_argument("--rounds", type=int, default=5, help="alternating throughput rounds")
    p.add_argument("--seeds", type=int, default=5, help="pool search / uat comparisons, one per seed")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--parts", default="pool,hotflip,uat,gcg,random_search",
                   help="comma-separated: pool (throughput and pool-search lines), hotflip, uat, gcg, random_search")
    p.add_argument("--uat-budget", type=int, default=0,
                   help="candidate evaluations of the uat rankings line (default: 2 x the allowed tokens)")
    return p.parse_args(argv)


def reference(cfg, profile_path: str, model_dir: str):
    """(model, tokenizer, examples) of the profile's reference model, built once and cached."""
    from monollm import pipeline
    from monollm.model import foundation

    if not model_dir:
        from reference_cache import folder  # benchmarks/, this script's folder

        model_dir = folder("monollm-bench-reference", profile_path)
        if not os.path.exists(os.path.join(model_dir, "examples.pkl")):
            note(f"building the reference model of {profile_path} in {model_dir} (once)")
            prep = pipeline.setup(cfg, model_dir)
            with open(os.path.join(model_dir, "examples.pkl"), "wb") as f:
                pickle.dump(prep.examples, f)
    with open(os.path.join(model_dir, "examples.pkl"), "rb") as f:
        examples = pickle.load(f)
    model, tokenizer = foundation.load(model_dir, foundation.pick_device(cfg.device))
    return model, tokenizer, examples


def throughput_ratio(model, opt, allowed, L: int, n_cont: int, batch_size: int, rounds: int, seed: int) -> float:
    """Scorer sequences/s over plain forward sequences/s on the same (M * B, L + T) rows."""
    import torch

    from monollm.attacks.common import prepend
    from monollm.attacks.gradients import score_triggers

    g = torch.Generator().manual_seed(seed)
    pool = allowed.nonzero().flatten()
    triggers = pool[torch.randint(len(pool), (max(1, 4096 // len(opt)), L), generator=g)].to(opt.device)
    rows = torch.cat([prepend(t, opt) for t in triggers])
    best = {"scorer": float("inf"), "plain": float("inf")}
    with torch.no_grad():
        for _ in range(rounds):
            t = time.perf_counter()
            score_triggers(model, triggers, opt, n_cont, batch_size)
            best["scorer"] = min(best["scorer"], time.perf_counter() - t)
            t = time.perf_counter()
            for chunk in rows.split(batch_size):
                model(input_ids=chunk).logits
            best["plain"] = min(best["plain"], time.perf_counter() - t)
    note(f"throughput: scorer {len(rows) / best['scorer']:.0f} seq/s, plain forward {len(rows) / best['plain']:.0f} "
         f"seq/s on {len(rows)} rows of {rows.shape[1]} tokens")
    return best["plain"] / best["scorer"]


def pool_search(model, tokenizer, opt_np, allowed, L: int, n_cont: int, batch_size: int, sweeps: int, rng):
    """The earlier pipeline's trigger search. Returns (objective, candidate evals, wall seconds, trigger).

    Each candidate is decoded, re-tokenized with every text and scored by plain forward passes
    of its own (full logits, as `model(input_ids)` gives them); the objective is the attack's:
    mean NLL of the continuation tokens only.
    """
    import torch

    texts = tokenizer.batch_decode(opt_np.tolist())

    def score(trigger):  # decode, re-tokenize with every text, forward passes of its own
        prefix = tokenizer.decode(trigger)
        enc = tokenizer([prefix + t for t in texts], add_special_tokens=False)["input_ids"]
        if any(len(e) != L + opt_np.shape[1] or e[-n_cont:] != list(row[-n_cont:]) for e, row in zip(enc, opt_np)):
            return None  # merges with the text: the scored tokens would move
        ids, total = torch.tensor(enc, device=model.device), 0.0
        with torch.no_grad():
            for chunk in ids.split(batch_size):
                logits = model(input_ids=chunk).logits[:, -n_cont - 1:-1]
                total += float(torch.nn.functional.cross_entropy(
                    logits.transpose(1, 2), chunk[:, -n_cont:], reduction="none").mean(dim=1).sum())
        return total / len(ids)

    start = time.perf_counter()
    pool = rng.choice(allowed.nonzero().flatten().numpy(), size=100, replace=False)
    trigger, objective, evals = list(rng.choice(pool, size=L)), None, 0
    while objective is None:
        objective, evals = score(trigger), evals + 1
        if objective is None:
            trigger = list(rng.choice(pool, size=L))
    for _ in range(sweeps):
        for pos in range(L):
            best = (objective, trigger)
            for token in rng.choice(pool, size=20, replace=False):
                cand = trigger[:pos] + [int(token)] + trigger[pos + 1:]
                value, evals = score(cand), evals + 1
                if value is not None and value > best[0]:
                    best = (value, cand)
            objective, trigger = best
    return objective, evals, time.perf_counter() - start, [int(t) for t in trigger]


def compare(model, tokenizer, examples, allowed, params, n_cont: int, bs: int, sweeps: int, seed: int,
            clean: float) -> dict:
    """Pool search, then uat to match it, then uat at its candidate budget, all from one seed;
    both draw from `allowed` tokens."""
    import dataclasses

    import numpy as np
    import torch

    from monollm.attacks import uat

    opt = torch.as_tensor(examples["attack_opt"], device=model.device)
    pool_obj, pool_evals, pool_s, trigger = pool_search(model, tokenizer, examples["attack_opt"], allowed,
                                                        params.trigger_len, n_cont, bs, sweeps,
                                                        np.random.default_rng(seed))
    unlimited = dataclasses.replace(params, steps=10_000, restarts=10_000)
    start = time.perf_counter()
    found = uat.search(model, tokenizer, opt, allowed, unlimited, np.random.default_rng(seed), n_cont, bs,
                       target=pool_obj, max_evals=50 * pool_evals)  # a guard, not a budget
    uat_s = time.perf_counter() - start
    matched = max(s.objective for s in found)
    equal = uat.search(model, tokenizer, opt, allowed, unlimited, np.random.default_rng(seed), n_cont, bs,
                       max_evals=pool_evals)
    out = dict(pool_dnll=pool_obj - clean, pool_evals=pool_evals, pool_s=pool_s, uat_s=uat_s,
               matched=matched >= pool_obj, uat_evals=sum(s.candidate_evals for s in found),
               equal_dnll=max(s.objective for s in equal) - clean)
    note(f"seed {seed}: pool search dNLL {out['pool_dnll']:+.4f} after {pool_evals} candidates in {pool_s:.1f} s "
         f"({tokenizer.decode(trigger)!r}); uat reached {matched - clean:+.4f} after {out['uat_evals']} candidates "
         f"in {uat_s:.1f} s; uat at {pool_evals} candidates: {out['equal_dnll']:+.4f}")
    return out


def hotflip_equal_budget(model, tokenizer, examples, a, hot_params, seed: int) -> dict:
    """Mean dNLL of hotflip's three rankings at (close to) the same forward-pass budget.

    The "exact" run fixes the budget F (its forward passes: clean scoring of the N examples plus
    every candidate; no gradient). "gradient" spends per active example and round one gradient
    pass and `candidates` candidates, "random" `candidates` candidates, so each gets
    candidates = (F - N) / R - g, where R is the number of (example, round) pairs searched and
    g = 1 for "gradient" (0 for "random"). R is not known before a run (examples stop when no
    candidate helps), so the first run takes the most there can be, N * max_flips; where examples
    stopped early (its passes fall short of F by more than one candidate per (example, round)),
    one more run takes the first run's R, and of the two the one whose forward passes are
    closer to F is reported. Returns ranking -> dict(dnll, forward_passes, candidates, rounds).
    """
    import dataclasses

    import numpy as np
    import torch

    from monollm.attacks import hotflip
    from monollm.attacks.common import allowed_tokens
    from monollm.attacks.guidance import flip_agreement

    allowed = allowed_tokens(tokenizer, model.get_input_embeddings().weight.shape[0], a.tokens[0])
    test, n_cont, bs = torch.as_tensor(examples["test"], device=model.device), a.continuation_len, a.batch_size
    context_len, n = test.shape[1] - n_cont, len(test)

    def run(ranking, candidates=hot_params.candidates):
        params = dataclasses.replace(hot_params, ranking=ranking, candidates=max(1, int(round(candidates))))
        start = time.perf_counter()
        found = hotflip.search(model, tokenizer, test, allowed, context_len, n_cont, params, bs,
                               rng=np.random.default_rng([seed, 4]))
        out = dict(dnll=float((found.loss - found.history[0]).mean()), forward_passes=found.forward_passes,
                   candidates=params.candidates, rounds=_example_rounds(found))
        size = "" if ranking == "exact" else f" (candidates {params.candidates})"
        note(f"hotflip {ranking}{size}: dNLL {out['dnll']:+.4f}, {out['forward_passes']} forward passes, "
             f"{out['rounds']} example-rounds, {time.perf_counter() - start:.1f} s")
        return out

    if hot_params.guidance_sample:
        agree = flip_agreement(model, test, context_len, n_cont, allowed, hot_params.guidance_sample,
                               np.random.default_rng([seed, 3]), bs)
        note(f"gradient guidance Spearman {agree.spearman:.3f} over {hot_params.guidance_sample} x {n} swaps")
    out = {"exact": run("exact")}
    budget = out["exact"]["forward_passes"]
    for ranking, g in (("gradient", 1), ("random", 0)):
        out[ranking] = run(ranking, (budget - n) / (n * hot_params.max_flips) - g)
        if abs(out[ranking]["forward_passes"] - budget) > out[ranking]["rounds"]:
            second = run(ranking, (budget - n) / out[ranking]["rounds"] - g)
            out[ranking] = min(out[ranking], second, key=lambda r: abs(r["forward_passes"] - budget))
    return out


def uat_equal_budget(model, tokenizer, opt, allowed, params, a, clean: float, budget: int, seed: int) -> dict:
    """Best attack_opt dNLL of uat's three rankings at (close to) the same forward-pass budget.

    Every ranking searches from the same seeded random starts, restarting as often as the
    budget allows (the profile's steps per restart, top_k and widen; "exact" restarts when a
    round of positions brings no gain). "exact" and "random" spend one forward
    pass per optimization example per candidate and no gradient, so the same candidate budget
    (`budget`, default 2 x the allowed tokens: two positions' worth of exact scoring) is the same
    forward budget. "gradient" also spends one pass per example for every gradient; it runs
    once at that candidate budget, then again with as many fewer candidates as it spent on
    gradients, and the run whose forward passes are closer to the others' is reported.
    Returns ranking -> dict(dnll, forward_passes, candidate_evals).
    """
    import dataclasses

    import numpy as np

    from monollm.attacks import uat

    budget = budget or 2 * int(allowed.sum())
    B = len(opt)

    def run(ranking, evals):
        p = dataclasses.replace(params, ranking=ranking, restarts=10_000)
        start = time.perf_counter()
        found = uat.search(model, tokenizer, opt, allowed, p, np.random.default_rng([seed, 5]), a.continuation_len,
                           a.batch_size, max_evals=evals)
        out = dict(dnll=max(s.objective for s in found) - clean, forward_passes=sum(s.forward_passes for s in found),
                   candidate_evals=sum(s.candidate_evals for s in found))
        note(f"uat {ranking}: dNLL {out['dnll']:+.4f} after {out['candidate_evals']} candidates, "
             f"{out['forward_passes']} forward passes, {len(found)} restarts, {time.perf_counter() - start:.1f} s")
        return out

    out = {"exact": run("exact", budget), "random": run("random", budget)}
    first = run("gradient", budget)
    gradient_passes = first["forward_passes"] - B * first["candidate_evals"]
    second = run("gradient", max(1, budget - gradient_passes // B))
    target = out["exact"]["forward_passes"]
    out["gradient"] = min(first, second, key=lambda r: abs(r["forward_passes"] - target))
    return out


def gcg_vs_uat(model, tokenizer, opt, allowed, uat_params, gcg_params, a, clean: float, seed: int) -> dict:
    """Best attack_opt dNLL of `gcg` stopped after as many candidate evaluations as `uat` made with
    the profile's settings (restarts included), from the same seeded random starts; gcg runs the
    profile's steps per restart and restarts as often as that budget allows. Returns dict(uat, gcg, evals)."""
    import dataclasses

    import numpy as np

    from monollm.attacks import gcg, uat

    n_cont, bs = a.continuation_len, a.batch_size
    found = uat.search(model, tokenizer, opt, allowed, uat_params, np.random.default_rng([seed, 6]), n_cont, bs)
    evals = sum(s.candidate_evals for s in found)
    unlimited = dataclasses.replace(gcg_params, restarts=10_000)  # the profile's steps per restart
    other = gcg.search(model, tokenizer, opt, allowed, unlimited, np.random.default_rng([seed, 6]), n_cont, bs,
                       max_evals=evals)
    out = dict(uat=max(s.objective for s in found) - clean, gcg=max(s.objective for s in other) - clean, evals=evals)
    note(f"seed {seed}: uat dNLL {out['uat']:+.4f} after {evals} candidates; gcg {out['gcg']:+.4f} after "
         f"{sum(s.candidate_evals for s in other)} candidates in {len(other)} restarts")
    return out


def random_search_vs_uat(model, tokenizer, examples, allowed, a, clean: float, seed: int) -> dict:
    """Best attack_opt dNLL of `random_search` and `uat` at the profile's forward-pass budget
    (attack.budget, an auto budget's cap; if it sets none, what uat spends with its own restarts and steps), from the
    same seeded random starts, every trigger kept re-tokenizable before attack_opt and test as in
    the flow. Returns dict(random_search, uat, passes: per search)."""
    import numpy as np
    import torch

    from monollm.attacks import random_search, uat

    opt = torch.as_tensor(examples["attack_opt"], device=model.device)
    survive = np.concatenate([examples["attack_opt"], examples["test"]])
    out, passes, budget = {}, {}, a.max_budget if a.budget == "auto" else a.budget
    for name, module, default in (("uat", uat, uat.UATConfig()),
                                  ("random_search", random_search, random_search.RandomSearchConfig())):
        params = a.params.get(name) or default
        start = time.perf_counter()
        found = module.search(model, tokenizer, opt[:params.opt_examples or None], allowed, params,
                              np.random.default_rng([seed, 7]), a.continuation_len, a.batch_size, survive=survive,
                              budget=budget)
        budget = budget or sum(s.forward_passes for s in found)  # no profile budget: uat's spend is the budget
        out[name], passes[name] = max(s.objective for s in found) - clean, sum(s.forward_passes for s in found)
        note(f"seed {seed}: {name} dNLL {out[name]:+.4f} after {passes[name]} forward passes (budget {budget}) in "
             f"{len(found)} restarts, {time.perf_counter() - start:.1f} s")
    return dict(out, passes=passes)


def _example_rounds(found) -> int:
    """(example, round) pairs a hotflip search scored candidates for: every example in the first
    round, then those whose loss rose in the round before."""
    import torch

    active, total = torch.ones(len(found.loss), dtype=torch.bool), 0
    for before, after in zip(found.history[:-1], found.history[1:]):
        total += int(active.sum())
        active &= after > before
    return total


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import torch

    from monollm import config
    from monollm.attacks import hotflip, uat
    from monollm.attacks.common import allowed_tokens, continuation_nll

    cfg = config.load_file(args.config)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, tokenizer, examples = reference(cfg, args.config, args.model_dir)
    a = cfg.attack
    params = a.params.get("uat") or uat.UATConfig()
    allowed = allowed_tokens(tokenizer, model.get_input_embeddings().weight.shape[0], a.tokens[0])
    opt = torch.as_tensor(examples["attack_opt"], device=model.device)
    clean = float(continuation_nll(model, opt, a.continuation_len, a.batch_size).mean())
    parts = set(args.parts.split(","))
    if "pool" in parts:
        ratio = throughput_ratio(model, opt, allowed, params.trigger_len, a.continuation_len, a.batch_size,
                                 args.rounds, args.seed)
        runs = [compare(model, tokenizer, examples, allowed, params, a.continuation_len, a.batch_size, args.sweeps,
                        seed, clean) for seed in range(args.seed, args.seed + args.seeds)]
        speedup = sum(r["pool_s"] for r in runs) / sum(r["uat_s"] for r in runs)
        unmatched = sum(not r["matched"] for r in runs)
        print(f"scoring/forward throughput ratio: {ratio:.2f}")
        print(f"uat time-to-match vs pool search: {speedup:.1f}"
              + (f" ({unmatched} of {len(runs)} searches never matched)" if unmatched else ""))
        print(f"uat dNLL at equal candidate budget: {np.mean([r['equal_dnll'] for r in runs]):.4f} vs "
              f"{np.mean([r['pool_dnll'] for r in runs]):.4f}")
    if "hotflip" in parts:
        hotflip_line(model, tokenizer, examples, a, args.seed)
    if "uat" in parts:
        r = uat_equal_budget(model, tokenizer, opt, allowed, params, a, clean, args.uat_budget, args.seed)
        print(f"uat dNLL at equal forward budget: gradient {r['gradient']['dnll']:.4f}, "
              f"random {r['random']['dnll']:.4f}, exact {r['exact']['dnll']:.4f}")
    if "gcg" in parts:
        from monollm.attacks import gcg

        runs = [gcg_vs_uat(model, tokenizer, opt, allowed, params, a.params.get("gcg") or gcg.GCGConfig(), a, clean,
                           seed) for seed in range(args.seed, args.seed + args.seeds)]
        print(f"gcg dNLL at equal candidate budget vs uat: {np.mean([r['gcg'] for r in runs]):.4f} vs "
              f"{np.mean([r['uat'] for r in runs]):.4f}")
    if "random_search" in parts:
        runs = [random_search_vs_uat(model, tokenizer, examples, allowed, a, clean, seed)
                for seed in range(args.seed, args.seed + args.seeds)]
        print(f"random_search vs uat at equal forward passes: {np.mean([r['random_search'] for r in runs]):.4f} vs "
              f"{np.mean([r['uat'] for r in runs]):.4f}")


def hotflip_line(model, tokenizer, examples, a, seed: int):
    """Print the hotflip line (hotflip_equal_budget), with each run's budget on stderr."""
    from monollm.attacks import hotflip

    hot = hotflip_equal_budget(model, tokenizer, examples, a, a.params.get("hotflip") or hotflip.HotFlipConfig(), seed)
    note("hotflip forward passes: " + ", ".join(f"{k} {hot[k]['forward_passes']} (candidates {hot[k]['candidates']})"
                                                for k in ("gradient", "random"))
         + f", exact {hot['exact']['forward_passes']} (every allowed token at the last "
           f"{(a.params.get('hotflip') or hotflip.HotFlipConfig()).exact_positions} context positions)")
    print(f"hotflip dNLL at equal forward budget: gradient {hot['gradient']['dnll']:.4f}, "
          f"random {hot['random']['dnll']:.4f}, exact {hot['exact']['dnll']:.4f}")


if __name__ == "__main__":
    main()
