"""How long a model step takes before it says anything: import costs, measured cold.

    python benchmarks/import_time.py                 # this checkout against the revision before lazy imports
    python benchmarks/import_time.py --before REV    # against another git revision
    python benchmarks/import_time.py --before ''     # this checkout only

Two paths, each in a fresh interpreter (`--repeat` times, the median is printed):

* `import monollm.pipeline`: the library every model step imports;
* the first log line of a model step: what the `evaluate` step runs before it logs (import
  metaflow as the task does, import the monollm modules the step imports before its work,
  rebuild the config, seed torch, log), timed from process start until the line arrives on
  stdout. Loading the model files, which comes next, is not counted.

"before" runs the same two paths on a copy of the monollm package at `--before` (extracted
with `git archive` and compiled, first on PYTHONPATH; one unmeasured warm-up run each), so both
numbers come from one run on one machine. Times on a shared CPU vary by a second or more between
runs; compare numbers from the same run only.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEFORE = "4ccd2e8"
"""The last revision that imported scipy.stats, statsmodels and pandas with monollm.pipeline."""
PROFILE = os.path.join("config", "tiny.toml")
"""Relative to the checkout timed (its working directory): each revision reads its own profile."""
FIRST_LOG = f"""
import metaflow
from monollm import config, pipeline
cfg = config.from_dict(config.to_dict(config.load_file({PROFILE!r})))
pipeline.setup_torch(cfg)
pipeline.log("first log line")
"""


def timed(code: str, path: str, marker: str | None = None) -> float:
    """Seconds from starting `python -c code` (with `path` first on PYTHONPATH) until it exits,
    or until a stdout line containing `marker` arrives."""
    env = {**os.environ, "PYTHONPATH": path + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "USERNAME": os.environ.get("USERNAME", "monollm"), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True, cwd=path)
    for line in proc.stdout:
        if marker and marker in line:
            elapsed = time.perf_counter() - t0
            proc.wait()
            return elapsed
    if proc.wait() != 0:
        raise RuntimeError(f"`{code.strip()[:60]}...` failed under {path}")
    if marker:
        raise RuntimeError(f"no line with {marker!r} from `{code.strip()[:60]}...`")
    return time.perf_counter() - t0


def checkout(rev: str) -> str:
    """A temporary copy of the monollm package and the default profile at git revision `rev`."""
    out = tempfile.mkdtemp(prefix="monollm-before-")
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "monollm", PROFILE], check=True,
                             capture_output=True)
    subprocess.run(["tar", "-x", "-C", out], input=archive.stdout, check=True)
    # compiled like the checkout it is compared with: a first import would otherwise pay for it
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(out, "monollm")], check=True)
    return out


def measure(path: str, repeat: int) -> tuple[float, float]:
    """Median seconds of (cold import of monollm.pipeline, start to the first log line)."""
    timed(FIRST_LOG, path, marker="first log line")  # warm-up: the OS file cache, as for every later step
    imports = [timed("import monollm.pipeline", path) for _ in range(repeat)]
    first = [timed(FIRST_LOG, path, marker="first log line") for _ in range(repeat)]
    return statistics.median(imports), statistics.median(first)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=BEFORE, help="git revision to compare with ('' for none)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each path (median)")
    args = ap.parse_args(argv)
    before = measure(checkout(args.before), args.repeat) if args.before else None
    now = measure(ROOT, args.repeat)
    for i, what in enumerate(("import monollm.pipeline", "first log line of a model step")):
        print(f"{what}: {now[i]:.2f} s" + (f" (before: {before[i]:.2f} s at {args.before})" if before else ""))


if __name__ == "__main__":
    main()
