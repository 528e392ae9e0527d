"""A sweep stopped with Ctrl-C, then resumed: what it left held, and whether the stopped trial continues from its
checkpoint. (`make test` checks the stop; the resume, which trains the remaining epochs, is shown here instead.)

    .venv/bin/python benchmarks/sweep_interrupt.py [--config configs/local.yaml] [--epochs 3] [--set KEY=VALUE ...]
        [--out RESULTS.json]

One trial (the config's first preset and length, seed 0, no window shift) of `--epochs` epochs, run by
`tuning.sweep.main` in this process on an embedded Ray (started before the clock), under a fresh temporary storage
root. Once Ray Train has registered the trial's first checkpoint, this process sends itself SIGINT (what Ctrl-C
sends). Reported: the exit code, wall time (the sweep call to its return: shard build, Tune and the trial's start,
the epochs trained) and `interrupted` line of the stopped sweep, whether a winner was written, the seconds from the
driver's return until every placement group was REMOVED (polled every 0.2 s), the epochs the stopped run had
trained; then `--resume`: its exit code and wall time, the epoch it resumed after, whether the finished epochs'
history was kept as it was, and the winner. One results JSON (`--out`, default
benchmarks/results/sweep_interrupt-<time>.json).
"""

from __future__ import annotations

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

from ray.util import placement_group_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, write  # noqa: E402
from genrec.config import dump_config, load_config, without_secrets  # noqa: E402
from genrec.ray_session import init_ray  # noqa: E402
from genrec.winner import read_winner  # noqa: E402
from tuning.sweep import main as sweep  # noqa: E402


def table(results: dict) -> str:
    """A step | figure table: the stopped sweep, what it held, the stopped run, the resumed sweep."""
    out = ["| step | figure |", "|---|---|"]
    for r in results["rows"]:
        if r["step"] == "stopped sweep":
            fig = (f"exit {r['exit']} after {r['wall_s']:.1f} s; `{r['line'].replace('|', '/')}`; "
                   f"{'a winner manifest written' if r['winner_written'] else 'no winner manifest'}")
        elif r["step"] == "what it held":
            fig = (f"every placement group ({r['placement_groups']}) `REMOVED` {r['removed_after_s']:.1f} s after "
                   "the driver returned")
        elif r["step"] == "stopped run":
            fig = f"{r['epochs_trained']} of {r['epochs']} epochs trained"
        else:
            kept = "kept as they were" if r["finished_epochs_kept"] else "**changed**"
            figure = r["winner_metrics"].get(r["winner_metric"])
            score = "" if figure is None else f" ({r['winner_metric']} {figure:.4f})"
            after = r["resumed_after_epoch"]
            resumed = ("no epoch of the run's history has restarted (not resumed)" if after is None else
                       f"resumed after epoch {after} (finished epochs {kept})")
            fig = (f"exit {r['exit']} after {r['wall_s']:.1f} s; {resumed}; history epochs {r['history_epochs']}; "
                   f"winner {r['winner']}{score}")
        step = f"`{r['step']}`" if r["step"].startswith("--") else r["step"]
        out.append(f"| {step} | {fig} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--config", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix="sweep-interrupt-")
    cfg = load_config(args.config, [f"storage.root={root}", "name=interrupt", "tracking.wandb=disabled",
                                    *args.overrides])
    cfg.train.epochs, cfg.tune.epochs = args.epochs, None
    cfg.tune.presets, cfg.tune.max_seq_lens = cfg.tune.presets[:1], cfg.tune.max_seq_lens[:1]
    cfg.tune.seeds, cfg.tune.window_shifts_h = [0], [0.0]
    path = Path(root) / "config.yaml"
    path.write_text(dump_config(cfg))
    init_ray(cfg)

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
    winner_written = store.is_file(cfg.winner_path())
    print(f"winner written: {winner_written}")
    while any(g["state"] != "REMOVED" for g in placement_group_table().values()):
        time.sleep(0.2)
    removed = time.time() - returned
    groups = len(placement_group_table())
    print(f"every placement group REMOVED {removed:.1f} s after the driver returned ({groups} groups)")
    if not stopped:
        sys.exit("the trial finished before it could be stopped")
    before = json.loads(store.read_text(f"{stopped[0]}/history.json"))
    print(f"the stopped run had trained {len(before)} of {args.epochs} epochs")
    rows = [{"step": "stopped sweep", "exit": code, "wall_s": returned - t0, "line": line,
             "winner_written": winner_written},
            {"step": "what it held", "placement_groups": groups, "removed_after_s": removed},
            {"step": "stopped run", "epochs_trained": len(before), "epochs": args.epochs}]
    t1 = time.time()
    code = sweep(["--config", str(path), "--resume", "interrupted"])
    resumed_s = time.time() - t1
    history = json.loads(store.read_text(f"{stopped[0]}/history.json"))
    resumed_after = next((h["epoch"] - 1 for h in history if h["restarts"] >= 1), None)
    winner = read_winner(store, cfg.winner_path())
    rows.append({"step": "--resume interrupted", "exit": code, "wall_s": resumed_s,
                 "resumed_after_epoch": resumed_after, "history_epochs": [h["epoch"] for h in history],
                 "finished_epochs_kept": history[:resumed_after or 0] == before[:resumed_after or 0],
                 "winner": winner.checkpoint, "winner_metric": winner.metric, "winner_metrics": winner.metrics})
    results = {"rows": rows, "config": without_secrets(cfg).model_dump(mode="json"), "storage_root": root,
               "stopped_run": stopped[0], "history_before": before, "history_after": history}
    print()
    print(table(results))
    write("sweep_interrupt", results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
