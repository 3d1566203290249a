"""Time to store a training checkpoint in an S3 datastore, the way a training task stores it.

    python benchmarks/checkpoint_store.py                    # 512 MB, 3 saves, a local S3 server
    python benchmarks/checkpoint_store.py --endpoint URL     # an S3-compatible store you have
                                                             # (bucket --bucket must exist; AWS_* credentials)

A small flow runs one task with `@checkpoint` on the S3 datastore. The task saves a
training-shaped state (fp32 weights and AdamW's two moments, a third each of `--mb`) `--saves`
times through `monollm.checkpoints.StepCheckpointer`, which writes, seals and stores each folder
with metaflow-checkpoint (`storage_format="files"`, as training does) and keeps the newest 2.
The times are the checkpointer's own (`monollm.saving.SaveTimes`): the seconds of
`current.checkpoint.save` per folder, and its bytes.

Without `--endpoint` the store is a moto server started here on 127.0.0.1: Python, objects in
memory, on the same 2 CPUs as the uploading task. Its rate says what metaflow's S3 client and
this machine reach against a real S3 API, not what a cluster's S3 reaches; the last line states
the rate a paper-scale run needs so that storing stays off the training loop (a store slower
than `train.checkpoint_every` steps makes the next save wait, and a run reports its own rate in
its log and in `run.data.checkpoint_costs`).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

STORE_FLOW = '''
import json

from metaflow import FlowSpec, Parameter, checkpoint, current, step


class StoreFlow(FlowSpec):
    mb = Parameter("mb", type=float, default=512)
    saves = Parameter("saves", type=int, default=3)

    @checkpoint(load_policy="fresh", show_card=False)
    @step
    def start(self):
        from checkpoint_io import training_state
        from monollm import checkpoints

        state, times = training_state(self.mb), []
        ck = checkpoints.StepCheckpointer(current, "bench", keep=2)
        for step in range(1, self.saves + 1):
            before = ck.times.store_s
            ck.save({**state, "step": step}, step)
            times.append(ck.times.store_s - before)
        print("STORE " + json.dumps({**ck.times.as_dict(), "per_save_s": times}))
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    StoreFlow()
'''


def local_s3(bucket: str):
    """A moto S3 server on 127.0.0.1 with `bucket`; (server, endpoint URL)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    return server, url


def run_flow(url: str, bucket: str, mb: float, saves: int, local: bool) -> dict:
    """Run StoreFlow on the S3 datastore at `url`; the task's STORE record."""
    home = tempfile.mkdtemp(prefix="monollm-store-bench-")
    with open(os.path.join(home, "store_flow.py"), "w") as f:
        f.write(STORE_FLOW)
    env = {**os.environ, "USERNAME": os.environ.get("USERNAME", "monollm"),
           "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "benchmarks")]),
           "METAFLOW_HOME": home, "METAFLOW_DATASTORE_SYSROOT_LOCAL": home, "METAFLOW_DEFAULT_METADATA": "local",
           "METAFLOW_DEFAULT_DATASTORE": "s3", "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{bucket}/monollm-bench",
           "METAFLOW_DATATOOLS_S3ROOT": f"s3://{bucket}/monollm-bench/data", "METAFLOW_S3_ENDPOINT_URL": url}
    if local:
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    proc = subprocess.run([sys.executable, "store_flow.py", "run", "--mb", str(mb), "--saves", str(saves)],
                          cwd=home, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"the store flow failed (exit {proc.returncode}):\n{out[-4000:]}")
    for line in out.splitlines():
        if "STORE {" in line:
            return json.loads(line[line.index("STORE ") + 6:])
    sys.exit(f"the store flow printed no STORE record:\n{out[-4000:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=512, help="MB of training state per checkpoint")
    ap.add_argument("--saves", type=int, default=3)
    ap.add_argument("--endpoint", default="", help="an S3-compatible endpoint URL (default: a local moto server)")
    ap.add_argument("--bucket", default="monollm-bench")
    ap.add_argument("--target-gb", type=float, default=17.0, help="state per checkpoint at paper scale (1.4b)")
    ap.add_argument("--every", type=int, default=200, help="train.checkpoint_every at paper scale")
    ap.add_argument("--step-s", type=float, default=1.40, help="seconds per optimizer step at paper scale")
    args = ap.parse_args()

    server, url = local_s3(args.bucket) if not args.endpoint else (None, args.endpoint)
    try:
        rec = run_flow(url, args.bucket, args.mb, args.saves, server is not None)
    finally:
        if server is not None:
            server.stop()
    mb = rec["stored_bytes"] / rec["stores"] / 1e6
    rates = [mb / s for s in rec["per_save_s"]]
    where = "a local moto server (in-memory, same CPUs)" if server is not None else url
    print(f"store of a {mb:,.0f} MB checkpoint through metaflow-checkpoint to {where}, {rec['stores']} saves: "
          f"median {statistics.median(rec['per_save_s']):.2f} s ({statistics.median(rates):,.0f} MB/s), "
          f"fastest {min(rec['per_save_s']):.2f} s ({max(rates):,.0f} MB/s)")
    interval = args.every * args.step_s
    need = args.target_gb * 1e3 / interval
    print(f"at {args.target_gb:g} GB every {args.every} steps x {args.step_s:g} s = {interval:.0f} s, storing stays "
          f"off the training loop at >= {need:.0f} MB/s; at this rate a store takes "
          f"{args.target_gb * 1e3 / statistics.median(rates):.0f} s")


if __name__ == "__main__":
    main()
