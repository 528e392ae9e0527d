"""Ray Data ingest: re-stream the shards every epoch vs materialize the windows once, side by side.

    .venv/bin/python benchmarks/ingest.py [--preset 250k] [--epochs 4] [--workers 1] [--set KEY=VALUE ...]

Runs the same pre-training twice on one embedded local Ray (`train.ingest=stream`, then `train.ingest=materialize`)
and prints, for each, the per-epoch time of the training loop (which includes waiting for input), the run's wall
time and the final loss (identical data and seeds: the loss must match). Small data on a small box is where
re-streaming hurts: every epoch re-lists, re-reads and re-windows the Parquet shards.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from genrec.config import load_config
from genrec.runtime import init_ray, prepare_shards, print_table
from genrec.train import fit, history_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/local.yaml")
    p.add_argument("--preset", default="250k")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    rows = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for mode in ("stream", "materialize"):
        cfg = load_config(args.config, [f"model.preset={args.preset}", f"train.epochs={args.epochs}",
                                        f"train.workers={args.workers}", f"train.ingest={mode}",
                                        "tracking.wandb=disabled", *args.overrides])
        shards = prepare_shards(cfg)
        init_ray(cfg)
        name = f"ingest-{mode}-{stamp}"
        t0 = time.perf_counter()
        fit(cfg, shards, name)
        wall = time.perf_counter() - t0
        hist = json.loads(history_path(cfg, name).read_text())
        rows.append({"ingest": mode, "epoch_1_s": hist[0]["epoch_time_s"],
                     "later_epochs_s": sum(h["epoch_time_s"] for h in hist[1:]) / max(len(hist) - 1, 1),
                     "run_wall_s": wall, "final_loss": hist[-1]["loss"], "mrr": hist[-1]["mrr"]})
    print(f"\n{platform.node()} {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: preset {args.preset}, "
          f"{args.epochs} epochs, {args.workers} worker(s)")
    print_table(rows, ["ingest", "epoch_1_s", "later_epochs_s", "run_wall_s", "final_loss", "mrr"])


if __name__ == "__main__":
    main()
