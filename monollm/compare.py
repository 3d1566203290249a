"""`python -m monollm.compare`: compare runs across seeds and settings (monollm/experiments/compare.py)."""
import sys

from monollm.experiments.compare import main

if __name__ == "__main__":
    sys.exit(main())
