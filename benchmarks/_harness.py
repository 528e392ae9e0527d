"""What every benchmark shares: its arguments, the record of where and how it ran, JSON results, tables.

A benchmark is a module benchmarks/<name>.py with `main(argv)` (its arguments from `parser`, here) and a pure
`table(results) -> str`. A run writes one JSON file (--out, default benchmarks/results/<name>-<time>.json) holding
`meta` (the benchmark's name, command, machine, CPUs, date, commit, torch and ray versions) and its own `results`;
BENCHMARKS.md tables are made from those files by benchmarks/tables.py, which calls the module's `table`, not copied
by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="the results JSON (default benchmarks/results/<benchmark>-<time>.json)")
    return p


def meta() -> dict:
    def run(*cmd):
        try:
            return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    import ray
    import torch

    dirty = run("git", "status", "--porcelain", "--untracked-files=no")
    return {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": platform.node(),
            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "commit": (run("git", "rev-parse", "--short", "HEAD") or "?") + ("+changes" if dirty else ""),
            "torch": torch.__version__, "ray": ray.__version__}


def run_child(cmd: list[str], what: str, env: dict | None = None) -> dict:
    """Run a benchmark's child process (the benchmark re-invoked with --child) and return the JSON object its last
    line of output prints; a child that fails stops the benchmark, naming `what` and the end of its stderr."""
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{what} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write(name: str, results, out: str | None = None, extra: dict | None = None) -> Path:
    """{"meta": ..., "results": ...} to `out`, atomically; returns the path."""
    path = Path(out) if out else RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # The benchmark's name goes with its figures: tables.py finds the module whose `table` renders them by it.
    doc = {"meta": meta() | {"benchmark": name} | (extra or {}), "results": results}
    tmp.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    tmp.replace(path)
    print(f"results -> {path}")
    return path


def mean_spread(values) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for one value)."""
    import numpy as np

    v = np.asarray([x for x in values if x is not None], float)
    if not v.size:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
