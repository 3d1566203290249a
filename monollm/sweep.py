"""`python -m monollm.sweep`: a sweep: many MonoFlow runs and their report (monollm/experiments/sweep.py)."""
import sys

from monollm.experiments.sweep import main

if __name__ == "__main__":
    sys.exit(main())
