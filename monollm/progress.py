"""Progress output: timestamped log lines, and one progress line for long loops (what, how far, rate,
ETA at most: loops may stop early)."""
from __future__ import annotations

import time


def log(msg: str):
    """One timestamped progress line on stdout, flushed (Metaflow shows it as it comes)."""
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def line(what: str, done: int, total: int, started: float, unit: str = "") -> str:
    """E.g. "restart 2/5, 0.41 restarts/s, ETA 7s"; `started` is the loop's time.time() at its start."""
    elapsed = max(time.time() - started, 1e-9)
    rate = done / elapsed
    eta = (total - done) / rate if rate > 0 else float("nan")
    unit = unit or what.split()[-1] + "s"
    return f"{what} {done}/{total}, {rate:.3g} {unit}/s, ETA {eta:.0f}s"
