"""A killed training worker, measured: final loss and MRR of runs that lost a worker vs the spread of uninterrupted
runs with the same seed, and the time the restart cost.

    .venv/bin/python benchmarks/fault_tolerance.py [--config configs/local.yaml] [--runs 2] [--set KEY=VALUE ...]

Each run is `python -m trainers.pretrain` in its own process (its own embedded local Ray), as a user starts it. In a
killed run, once Ray Train has registered the first epoch's checkpoint, one Ray Train worker process (a
`ray::RayTrainWorker` under that run's raylet) gets SIGKILL; Ray Train restarts the worker group and genrec resumes
from the checkpoint (weights, optimizer and LR-schedule state, RNG states), redoing the interrupted epoch. Prints a
table per run and a summary: is each killed run's final loss / MRR inside the uninterrupted runs' [min, max] and
within 2 standard deviations of their mean, and how much longer it took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from genrec.config import load_config
from genrec.runtime import print_table


def train_worker_of(proc: subprocess.Popen) -> psutil.Process | None:
    """A Ray Train worker process started by this run's own local Ray (a descendant of its driver)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for c in children:
        try:
            if c.cmdline()[:1] and c.cmdline()[0].startswith("ray::RayTrainWorker"):
                return c
        except psutil.Error:
            continue
    return None


def run_once(args, name: str, kill: bool, run_dir: Path, log_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "trainers.pretrain", "--config", args.config, "--name", name,
           *[x for o in args.overrides for x in ("--set", o)]]
    log = log_dir / f"{name}.log"
    t0 = time.perf_counter()
    killed_at = None
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"})
        snapshot = run_dir / name / "checkpoint_manager_snapshot.json"
        while kill and killed_at is None and proc.poll() is None:
            try:
                registered = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
            except (OSError, ValueError):
                registered = None
            worker = train_worker_of(proc) if registered else None
            if worker is not None:
                worker.kill()
                killed_at = time.perf_counter() - t0
            time.sleep(0.2)
        proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see {log}")
    hist = json.loads((run_dir / name / "history.json").read_text())
    return {"run": name, "killed_at_s": killed_at, "restarts": hist[-1].get("restarts", 0), "wall_s": wall,
            "final_loss": hist[-1]["loss"], "final_valid_mrr": hist[-1]["valid_mrr"], "epochs": len(hist)}


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {sd:.4f} [{min(values):.4f}, {max(values):.4f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/local.yaml")
    p.add_argument("--runs", type=int, default=2, help="runs of each kind (uninterrupted, killed)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    args = p.parse_args()
    args.overrides = ["tracking.wandb=disabled", *args.overrides]
    cfg = load_config(args.config, args.overrides)
    if cfg.train.epochs < 2:
        raise SystemExit("train.epochs: at least 2, so a worker can be killed after the first epoch's checkpoint")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = cfg.storage.path("runs")  # a local root: the benchmark reads the runs' logs and checkpoints directly
    log_dir = Path(cfg.storage.path("benchmarks", f"fault-tolerance-{stamp}"))
    log_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(args.runs):
        for kill in (False, True):
            name = f"ft-{'killed' if kill else 'clean'}-{i}-{stamp}"
            print(f"{name} ...", flush=True)
            rows.append(run_once(args, name, kill, run_dir, log_dir) | {"kind": "killed" if kill else "clean"})
            print_table(rows[-1:], ["run", "killed_at_s", "restarts", "wall_s", "final_loss", "final_mrr"])
    clean = [r for r in rows if r["kind"] == "clean"]
    killed = [r for r in rows if r["kind"] == "killed"]
    summary = []
    for metric in ("final_loss", "final_mrr", "wall_s"):
        ref = [r[metric] for r in clean]
        mean, sd = statistics.mean(ref), statistics.stdev(ref) if len(ref) > 1 else 0.0
        summary.append({"metric": metric, "clean": spread(ref), "killed": spread([r[metric] for r in killed]),
                        "killed_in_clean_range": sum(min(ref) <= r[metric] <= max(ref) for r in killed),
                        "killed_within_2sd": sum(abs(r[metric] - mean) <= 2 * sd for r in killed)})
    print(f"\n{platform.node()} {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.config} "
          f"{' '.join(args.overrides)}; {args.runs} clean + {args.runs} killed runs (logs: {log_dir})")
    print_table(rows, ["run", "killed_at_s", "restarts", "wall_s", "final_loss", "final_mrr"])
    print()
    print_table(summary, ["metric", "clean", "killed", "killed_in_clean_range", "killed_within_2sd"])
    (log_dir / "results.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
