"""Peer baseline: RecBole's SASRec on ML-100K, leave-one-out, full ranking, in RecBole's own virtual environment.

    python benchmarks/recbole_peer.py [--epochs 1] [--max-len 50] [--batch-size 256] [--threads 2] [--seed 2020]
        [--stopping-step 10] [--max-seconds S] [--scores-file scores.npz] [--out result.json] [--install-only]

RecBole 1.2.1 pins an old Ray and breaks on NumPy 2, so it never shares genrec's venv: this script (stdlib only)
creates benchmarks/work/recbole-venv once, installs the pinned packages there (a marker file records the pins; a
second call skips the install), then runs benchmarks/_recbole_runner.py with that venv's python. RecBole's own
ML-100K copy (shipped in its wheel) is used: last event of each user is test, second-to-last validation, every
item of the catalogue is ranked (see shared/notes/peers.md). Progress goes to stderr; the result is one JSON object
on the last stdout line (and in --out). Everything RecBole writes (log/, saved/ checkpoints) lands under
benchmarks/work/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
VENV = WORK / "recbole-venv"
# Two pip steps: torch 2.13 declares setuptools>=77, but RecBole's old Ray/tensorboard import pkg_resources bits
# that newer setuptools dropped, so setuptools<70 is forced afterwards (pip warns about torch's pin; harmless,
# torch needs setuptools only to build C++ extensions). torch==2.13.0 resolves to the local 2.13.0+cpu wheel.
PINS = [
    ["torch==2.13.0", "recbole==1.2.1", "numpy<2", "pandas<2.2", "scipy<1.14"],
    ["setuptools<70"],
]
MARKER = VENV / ".genrec-recbole-pins.json"


def log(msg: str) -> None:
    print(f"[recbole-peer {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_venv() -> Path:
    py = VENV / "bin" / "python"
    if MARKER.exists() and py.exists() and json.loads(MARKER.read_text()) == PINS:
        log(f"venv ready: {VENV} (pins recorded in {MARKER.name}; delete it to reinstall)")
        return py
    t0 = time.time()
    if not py.exists():
        log(f"creating venv {VENV}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    for step in PINS:
        log("pip install " + " ".join(step))
        subprocess.run([str(py), "-m", "pip", "install", "--progress-bar", "off", *step], check=True,
                       stdout=sys.stderr)  # pip's chatter is progress, keep stdout for the JSON
    # Refuse a CUDA torch (it would mean pip went to the index instead of the local CPU wheel).
    check = "import torch, recbole; assert torch.version.cuda is None, torch.__version__; print(torch.__version__)"
    out = subprocess.run([str(py), "-c", check], check=True, capture_output=True, text=True).stdout.strip()
    log(f"installed: torch {out}, recbole imports fine ({time.time() - t0:.0f} s)")
    MARKER.write_text(json.dumps(PINS))
    return py


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-len", type=int, default=50, help="MAX_ITEM_LIST_LENGTH")
    p.add_argument("--batch-size", type=int, default=256, help="train_batch_size")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in the runner")
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--stopping-step", type=int, default=10, help="validations without a gain before stopping")
    p.add_argument("--max-seconds", type=float, default=1e9, help="stop at the first validation past this time")
    p.add_argument("--scores-file", type=Path, help="every test user's scores over the catalogue (.npz)")
    p.add_argument("--out", type=Path, help="also write the JSON result here")
    p.add_argument("--install-only", action="store_true", help="set up the venv and stop")
    args = p.parse_args()

    t0 = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    py = ensure_venv()
    if args.install_only:
        return
    run_dir = WORK / "recbole-run"  # RecBole writes ./log and ./log_tensorboard relative to cwd
    run_dir.mkdir(exist_ok=True)
    result_file = run_dir / "result.json"
    result_file.unlink(missing_ok=True)  # never report a stale result
    cmd = [str(py), str(HERE / "_recbole_runner.py"), "--epochs", str(args.epochs), "--max-len", str(args.max_len),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--seed", str(args.seed),
           "--stopping-step", str(args.stopping_step), "--max-seconds", str(args.max_seconds),
           "--result-file", str(result_file)]
    if args.scores_file:
        cmd += ["--scores-file", str(args.scores_file.resolve())]
    log("running " + " ".join(cmd[1:]))
    # RecBole logs to stdout and stderr; send all of it to our stderr so our stdout ends with the JSON alone.
    rc = subprocess.run(cmd, cwd=run_dir, stdout=sys.stderr).returncode
    if rc != 0:
        sys.exit(f"recbole-peer: the runner failed (exit {rc}); RecBole's output is above, logs in {run_dir}/log")
    result = json.loads(result_file.read_text())
    result["total_wall_s"] = round(time.time() - t0, 1)  # includes venv check/install and RecBole start-up
    line = json.dumps(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    print(line, flush=True)


if __name__ == "__main__":
    main()
