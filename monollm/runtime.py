"""What every step's process does first: torch seeded and threaded."""
from __future__ import annotations


def setup_torch(cfg) -> str:
    """Seed torch and set its CPU threads (cfg: ExperimentConfig); returns the device to use."""
    import torch

    from monollm.model import foundation

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    return foundation.pick_device(cfg.device)
