"""What a URI storage root costs: the same one-trial sweep with storage.root on a local folder and on an S3 bucket,
side by side, on one embedded local Ray.

    .venv/bin/python benchmarks/storage.py [--preset 2m] [--epochs 2] [--set KEY=VALUE ...]

The bucket is an S3-protocol server (moto, the tests' extra) started on 127.0.0.1 in its own process, so the
difference measured is genrec's and Ray's own storage work over S3 (shard upload, Ray Data reads, checkpoint and
Tune uploads, the report's download), not a network's: a real bucket adds its latency and bandwidth on top. Prints
the sweep's wall time, the trial's training time, loss and MRR for both roots (they must agree: the same shards,
the same seed), then the time of `genrec report` and of loading the winner for serving from each root.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from genrec.config import load_config
from genrec.runtime import init_ray, print_table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3(log: Path) -> tuple[subprocess.Popen, str]:
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_EC2_METADATA_DISABLED="true")
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"moto_server did not start (is the [test] extra installed?): {log.read_text()[-1000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/local.yaml")
    p.add_argument("--preset", default="2m")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="alternate local and s3 this many times (the first run "
                   "of a process pays Ray's and DeepSpeed's warm-up)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="genrec-storage-bench-"))
    proc, endpoint = start_s3(work / "moto.log")
    roots = {"local": str(work / "local"),
             "s3": f"s3://bench/genrec?endpoint_override={endpoint}&scheme=http&region=us-east-1"
                   "&allow_bucket_creation=true"}
    rows = []
    try:
        from genrec.checkpoint import load_last_good
        from genrec.study import make_report
        from tuning.sweep import run

        for rep, (kind, root) in [(r, kr) for r in range(args.repeats) for kr in roots.items()]:
            cfg = load_config(args.config, [
                f"storage.root={root}", f"storage.cache={work / 'cache'}", f"name=bench-{kind}-{rep}",
                f"tune.presets=[{args.preset}]", "tune.max_seq_lens=[32]", "tune.seeds=[0]", "tune.window_shifts_h=[0]",
                f"tune.epochs={args.epochs}", "tracking.wandb=disabled", *args.overrides])
            init_ray(cfg)
            t0 = time.perf_counter()
            manifest = run(cfg, f"sweep-{kind}-{rep}")
            sweep_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            make_report(manifest.experiment, work / f"report-{kind}-{rep}", resamples=50, echo=lambda *_: None,
                        store=cfg.storage.store())
            report_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            load_last_good(manifest.checkpoint, store=cfg.storage.store())
            load_s = time.perf_counter() - t0
            trial = manifest.trials[0]
            rows.append({"storage": kind, "run": rep + 1, "sweep_s": sweep_s, "train_wall_s": trial.wall_time_s,
                         "loss": trial.loss, "valid_mrr": trial.valid_mrr, "report_s": report_s, "load_winner_s": load_s})
    finally:
        proc.terminate()
    for r in rows:  # against the local run of the same round
        base = next(b["sweep_s"] for b in rows if b["run"] == r["run"] and b["storage"] == "local")
        r["sweep_vs_local"] = f"{r['sweep_s'] / base:.2f}x"
    print(f"\none-trial sweep, {args.preset}, {args.epochs} epochs; S3 = moto on 127.0.0.1; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print_table(rows, ["storage", "run", "sweep_s", "sweep_vs_local", "train_wall_s", "loss", "valid_mrr", "report_s",
                       "load_winner_s"])


if __name__ == "__main__":
    main()
