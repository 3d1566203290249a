"""`python -m monollm.rehearsal`: build the real-shape rehearsal model and profile (monollm/experiments/rehearsal.py)."""
import sys

from monollm.experiments.rehearsal import main

if __name__ == "__main__":
    sys.exit(main())
