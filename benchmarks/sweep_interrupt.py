"""A sweep stopped with Ctrl-C, then resumed: what it left held, and whether the stopped trial continues from its
checkpoint. (`make test` checks the stop; the resume costs ~40 s more of a 2-core box, so it is shown here.)

    .venv/bin/python benchmarks/sweep_interrupt.py [--config configs/local.yaml] [--set KEY=VALUE ...]

One trial (the config's first preset and length, seed 0, no window shift) of `--epochs` epochs, run by
`tuning.sweep.main` in this process on an embedded Ray. Once Ray Train has registered the trial's first checkpoint, this
process sends itself SIGINT (what Ctrl-C sends). Prints: the exit code and line of the stopped sweep, whether a winner
was written, the seconds until every placement group was REMOVED, the epochs the stopped run had trained; then
`--resume`: the epoch it resumed after, whether the finished epochs' history was kept as it was, and the winner.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genrec.config import dump_config, load_config  # noqa: E402
from genrec.runtime import init_ray  # noqa: E402
from genrec.winner import read_winner  # noqa: E402
from tuning.sweep import main as sweep  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="sweep-interrupt-")
    cfg = load_config(args.config, [f"storage.root={root}", "name=interrupt", "tracking.wandb=disabled",
                                    *args.overrides])
    cfg.train.epochs, cfg.tune.epochs = args.epochs, None
    cfg.tune.presets, cfg.tune.max_seq_lens = cfg.tune.presets[:1], cfg.tune.max_seq_lens[:1]
    cfg.tune.seeds, cfg.tune.window_shifts_h = [0], [0.0]
    path = Path(root) / "config.yaml"
    path.write_text(dump_config(cfg))
    init_ray(cfg)
    from ray.util import placement_group_table

    store = cfg.storage.store()
    stopped: list[str] = []

    def ctrl_c_after_first_checkpoint():
        while not stopped:
            for run in store.list(store.path("runs")):
                with contextlib.suppress(OSError, ValueError):
                    snap = json.loads(store.read_text(f"{run.path}/checkpoint_manager_snapshot.json"))
                    if snap.get("latest_checkpoint_result"):
                        stopped.append(run.path)
                        os.kill(os.getpid(), signal.SIGINT)
                        return
            time.sleep(0.1)

    threading.Thread(target=ctrl_c_after_first_checkpoint, daemon=True).start()
    t0 = time.time()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = sweep(["--config", str(path), "--name", "interrupted"])
    returned = time.time()
    line = next((x for x in err.getvalue().splitlines() if x.startswith("interrupted")), "(no 'interrupted' line)")
    print(f"\nstopped sweep: exit {code} after {returned - t0:.1f} s\n  {line}")
    print(f"winner written: {store.is_file(cfg.winner_path())}")
    while any(g["state"] != "REMOVED" for g in placement_group_table().values()):
        time.sleep(0.2)
    print(f"every placement group REMOVED {time.time() - returned:.1f} s after the driver returned "
          f"({len(placement_group_table())} groups)")
    if not stopped:
        sys.exit("the trial finished before it could be stopped")
    before = json.loads(store.read_text(f"{stopped[0]}/history.json"))
    print(f"the stopped run had trained {len(before)} of {args.epochs} epochs")
    t1 = time.time()
    code = sweep(["--config", str(path), "--resume", "interrupted"])
    history = json.loads(store.read_text(f"{stopped[0]}/history.json"))
    resumed_after = next((h["epoch"] - 1 for h in history if h["restarts"] >= 1), None)
    print(f"\nresumed sweep: exit {code} after {time.time() - t1:.1f} s; resumed after epoch {resumed_after}; "
          f"epochs {[h['epoch'] for h in history]}; finished epochs kept as they were: "
          f"{history[:resumed_after or 0] == before[:resumed_after or 0]}")
    print(f"winner: {read_winner(store, cfg.winner_path()).checkpoint}")


if __name__ == "__main__":
    main()
