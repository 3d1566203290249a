"""One training process of a multi-process step, as torchrun starts it (monollm/train/distributed.py):

    python -m monollm.rank JOB

It rebuilds the run's config from the job folder, then trains this rank's share.
"""
import sys

from monollm import config
from monollm.train import distributed


def main(job: str):
    spec = distributed.read_job(job)
    distributed.run_rank(job, spec, config.from_dict(spec["config"]))


if __name__ == "__main__":
    main(sys.argv[1])
