"""Ray Data ingest: re-stream the shards every epoch vs materialize the windows once, side by side.

    .venv/bin/python benchmarks/ingest.py [--preset 250k] [--epochs 4] [--workers 1] [--set KEY=VALUE ...]
    .venv/bin/python benchmarks/ingest.py --modes stream --variant train.prefetch_batches=0 \
        --variant train.prefetch_batches=4      # one run per variant (each a KEY=VALUE[,KEY=VALUE])

Runs the same pre-training twice on one embedded local Ray (`train.ingest=stream`, then `train.ingest=materialize`)
and prints, for each, the per-epoch time of the training loop, the share of it spent waiting for Ray Data's next
batch (`input_wait_share`, measured by the trainer around the batch iterator), the run's wall time and the final loss (identical data and seeds: the loss must match). Small data on a small box is where
re-streaming hurts: every epoch re-lists, re-reads and re-windows the Parquet shards.
"""

from __future__ import annotations

import argparse
import platform
import time

from genrec.config import load_config
from genrec.runtime import init_ray, prepare_shards, print_table
from genrec.runs import read_history
from genrec.train import fit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/local.yaml")
    p.add_argument("--preset", default="250k")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--modes", nargs="+", default=["stream", "materialize"], choices=["stream", "materialize"])
    p.add_argument("--variant", action="append", default=None,
                   help="extra overrides for one run, KEY=VALUE[,KEY=VALUE]; one run per variant and mode")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    rows = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k, (mode, variant) in enumerate((m, v) for m in args.modes for v in (args.variant or [""])):
        extra = [o for o in variant.split(",") if o]
        cfg = load_config(args.config, [f"model.preset={args.preset}", f"train.epochs={args.epochs}",
                                        f"train.workers={args.workers}", f"train.ingest={mode}",
                                        "tracking.wandb=disabled", *args.overrides, *extra])
        shards = prepare_shards(cfg)
        init_ray(cfg)
        name = f"ingest-{mode}-{stamp}-{k}"
        t0 = time.perf_counter()
        fit(cfg, shards, name)
        wall = time.perf_counter() - t0
        hist = read_history(cfg, name)
        later = hist[1:] or hist
        rows.append({"ingest": mode, "variant": variant or "-", "epoch_1_s": hist[0]["epoch_time_s"],
                     "later_epochs_s": sum(h["epoch_time_s"] for h in later) / len(later),
                     "wait_epoch_1": hist[0]["input_wait_share"],
                     "wait_later": sum(h["input_wait_s"] for h in later) / sum(h["epoch_time_s"] for h in later),
                     "run_wall_s": wall, "final_loss": hist[-1]["loss"], "valid_mrr": hist[-1]["valid_mrr"]})
    print(f"\n{platform.node()} {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: preset {args.preset}, "
          f"{args.epochs} epochs, {args.workers} worker(s)")
    print_table(rows, ["ingest", "variant", "epoch_1_s", "later_epochs_s", "wait_epoch_1", "wait_later", "run_wall_s",
                       "final_loss", "valid_mrr"])


if __name__ == "__main__":
    main()
