"""What every step's process does first: torch seeded and threaded; and what a model step records it ran on."""
from __future__ import annotations


def setup_torch(cfg) -> str:
    """Seed torch and set its CPU threads (cfg: ExperimentConfig); returns the device to use."""
    import torch

    from monollm.model import foundation

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    return foundation.pick_device(cfg.device)


def ran_on(device: str, precision: str, processes: int = 1) -> dict:
    """What a model step computed on, recorded by the step for the card's Sources: {"device": "cpu" or
    "cuda", "device_name": the GPU's name ("" on the CPU), "processes": how many computed (one per GPU
    when training runs distributed), "precision": in words, e.g. "bf16 autocast, fp32 weights"}."""
    import torch

    cuda = torch.device(device).type == "cuda"
    return {"device": torch.device(device).type, "device_name": torch.cuda.get_device_name() if cuda else "",
            "processes": processes, "precision": precision}


def autocast_words(precision: str) -> str:
    """A model step's compute precision ("bf16" or "fp32", foundation.compute_precision) in words:
    bf16 is autocast over fp32 weights, never bf16 weights."""
    return "bf16 autocast, fp32 weights" if precision == "bf16" else precision
