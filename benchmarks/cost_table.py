"""GPU-hours per seed and per stage for the paper profiles, from rates measured on one GPU.

    python benchmarks/cost_table.py                          # the rates measured on an H200 (docs/cluster.md)
    python benchmarks/cost_table.py --from-log gpu_check.log # rates from a benchmarks/gpu_check.sh log
    python benchmarks/cost_table.py --seeds 7 --profile pythia-1.4b   # and the GPU-hours of 7 seeds

Three rates are measured at Pythia-1.4B's shape by `benchmarks/gpu_check.sh`: recovery-training
tokens/s (`train_step.py`), and one UAT step and one HotFlip round in bf16 (`attack_step.py`, the
precision attacks search in on CUDA). Every other profile's rate is scaled from them by FLOPs
per token (the same utilisation assumed: an estimate, marked as such; pythia-6.9b trains under
FSDP on 8 GPUs, which may use them less well; so does llama-3.1-8b). The Qwen2.5 and Llama 3 rows count
their own matmuls: grouped-query attention's narrower k and v, the gated MLP's three matrices and their
larger vocabularies (GATED). The formula, per stage:

* train (both arms):   2 x train.tokens / train_rate
* evaluate (4 models): 4 x test tokens / (3 x train_rate)   (a forward pass is ~1/3 of a training step;
                       test tokens = test_docs x TOKENS_PER_DOC, the Pile's mean, or eval.max_blocks x block_len)
* with `attack.budget` (every paper profile): each trigger search (uat, gcg, random_search) spends that
  many forward passes of one window against each model; with `budget = "auto"` (the paper profiles) it
  spends at most `attack.max_budget`, and the table prices that cap (an upper bound: a search that
  converges earlier stops at a lower budget), so
  search (2 models) = 2 x budget x pass time, where pass time = uat_step / (timed windows x
  (L x k + 3)): the timed UAT step scores L x k candidates (pythia-1.4b's [attack.uat] trigger_len x
  top_k) on every timed window, and its gradient counts as ~3 forward passes
* without a budget: uat (2 models) = 2 x restarts x steps x uat_step x opt_examples / timed windows,
  gcg the same with the GCG step where a log has it (attack_step.py times it), else uat_step x
  (batch + 3) / (L x k + 3) (upper bounds: every restart runs all its steps)
* hotflip (2 models):  2 x max_flips x hotflip_round x examples / timed windows          (an upper bound)
* with `attack.edit_budget`, hotflip and random_flips (2 models each): 2 x edit_budget x examples x flip pass
  time, where flip pass time = hotflip_round / (timed windows x (candidates + 3)): the timed round scores
  pythia-1.4b's [attack.hotflip] candidates (HOTFLIP_CANDIDATES) per window, and its gradient counts as ~3 passes
* every attack stage once per threat model in `attack.tokens` (the paper profiles: round_trip and printable)
Steps that move data (setup's tokenization, checkpoints, model files) are not in it.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
PROFILES = ("pythia-160m", "pythia-1.4b", "pythia-6.9b", "qwen2.5-0.5b", "qwen2.5-1.5b", "llama-3.2-1b",
            "llama-3.1-8b")
# The gated families' shapes, from each model's published config.json: (hidden size, layers, query heads,
# key/value heads, head size, MLP width, vocabulary rows). Their MLP has three matrices (gate, up, down).
GATED = {"qwen2.5-0.5b": (896, 24, 14, 2, 64, 4864, 151936), "qwen2.5-1.5b": (1536, 28, 12, 2, 128, 8960, 151936),
         "llama-3.2-1b": (2048, 16, 32, 8, 64, 8192, 128256), "llama-3.1-8b": (4096, 32, 32, 8, 128, 14336, 128256)}
SEARCHES = ("uat", "gcg", "random_search")
"""The trigger searches that spend `attack.budget` against each model."""
TOKENS_PER_DOC = 1400
"""The Pile's mean tokens per document (about 300B tokens over 210M documents)."""
# Measured by benchmarks/gpu_check.sh on one NVIDIA H200, 2026-11-27 (see docs/cluster.md):
MEASURED = {"card": "NVIDIA H200", "train_tokens_per_s": 46_789, "uat_step_s": 1.957, "uat_windows": 32,
            "hotflip_round_s": 0.801, "hotflip_windows": 128}


def from_log(path: str) -> dict:
    """The three rates (and the card) from a gpu_check.sh log."""
    text = open(path).read()

    def grab(pattern):
        m = re.search(pattern, text)
        if not m:
            raise SystemExit(f"{path}: no line matches {pattern!r}")
        return m.groups()

    card = grab(r"profile pythia-1\.4b: ([^;]+);")[0]
    tokens = float(grab(r"baseline: best [\d.]+ ms/step, median [\d.]+ ms/step of \d+; ([\d,]+) tokens/s")[0]
                   .replace(",", ""))
    uat = grab(r"uat step on (\d+) windows: fp32 \d+ ms, bf16 (\d+) ms")
    flip = grab(r"hotflip round on (\d+) windows: fp32 \d+ ms, bf16 (\d+) ms")
    out = {"card": card, "train_tokens_per_s": tokens, "uat_step_s": int(uat[1]) / 1000,
           "uat_windows": int(uat[0]), "hotflip_round_s": int(flip[1]) / 1000, "hotflip_windows": int(flip[0])}
    gcg = re.search(r"gcg step on (\d+) windows: fp32 \d+ ms, bf16 (\d+) ms", text)  # logs since gcg was timed
    if gcg:
        out.update(gcg_step_s=int(gcg[2]) / 1000, gcg_windows=int(gcg[1]))
    return out


def flops(name: str, block_len: int) -> tuple[float, float]:
    """(training FLOPs per token, forward FLOPs per token at a 48-token attack window) of a Pythia or of a
    gated model (GATED): 6 (train) or 2 (forward) x the weights of every matmul, plus attention's scores."""
    from train_step import PYTHIA

    if name in GATED:
        d, layers, heads, kv_heads, head, width, vocab = GATED[name]
        # q and o (heads x head), k and v (kv_heads x head), gate, up and down; then the LM head
        matmul = layers * (2 * d * heads * head + 2 * d * kv_heads * head + 3 * d * width) + vocab * d
        d = heads * head  # the width attention's scores are computed at
    else:
        d, layers, _ = PYTHIA[f"EleutherAI/{name}"]
        matmul = 12 * layers * d * d + 50304 * d  # blocks and the LM head; the input embedding is a lookup
    return 6 * matmul + 12 * layers * d * block_len, 2 * matmul + 4 * layers * d * 48


HOTFLIP_CANDIDATES = 16
"""Candidates per window of the timed HotFlip round (pythia-1.4b's [attack.hotflip] candidates)."""


def stages(cfg, rates: dict, scale_train: float, scale_fwd: float) -> dict:
    """Stage -> GPU-hours for one seed of profile `cfg`."""
    train_rate = rates["train_tokens_per_s"] / scale_train
    t, a = cfg.train, cfg.attack
    test_tokens = (cfg.eval.max_blocks * cfg.data.block_len if cfg.eval.max_blocks
                   else cfg.data.test_docs * TOKENS_PER_DOC)
    uat, flip, gcg = a.params.get("uat"), a.params.get("hotflip"), a.params.get("gcg")
    out = {"train": 2 * t.tokens / train_rate, "evaluate": 4 * test_tokens / (3 * train_rate)}
    if a.edit_budget:  # every per-input search spends the same passes per example against each model
        per_pass = rates["hotflip_round_s"] / (rates["hotflip_windows"] * (HOTFLIP_CANDIDATES + 3))
        out.update({name: 2 * a.edit_budget * a.examples * per_pass * scale_fwd
                    for name in ("hotflip", "random_flips") if name in cfg.attacks})
    elif flip and "hotflip" in cfg.attacks:
        out["hotflip"] = 2 * flip.max_flips * rates["hotflip_round_s"] * scale_fwd * a.examples / rates["hotflip_windows"]
    budget = a.max_budget if a.budget == "auto" else a.budget  # auto: priced at its cap
    if budget:  # every search spends the same passes against each model
        per_pass = rates["uat_step_s"] / (rates["uat_windows"] * (rates["uat_candidates"] + 3))
        out.update({name: 2 * budget * per_pass * scale_fwd for name in SEARCHES if name in cfg.attacks})
        return hours(out, len(a.tokens))
    if uat and "uat" in cfg.attacks:
        out["uat"] = (2 * uat.restarts * uat.steps * rates["uat_step_s"] * scale_fwd
                      * (uat.opt_examples or a.examples) / rates["uat_windows"])
    if gcg and "gcg" in cfg.attacks and "gcg_step_s" in rates:  # timed at pythia-1.4b's [attack.gcg] batch
        out["gcg"] = (2 * gcg.restarts * gcg.steps * rates["gcg_step_s"] * scale_fwd
                      * (gcg.opt_examples or a.examples) / rates["gcg_windows"])
    elif gcg and "gcg" in cfg.attacks:  # estimated from the UAT step's cost per candidate
        per_candidate = rates["uat_step_s"] / (rates["uat_candidates"] + 3)
        out["gcg"] = (2 * gcg.restarts * gcg.steps * per_candidate * (gcg.batch + 3) * scale_fwd
                      * (gcg.opt_examples or a.examples) / rates["uat_windows"])
    return hours(out, len(a.tokens))


def hours(seconds: dict, threat_models: int) -> dict:
    """Stage -> GPU-hours from stage -> seconds; every attack runs once per threat model (attack.tokens)."""
    return {k: v * (1 if k in ("train", "evaluate") else threat_models) / 3600 for k, v in seconds.items()}


def timed_uat_candidates() -> int:
    """Candidates in the timed UAT step: pythia-1.4b's [attack.uat] trigger_len x top_k (attack_step.py)."""
    from monollm import config

    uat = config.load_file(os.path.join(ROOT, "config", "pythia-1.4b.toml")).attack.params["uat"]
    return uat.trigger_len * uat.top_k


def profile_hours(name: str, rates: dict) -> dict:
    """Stage -> GPU-hours for one seed of the paper profile `name` (config/<name>.toml), its rates scaled
    from pythia-1.4b's by FLOPs per token. rates: MEASURED or `from_log`'s."""
    from monollm import config

    base_train, base_fwd = flops("pythia-1.4b", 2048)
    cfg = config.load_file(os.path.join(ROOT, "config", f"{name}.toml"))
    train, fwd = flops(name, cfg.data.block_len)
    return stages(cfg, {**rates, "uat_candidates": timed_uat_candidates()}, train / base_train, fwd / base_fwd)


def gpu_hours_for_seeds(profile: str, seeds: int, rates: dict = MEASURED) -> float:
    """GPU-hours of `seeds` runs of a paper profile: seeds x one seed's total (every seed repeats every stage)."""
    return seeds * sum(profile_hours(profile, rates).values())


def seeds_text(seeds: int, rates: dict, profiles=PROFILES) -> str:
    """One line per profile: the GPU-hours of `seeds` seeds (e.g. the number results.seeds.seeds_needed
    or `python -m monollm.compare` estimates for a 95% interval off zero)."""
    return "\n".join(f"{name}: {seeds} seeds x {gpu_hours_for_seeds(name, 1, rates):.2f} GPU-hours per seed = "
                     f"{gpu_hours_for_seeds(name, seeds, rates):.1f} GPU-hours on one {rates['card']}"
                     for name in profiles)


def table(rates: dict) -> str:
    stages_ = ("train", "evaluate", "uat", "hotflip", "random_flips", "gcg", "random_search")
    rows = ["| profile | " + " | ".join(stages_) + " | total GPU-hours per seed |", "|---" * (len(stages_) + 2) + "|"]
    for name in PROFILES:
        h = profile_hours(name, rates)
        mark = "" if name == "pythia-1.4b" else " (scaled)"
        rows.append(f"| {name}{mark} | " + " | ".join(f"{h.get(k, 0):.2f}" for k in stages_)
                    + f" | {sum(h.values()):.2f} |")
    return (f"GPU-hours on one {rates['card']} (rates measured at pythia-1.4b's shape: "
            f"{rates['train_tokens_per_s']:,.0f} training tokens/s, UAT step {rates['uat_step_s']:.2f} s on "
            f"{rates['uat_windows']} windows, HotFlip round {rates['hotflip_round_s']:.2f} s on "
            f"{rates['hotflip_windows']} windows, bf16)\n\n" + "\n".join(rows))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from-log", default="", help="a benchmarks/gpu_check.sh log to take the rates from")
    p.add_argument("--seeds", type=int, default=0, metavar="N",
                   help="also print the GPU-hours of N seeds per profile (e.g. the seeds compare says are needed)")
    p.add_argument("--profile", action="append", choices=PROFILES, help="with --seeds: only this profile (repeatable)")
    args = p.parse_args(argv)
    rates = from_log(args.from_log) if args.from_log else MEASURED
    print(table(rates))
    if args.seeds:
        print("\n" + seeds_text(args.seeds, rates, args.profile or PROFILES))


if __name__ == "__main__":
    main()
