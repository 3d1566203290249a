"""What every step's process does first: timestamped log lines, torch seeded and threaded."""
from __future__ import annotations

import time


def log(msg: str):
    """One timestamped progress line on stdout, flushed (Metaflow shows it as it comes)."""
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def setup_torch(cfg) -> str:
    """Seed torch and set its CPU threads (cfg: ExperimentConfig); returns the device to use."""
    import torch

    from monollm import models

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    return models.pick_device(cfg.device)
