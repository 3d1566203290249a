"""One search step of each gradient-guided attack at a profile's real shape, fp32 against bf16.

    python benchmarks/attack_step.py                                             # config/tiny.toml
    python benchmarks/attack_step.py --config config/pythia-1.4b.toml --random-init   # on a GPU

The steps are the attacks' own functions (monollm.attacks.gradients and uat.propose) on
the profile's [attack] shape: a UAT step is the one-hot gradient over the optimization batch
(`opt_examples` windows of context + continuation, trigger prepended), the top `top_k` swaps
per position, and the exact re-score of those trigger_len x top_k candidates on every
optimization window; a GCG step is the same gradient, `batch` single-token swaps sampled from
the top `top_k` tokens per position, and their exact re-score; a HotFlip round is the one-hot gradient over `examples` windows, the
top `candidates` swaps per example, and their exact re-score. Token ids are random (step time
does not depend on them; tokenizer checks are CPU work and left out). Each step runs under
`common.search_precision` ("fp32", then "bf16"), rounds alternating, best of each kept.

Prints, all measured in this one run:
* per attack, ms per step in fp32 and bf16 and the fp32/bf16 speedup;
* how far bf16 moves the search's decisions: Spearman correlation of the candidates' exact
  losses, whether the best candidate is the same, and the largest |loss difference|;
* the search budget of the profile in GPU hours per attacked model, at each precision
  (UAT and GCG: restarts x steps x a step, an upper bound since restarts may stop early; HotFlip:
  max_flips rounds over all examples, also an upper bound).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PROFILE = os.path.join(ROOT, "config", "tiny.toml")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_PROFILE, help="TOML profile (default: config/tiny.toml)")
    p.add_argument("--random-init", action="store_true", help="the profile's architecture with random weights")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of both precisions (the first warms up)")
    p.add_argument("--opt-examples", type=int, default=0,
                   help="UAT optimization windows to time (default: the profile's); the budget is scaled to it")
    p.add_argument("--examples", type=int, default=0,
                   help="HotFlip windows to time (default: the profile's attack.examples); scaled likewise")
    return p.parse_args(argv)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def uat_step(model, opt, allowed, trigger_len: int, top_k: int, n_cont: int, batch_size: int):
    """One UAT step (gradient, top-k, exact re-score); returns the candidates' mean losses (M,)."""
    import torch

    from monollm.attacks import uat
    from monollm.attacks.common import prepend
    from monollm.attacks.gradients import onehot_grad, score_triggers

    trigger = allowed.nonzero().flatten()[torch.arange(trigger_len) * 7].to(opt.device)
    _, grad = onehot_grad(model, prepend(trigger, opt), 0, trigger_len, n_cont, batch_size, shared=True)
    cands = uat.propose(grad, trigger, allowed, 0, top_k)
    return score_triggers(model, cands, opt, n_cont, batch_size).mean(dim=1)


def gcg_step(model, opt, allowed, trigger_len: int, top_k: int, batch: int, n_cont: int, batch_size: int):
    """One GCG step (gradient, top-k per position, `batch` sampled swaps scored in one pass); (M,) losses."""
    import numpy as np
    import torch

    from monollm.attacks import gcg
    from monollm.attacks.common import prepend
    from monollm.attacks.gradients import onehot_grad, score_triggers

    trigger = allowed.nonzero().flatten()[torch.arange(trigger_len) * 7].to(opt.device)
    _, grad = onehot_grad(model, prepend(trigger, opt), 0, trigger_len, n_cont, batch_size, shared=True)
    cands = gcg.sample_swaps(grad, trigger, allowed, top_k, batch, np.random.default_rng(0))
    return score_triggers(model, cands, opt, n_cont, batch_size).mean(dim=1)


def hotflip_round(model, ids, allowed, context_len: int, n_cont: int, candidates: int, batch_size: int):
    """One HotFlip round over every row of ids (gradient, top candidates, exact re-score); (N * k,) losses."""
    from monollm.attacks.common import continuation_nll
    from monollm.attacks.gradients import flip_scores, onehot_grad, with_flips

    import torch

    V, picks = len(allowed), []
    for chunk in ids.split(batch_size):
        _, grad = onehot_grad(model, chunk, 0, context_len, n_cont, batch_size)
        picks.append(flip_scores(grad, chunk[:, :context_len], allowed).flatten(1).topk(candidates, dim=1).indices)
    flat = torch.cat(picks)
    rows = torch.arange(len(ids), device=ids.device).repeat_interleave(candidates)
    cands = with_flips(ids, rows, flat.flatten() // V, flat.flatten() % V)
    return continuation_nll(model, cands, n_cont, batch_size)


def timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def agreement(a, b) -> str:
    from scipy.stats import spearmanr

    rho = spearmanr(a.numpy(), b.numpy()).statistic
    same = int(a.argmax()) == int(b.argmax())
    return (f"Spearman {rho:.4f} between fp32 and bf16 candidate losses, same best candidate: {same}, "
            f"max |diff| {float((a - b).abs().max()):.4f} nats")


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import torch

    import train_step
    from monollm import pipeline
    from monollm.attacks import gcg, hotflip, uat
    from monollm.attacks.common import search_precision

    cfg = train_step.load_profile(argparse.Namespace(config=args.config, compile="profile",
                                                     grad_checkpointing="profile", processes=-1, strategy="profile"))
    device = torch.device(pipeline.setup_torch(cfg))
    model, n_tokens = train_step.foundation(cfg, args.random_init)
    model = model.float().to(device).eval()
    a = cfg.attack
    up = a.params.get("uat") or uat.UATConfig()
    hp = a.params.get("hotflip") or hotflip.HotFlipConfig()
    gp = a.params.get("gcg") or gcg.GCGConfig()
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    allowed = torch.zeros(vocab_rows, dtype=torch.bool)
    allowed[:n_tokens] = True
    rng = np.random.default_rng(cfg.seed)
    width = a.context_len + a.continuation_len
    full = {"uat step": up.opt_examples or a.examples, "hotflip round": a.examples,
            "gcg step": gp.opt_examples or a.examples}
    opt = torch.as_tensor(rng.integers(0, n_tokens, size=(args.opt_examples or full["uat step"], width)),
                          device=device)
    test = torch.as_tensor(rng.integers(0, n_tokens, size=(args.examples or full["hotflip round"], width)),
                           device=device)
    timed_rows = {"uat step": len(opt), "hotflip round": len(test), "gcg step": len(opt)}
    card = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"profile {cfg.name}: {card}; {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"vocabulary rows {vocab_rows}; UAT: {len(opt)} windows x {width} tokens, trigger {up.trigger_len}, "
          f"top_k {up.top_k}; HotFlip: {len(test)} windows, {hp.candidates} candidates; GCG: top_k {gp.top_k}, "
          f"{gp.batch} swaps sampled per step; batch {a.batch_size}",
          flush=True)
    steps = {
        "uat step": lambda: uat_step(model, opt, allowed, up.trigger_len, up.top_k, a.continuation_len,
                                     a.batch_size),
        "hotflip round": lambda: hotflip_round(model, test, allowed, a.context_len, a.continuation_len,
                                               hp.candidates, a.batch_size),
        "gcg step": lambda: gcg_step(model, opt, allowed, gp.trigger_len, gp.top_k, gp.batch, a.continuation_len,
                                     a.batch_size),
    }
    best = {(s, p): float("inf") for s in steps for p in ("fp32", "bf16")}
    losses = {}
    for r in range(args.rounds):
        for precision in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
            for name, fn in steps.items():
                with search_precision(device, precision):
                    seconds, out = timed(fn, device)
                if r:  # the first round warms up kernels and the allocator
                    best[name, precision] = min(best[name, precision], seconds)
                losses[name, precision] = out.float().cpu()
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    budget = {"uat step": up.restarts * up.steps, "hotflip round": hp.max_flips, "gcg step": gp.restarts * gp.steps}
    for name in steps:
        fp32, bf16 = best[name, "fp32"], best[name, "bf16"]
        scale = full[name] / timed_rows[name]  # step time is linear in the windows (batches of equal rows)
        print(f"{name} on {timed_rows[name]} windows: fp32 {fp32 * 1000:.0f} ms, bf16 {bf16 * 1000:.0f} ms, "
              f"speedup {fp32 / bf16:.2f}")
        print(f"{name}: {agreement(losses[name, 'fp32'], losses[name, 'bf16'])}")
        print(f"{name}: profile budget {budget[name]} x on {full[name]} windows, per attacked model: at most "
              f"{fp32 * scale * budget[name] / 3600:.2f} GPU-hours in fp32, {bf16 * scale * budget[name] / 3600:.2f} "
              f"in bf16" + (f" (scaled x{scale:.2f} from the timed windows)" if scale != 1 else ""))


if __name__ == "__main__":
    main()
