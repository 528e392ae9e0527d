"""A killed training worker, measured: final loss and MRR of runs that lost a worker vs the spread of uninterrupted
runs with the same seed, and the time the restart cost.

    .venv/bin/python benchmarks/fault_tolerance.py [--config configs/local.yaml] [--runs 2] [--set KEY=VALUE ...]

Each run is `python -m trainers.pretrain` in its own process (its own embedded local Ray), as a user starts it. In a
killed run, once Ray Train has registered the first epoch's checkpoint, one Ray Train worker process (a
`ray::RayTrainWorker` under that run's raylet) gets SIGKILL; Ray Train restarts the worker group and genrec resumes
from the checkpoint (weights, optimizer and LR-schedule state, RNG states), redoing the interrupted epoch. The runs
alternate, uninterrupted then killed, `--runs` times each.

Per run: the process's wall time (from its start to its exit: Ray start, shards built or checked, every epoch,
evaluation, checkpoints and, in a killed run, the restart and the redone epoch), the seconds after its start at which
the worker was killed, Ray Train's restarts, the epochs trained, and the last epoch's training loss and validation
MRR (from the run's history.json). Then a summary: is each killed run's final loss / MRR / wall time inside the
uninterrupted runs' [min, max] and within 2 standard deviations of their mean. Each run's log goes to
<storage>/benchmarks/fault-tolerance-<time>/; the results to one JSON (`--out`, default
benchmarks/results/fault_tolerance-<time>.json).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, write  # noqa: E402
from genrec.config import load_config  # noqa: E402
from genrec.console import print_table  # noqa: E402

COLUMNS = ["run", "killed_at_s", "restarts", "wall_s", "final_loss", "final_valid_mrr", "epochs"]


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


def table(results: dict) -> str:
    """A row per run, then whether the killed runs land inside the uninterrupted runs' spread."""
    out = ["| run | killed at | restarts | process wall s | epochs | final loss | final validation MRR |",
           "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        killed = "-" if r["killed_at_s"] is None else f"{r['killed_at_s']:.0f} s"
        out.append(f"| {r['run']} | {killed} | {r['restarts']} | {r['wall_s']:.0f} | {r['epochs']} | "
                   f"{r['final_loss']!r} | {r['final_valid_mrr']!r} |")  # every digit: a replay may be exact
    by = {s["metric"]: s for s in results["summary"]}
    killed = sum(r["kind"] == "killed" for r in results["rows"])
    out.append("\nKilled runs inside the uninterrupted runs' [min, max] / within 2 sd of their mean: " + "; ".join(
        f"{name} {by[m]['killed_in_clean_range']} / {by[m]['killed_within_2sd']} of {killed}"
        for m, name in (("final_loss", "loss"), ("final_valid_mrr", "MRR"), ("wall_s", "wall time"))) + ".")
    wall = {k: [r["wall_s"] for r in results["rows"] if r["kind"] == k] for k in ("clean", "killed")}
    out.append(f"Process wall time, mean [min, max]: uninterrupted {statistics.mean(wall['clean']):.0f} s "
               f"[{min(wall['clean']):.0f}, {max(wall['clean']):.0f}], killed {statistics.mean(wall['killed']):.0f} s "
               f"[{min(wall['killed']):.0f}, {max(wall['killed']):.0f}]; killed - uninterrupted "
               f"{statistics.mean(wall['killed']) - statistics.mean(wall['clean']):+.0f} s.")
    return "\n".join(out)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--config", default="configs/local.yaml")
    p.add_argument("--runs", type=int, default=2, help="runs of each kind (uninterrupted, killed)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    args = p.parse_args(argv)
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
            print_table(rows[-1:], COLUMNS)
    clean = [r for r in rows if r["kind"] == "clean"]
    killed = [r for r in rows if r["kind"] == "killed"]
    summary = []
    for metric in ("final_loss", "final_valid_mrr", "wall_s"):
        ref = [r[metric] for r in clean]
        mean, sd = statistics.mean(ref), statistics.stdev(ref) if len(ref) > 1 else 0.0
        summary.append({"metric": metric, "clean": spread(ref), "killed": spread([r[metric] for r in killed]),
                        "killed_in_clean_range": sum(min(ref) <= r[metric] <= max(ref) for r in killed),
                        "killed_within_2sd": sum(abs(r[metric] - mean) <= 2 * sd for r in killed)})
    print(f"\n{args.runs} clean + {args.runs} killed runs of {args.config} {' '.join(args.overrides)} "
          f"(logs: {log_dir})\n")
    results = {"rows": rows, "summary": summary, "config": args.config, "overrides": args.overrides,
               "runs": args.runs, "logs": str(log_dir)}
    print(table(results))
    write("fault_tolerance", results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
