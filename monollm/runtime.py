"""What every step's process does first: torch seeded and threaded; what a model step records it ran on;
and how a model step stops on what the user fixes (`step_errors`) and stores a model (`store_model`)."""
from __future__ import annotations

import contextlib


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


@contextlib.contextmanager
def step_errors(cfg, current=None, flow=None, models: dict | None = None):
    """Inside a flow step, what the user fixes stops it with one line, no traceback: a bad value
    (ConfigError), damaged stored files or a full disk (errors.FixableError). A damaged model
    fetched into one of `models` (name -> folder; `flow`'s `<name>_model` artifacts) names the
    run, the task that saved it and the step to resume from (results.client.stored_models)."""
    from monollm import errors
    from monollm.results import client

    models = models or {}
    refs = {m: getattr(flow, client.MODEL_ARTIFACTS[m], None) for m in models}
    run = f"{current.flow_name}/{current.run_id}" if current else "MonoFlow/RUN"
    with errors.fixable(f"profile {cfg.name!r}"), client.stored_models(models, refs, run,
                                                                       getattr(current, "step_name", "STEP")):
        yield


def store_model(current, folder: str, label: str):
    """Store a `foundation.save` folder as the step's model artifact (`current.model.save`, its files
    as they are); its reference. A full disk stops it with DiskFull naming the datastore."""
    from monollm import saving

    with saving.disk_space(saving.datastore_place(), saving.folder_bytes(folder), f"storing the {label} model"):
        return current.model.save(folder, label=label, storage_format="files")
