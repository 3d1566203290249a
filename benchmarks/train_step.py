"""One recovery-training step of both arms: tokens/s, MFU (GPU) and the monotonic/baseline ratio.

    python benchmarks/train_step.py                                   # config/tiny.toml, CPU
    python benchmarks/train_step.py --config config/pythia-1.4b.toml  # on a GPU
    python benchmarks/train_step.py --config config/pythia-1.4b.toml --random-init   # no hub
    python benchmarks/train_step.py --config config/pythia-6.9b.toml --random-init   # 8 GPUs, FSDP

Both arms run `monollm.train.loop.train` itself (the flow's code path: fp32 master weights,
bf16 autocast and fused AdamW on CUDA, the profile's batch, accumulation, block length,
gradient checkpointing and compile settings) on the same random token blocks, starting
from the same weights; the monotonic arm is constrained first (W = softplus(V)), so its
step pays for the parametrization exactly as in training. Rounds alternate the arms
(ABBA...) so that load from other processes hits both alike; the ratio compares the
fastest steps of each arm (medians are printed too; MFU is from the median step). A profile that needs CUDA falls back to the default
profile when no GPU is visible.

With several training processes (the profile's `[parallel]`, or `--processes N`), each arm
runs through monollm.train.distributed as in a flow step (torchrun, one rank per GPU, DDP or
FSDP); step times are rank 0's, MFU is per GPU, and peak memory is not reported.

Target: monotonic/baseline step time <= 1.10; MFU >= 0.40 for pythia-1.4b on an H100.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEFAULT_PROFILE = os.path.join(ROOT, "config", "tiny.toml")

# Dense bf16 peak of common cards, FLOP/s (vendor figures, without sparsity).
PEAK_BF16 = {"H200": 989e12, "H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12,
             "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}

# Architectures of Pythia models, so that --random-init needs no hub access (step time does not
# depend on weight values). Values from the models' published config.json.
PYTHIA = {"EleutherAI/pythia-160m": (768, 12, 12), "EleutherAI/pythia-410m": (1024, 24, 16),
          "EleutherAI/pythia-1b": (2048, 16, 8), "EleutherAI/pythia-1.4b": (2048, 24, 16),
          "EleutherAI/pythia-2.8b": (2560, 32, 32), "EleutherAI/pythia-6.9b": (4096, 32, 32)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_PROFILE, help="TOML profile (default: config/tiny.toml)")
    p.add_argument("--steps", type=int, default=0, help="measured steps per arm and round (default: 20 CPU, 5 GPU)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured steps at the start of each round")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds of both arms")
    p.add_argument("--random-init", action="store_true",
                   help="build the profile's architecture with random weights instead of loading it")
    p.add_argument("--compile", choices=("profile", "on", "off"), default="profile",
                   help="override train.compile")
    p.add_argument("--grad-checkpointing", choices=("profile", "on", "off"), default="profile",
                   help="override train.grad_checkpointing")
    p.add_argument("--processes", type=int, default=-1,
                   help="override parallel.processes (0: one per visible GPU; 2 on CPU runs gloo)")
    p.add_argument("--strategy", choices=("profile", "ddp", "fsdp"), default="profile",
                   help="override parallel.strategy")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="card's dense bf16 peak (default: by name)")
    return p.parse_args(argv)


def load_profile(args):
    """The profile, or the default one when it needs a GPU and none is visible."""
    import torch

    from monollm import config

    cfg = config.load_file(args.config)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        print(f"{args.config} needs CUDA and no GPU is visible: running the default profile on CPU")
        cfg = config.load_file(DEFAULT_PROFILE)
    overrides = {}
    for flag, field in (("compile", "compile"), ("grad_checkpointing", "grad_checkpointing")):
        if getattr(args, flag) != "profile":
            overrides[field] = getattr(args, flag) == "on"
    parallel = {}
    if args.processes >= 0:
        parallel["processes"] = args.processes
    if args.strategy != "profile":
        parallel["strategy"] = args.strategy
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **overrides),
                               parallel=dataclasses.replace(cfg.parallel, **parallel))


def foundation(cfg, random_init: bool):
    """(model, tokenizer-size) of the profile: built, random-initialised, or loaded."""
    from monollm.data import corpus
    from monollm.model import foundation

    if cfg.model.source == "build":
        docs = corpus.generate(min(cfg.data.builtin_docs, 1000))
        tokenizer = foundation.build_tokenizer(docs, cfg.model.build.vocab_size)
        return foundation.build_model(cfg.model.build, tokenizer, cfg.seed, cfg.model.attn_implementation), len(tokenizer)
    if random_init:
        return random_pythia(cfg), 50277
    model, tokenizer = foundation.load_foundation(cfg.model)
    return model, len(tokenizer)


def random_pythia(cfg):
    """A randomly initialised model with the profile's (Pythia) architecture."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GPTNeoXConfig

    if cfg.model.name in PYTHIA:
        hidden, layers, heads = PYTHIA[cfg.model.name]
        arch = GPTNeoXConfig(vocab_size=50304, hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=2048,
                             rotary_pct=0.25, use_parallel_residual=True, hidden_act="gelu",
                             tie_word_embeddings=False, attn_implementation=cfg.model.attn_implementation)
    else:
        arch = AutoConfig.from_pretrained(cfg.model.name, revision=cfg.model.revision,
                                          attn_implementation=cfg.model.attn_implementation)
    torch.manual_seed(cfg.seed)
    return AutoModelForCausalLM.from_config(arch, dtype=torch.float32)


def flops_per_token(model, block_len: int) -> float:
    """Training FLOPs per token: 6 x matmul parameters + attention (PaLM appendix B).

    The input embedding is a lookup, not a matmul, so it is left out; attention scores and
    values add 12 x layers x hidden x block_len (counted in full, as is usual, though causal).
    """
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    return 6 * n + 12 * c.num_hidden_layers * c.hidden_size * block_len


def peak_flops(device: str, override_tflops: float) -> float:
    """Dense bf16 peak of the visible card, 0 when unknown (or on CPU)."""
    import torch

    if override_tflops:
        return override_tflops * 1e12
    if device != "cuda":
        return 0.0
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), 0.0)


def measure(cfg, reference, arm: str, blocks, steps: int, warmup: int, device: str, world: int = 1,
            model_dir: str = "") -> tuple[list[float], int]:
    """Seconds per optimizer step of `arm` for `steps` steps after `warmup` (on a fresh copy of
    `reference`), and the peak GPU memory allocated, bytes (0 on CPU or with several processes,
    whose ranks load `reference` from `model_dir`)."""
    import torch

    from monollm import config
    from monollm.model import monotonic
    from monollm.train import distributed, loop

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = copy.deepcopy(reference)
    if arm == "monotonic":
        monotonic.apply(model, cfg.monotonic.variant, cfg.monotonic.floor)
    rows = cfg.train.batch_size * cfg.train.grad_accum
    tcfg = dataclasses.replace(cfg.train, tokens=(warmup + steps) * rows * blocks.shape[1], eval_every=0,
                               checkpoint_every=0, log_every=0, val_blocks=1, warmup_frac=0.0,
                               monotonic_warmup_frac=0.0)
    if world > 1:
        run_cfg = dataclasses.replace(cfg, train=tcfg)
        history = distributed.train_model(run_cfg, model, model_dir, {"train": blocks, "val": blocks[:1]}, arm,
                                          cfg.seed, world, raw_config=config.to_dict(run_cfg), log=lambda *_: None)
        return [rows * blocks.shape[1] / h["tokens_per_s"] for h in history[warmup:]], 0
    history = loop.train(model, blocks, blocks[:1], tcfg, cfg.seed, device, arm=arm, log=lambda *_: None)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return [rows * blocks.shape[1] / h["tokens_per_s"] for h in history[warmup:]], peak


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import torch

    from monollm import pipeline
    from monollm.train import distributed

    cfg = load_profile(args)
    device = pipeline.setup_torch(cfg)
    world = distributed.processes(cfg, device)
    steps = args.steps or (5 if device == "cuda" else 20)
    reference, n_tokens = foundation(cfg, args.random_init)
    reference.float()
    t, rows = cfg.data.block_len, cfg.train.batch_size * cfg.train.grad_accum
    rng = np.random.default_rng(cfg.seed)
    blocks = rng.integers(0, n_tokens, size=(rows * (args.warmup + steps), t), dtype=np.int32)
    card = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    model_dir = ""
    if world > 1:  # the ranks load the weights themselves, as in a flow step
        import tempfile

        model_dir = tempfile.mkdtemp(prefix="monollm-bench-")
        reference.save_pretrained(model_dir)
        card += f" x {world} processes ({cfg.parallel.strategy})"
    print(f"profile {cfg.name}: {card}; {sum(p.numel() for p in reference.parameters()) / 1e6:.1f}M parameters, "
          f"{rows} x {t} tokens per step ({cfg.train.batch_size} x {cfg.train.grad_accum} accumulation), "
          f"attention {reference.config._attn_implementation}, grad checkpointing {cfg.train.grad_checkpointing}, "
          f"compile {cfg.train.compile}, variant {cfg.monotonic.variant}")
    # the reference stays on the CPU: each arm's copy alone goes to the card, as in a flow step
    times, peaks = {"baseline": [], "monotonic": []}, {"baseline": 0, "monotonic": 0}
    for r in range(args.rounds):
        for arm in (("baseline", "monotonic") if r % 2 == 0 else ("monotonic", "baseline")):
            ts, peak = measure(cfg, reference, arm, blocks, steps, args.warmup, device, world, model_dir)
            times[arm] += ts
            peaks[arm] = max(peaks[arm], peak)
    per_token, peak = flops_per_token(reference, t), peak_flops(device, args.peak_tflops)
    for arm, ts in times.items():
        best, median = min(ts), statistics.median(ts)
        mfu = f", MFU {rows * t / median * per_token / peak / world:.3f}" if peak else ""
        memory = f", peak GPU memory {peaks[arm] / 2**30:.1f} GiB" if peaks[arm] else ""
        print(f"{arm:>9}: best {best * 1000:.1f} ms/step, median {median * 1000:.1f} ms/step of {len(ts)}; "
              f"{rows * t / median:,.0f} tokens/s at the median{mfu}{memory}")
    # the ratio of the fastest steps: on a shared machine slower steps measure the neighbours
    # (the advice of Python's timeit); on a dedicated GPU best and median agree
    ratio = min(times["monotonic"]) / min(times["baseline"])
    print(f"median ratio {statistics.median(times['monotonic']) / statistics.median(times['baseline']):.3f}")
    if peak:
        print(f"MFU: {rows * t / statistics.median(times['baseline']) * per_token / peak / world:.3f}")
    elif device == "cuda":
        print(f"MFU: unknown for {card} (pass --peak-tflops)")
    print(f"monotonic/baseline step time: {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
