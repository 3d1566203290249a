"""Test perplexity of `monotonic_init` for each constraint mode and init, on one saved reference.

    python benchmarks/init_perplexity.py                          # config/tiny.toml
    python benchmarks/init_perplexity.py --config config/x.toml   # another profile (a built model)

Runs `pipeline.setup` once (the built model is pretrained; cached in the temp dir by profile,
seed and code, benchmarks/reference_cache.py), then `pipeline.make_monotonic` with each setting and the perplexity of what it saved on
the same test blocks, as the flow's `evaluate` computes it. Prints one line per setting.
"""
import argparse
import dataclasses
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from monollm import config, pipeline  # noqa: E402
from monollm.evaluation.perplexity import perplexity  # noqa: E402

SETTINGS = [("nonneg", "abs"), ("nonneg", "clip"), ("abs_init_free", "abs"), ("abs_init_free", "clip"),
            ("sign_frozen", "abs")]


def reference(cfg, profile_path: str) -> tuple[str, dict]:
    """(the saved reference model's directory, its test blocks), made once per profile, seed and
    code that makes them (benchmarks/reference_cache.py)."""
    from reference_cache import folder  # benchmarks/, this script's folder

    root = folder(f"monollm-init-ppl-{cfg.name}", profile_path, cfg.seed)
    model_dir, blocks_file = os.path.join(root, "reference"), os.path.join(root, "blocks.npz")
    if not os.path.exists(blocks_file):
        os.makedirs(model_dir, exist_ok=True)
        prep = pipeline.setup(cfg, model_dir)
        np.savez(blocks_file, test=prep.blocks["test"])
    return model_dir, {"test": np.load(blocks_file)["test"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "config", "tiny.toml"))
    args = parser.parse_args()
    cfg = config.load_file(args.config)
    model_dir, blocks = reference(cfg, args.config)
    nll = pipeline.evaluate(cfg, {"reference": model_dir}, blocks["test"]).per_block
    ppl = {"reference": perplexity(*nll["reference"])}
    for mode, init in SETTINGS:
        run = dataclasses.replace(cfg, monotonic=dataclasses.replace(cfg.monotonic, mode=mode, init=init))
        out = tempfile.mkdtemp(prefix="monollm-init-ppl-")
        pipeline.make_monotonic(run, model_dir, out)
        nll = pipeline.evaluate(run, {"monotonic_init": out}, blocks["test"]).per_block
        ppl[f"{mode}/{init}"] = perplexity(*nll["monotonic_init"])
    print(f"profile {cfg.name}, variant {cfg.monotonic.variant}, seed {cfg.seed}, {len(blocks['test'])} test blocks")
    for name, value in ppl.items():
        print(f"{name:>26}  test perplexity {value:8.3f}")


if __name__ == "__main__":
    main()
