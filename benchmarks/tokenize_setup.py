"""Tokenization as `setup` runs it (monollm.data.documents.train_blocks), on one thread and on all CPUs.

    python benchmarks/tokenize_setup.py               # ~8 MB of the built-in corpus, 3 rounds each
    python benchmarks/tokenize_setup.py --mb 32 --vocab 50000

The tokenizer is a byte-level BPE trained here on the built-in corpus (`--vocab` entries,
the same kind of tokenizer as Pythia's, which needs the hub); the text is the built-in
corpus repeated to `--mb` MB. Rounds alternate one thread (TOKENIZERS_PARALLELISM=false)
and `monollm.data.documents.tokenizer_threads` (all CPUs), and the blocks of both are checked equal.

Wall-clock speedup needs idle CPUs: on a machine that other processes keep busy it shows
little. So the CPU time of each thread of this process is read too (Linux /proc): the
calling thread waits while the tokenizer's threads encode a batch, so on idle CPUs the wall
time is about the calling thread's CPU time plus the busiest other thread's ("critical
path"), and one thread's CPU time over that is the speedup idle CPUs would give.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def thread_cpu() -> dict:
    """CPU ticks (user + system) used so far by each thread of this process (Linux /proc)."""
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        ticks[tid] = int(fields[11]) + int(fields[12])
    return ticks


def main():
    from monollm.data import corpus, documents
    from monollm.model import foundation

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=8)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--block-len", type=int, default=2048)
    args = ap.parse_args()

    base = corpus.generate(3000)
    tokenizer = foundation.build_tokenizer(base, args.vocab)
    docs, size = [], 0
    while size < args.mb * 1e6:
        docs += base
        size += sum(len(d.encode()) for d in base)
    eos = tokenizer.eos_token_id

    def run(name: str):
        before, t0 = thread_cpu(), time.perf_counter()
        results[name] = documents.train_blocks(tokenizer, iter(docs), args.block_len, 10 ** 12, eos)
        times[name].append(time.perf_counter() - t0)
        after = thread_cpu()
        used = {t: after[t] - before.get(t, 0) for t in after}
        main_ = used.pop(str(os.getpid()))
        critical[name].append((main_ + max(used.values(), default=0)) / os.sysconf("SC_CLK_TCK"))
        total[name].append((main_ + sum(used.values())) / os.sysconf("SC_CLK_TCK"))

    times, critical, total, results = {}, {}, {}, {}
    for name in ("one thread", "all CPUs"):
        times[name], critical[name], total[name] = [], [], []
    for _ in range(args.rounds):
        os.environ[documents.PARALLELISM] = "false"
        run("one thread")
        with documents.tokenizer_threads():
            run("all CPUs")
    same = (results["one thread"] == results["all CPUs"]).all()
    print(f"{size / 1e6:.1f} MB of text, {len(docs):,} documents, vocabulary {len(tokenizer):,}, "
          f"{len(os.sched_getaffinity(0))} usable CPUs; blocks {results['all CPUs'].shape}, identical: {same}")
    for name, ts in times.items():
        print(f"  {name:10s} wall median {statistics.median(ts):6.2f} s ({size / 1e6 / statistics.median(ts):5.1f} MB/s)"
              f", fastest {min(ts):6.2f} s; CPU {statistics.median(total[name]):6.2f} s, "
              f"critical path {statistics.median(critical[name]):6.2f} s")
    wall = statistics.median(times["one thread"]) / statistics.median(times["all CPUs"])
    idle = statistics.median(critical["one thread"]) / statistics.median(critical["all CPUs"])
    print(f"speedup: wall clock {wall:.2f}x; on idle CPUs about {idle:.2f}x (critical paths)")
    if not same:
        raise SystemExit("the blocks differ between one thread and all CPUs")


if __name__ == "__main__":
    main()
