"""What a URI storage root costs: the same one-trial sweep with storage.root on a local folder and on an S3 bucket,
side by side, on one embedded local Ray.

    .venv/bin/python benchmarks/storage.py [--config configs/local.yaml] [--preset 2m] [--epochs 2] [--repeats 2]
        [--set KEY=VALUE ...] [--out FILE]

The bucket is an S3-protocol server (moto, the tests' extra) started on 127.0.0.1 in its own process, so the
difference measured is genrec's and Ray's own storage work over S3 (shard upload, Ray Data reads, checkpoint and
Tune uploads, the report's download), not a network's: a real bucket adds its latency and bandwidth on top. Local
and S3 alternate --repeats times; each row reports the sweep's wall time (`tuning.sweep.run`, shards included; Ray's
start not) and its ratio to the local run of the same round, the trial's training time, loss and MRR (they must
agree between roots: the same shards, the same seed), then the time of `genrec report` (genrec.study.make_report)
and of loading the winner for serving (genrec.checkpoint.load_last_good) from each root.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, write  # noqa: E402
from genrec.checkpoint import load_last_good  # noqa: E402
from genrec.config import load_config  # noqa: E402
from genrec.ray_session import init_ray  # noqa: E402
from genrec.study import make_report  # noqa: E402
from tuning.sweep import run  # noqa: E402


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


def table(results: dict) -> str:
    """The Markdown table (one row per root and round), then the run's settings."""
    out = ["| storage | round | sweep (s) | vs local | trial's training (s) | loss | MRR | report (s) | "
           "load winner (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        out.append(f"| {r['storage']} | {r['run']} | {r['sweep_s']:.1f} | {r['sweep_vs_local']:.2f}x | "
                   f"{r['train_wall_s']:.1f} | {r['loss']:.4f} | {r['valid_mrr']:.4f} | {r['report_s']:.1f} | "
                   f"{r['load_winner_s']:.2f} |")
    extra = "".join(f", --set {o}" for o in results.get("overrides", []))
    out.append(f"\none-trial sweep, preset {results['preset']}, {results['epochs']} epoch(s), {results['config']}"
               f"{extra}; S3 = moto on 127.0.0.1")
    return "\n".join(out)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--config", default="configs/local.yaml")
    p.add_argument("--preset", default="2m")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="alternate local and s3 this many times (the first run "
                   "of a process pays Ray's and DeepSpeed's warm-up)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="genrec-storage-bench-"))
    proc, endpoint = start_s3(work / "moto.log")
    roots = {"local": str(work / "local"),
             "s3": f"s3://bench/genrec?endpoint_override={endpoint}&scheme=http&region=us-east-1"
                   "&allow_bucket_creation=true"}
    rows = []
    try:
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
        r["sweep_vs_local"] = r["sweep_s"] / base
    results = {"rows": rows, "config": args.config, "preset": args.preset, "epochs": args.epochs,
               "repeats": args.repeats, "overrides": args.overrides}
    print()
    print(table(results))
    write("storage", results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
