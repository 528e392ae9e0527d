"""What ZeRO stage costs a small preset: the same pre-training run under DeepSpeed ZeRO 0, 2 and 3, side by side.

    .venv/bin/python benchmarks/zero_stages.py [--preset 2m] [--epochs 3] [--stages 0 2 3] [--set KEY=VALUE ...]

Runs on one embedded local Ray (so every stage sees the same machine and the same shards) and prints events/s of
the last epoch (the first includes start-up), epoch time and the final loss/MRR per stage, plus each stage's
throughput relative to stage 0. On CPU the workers talk over gloo, so the extra all-gathers of stage 3 are what
is measured here; on GPUs (NCCL) the ratio differs and must be measured there.
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
    p.add_argument("--preset", default="2m")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--stages", type=int, nargs="+", default=[0, 2, 3])
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    rows = []
    for stage in args.stages:
        cfg = load_config(args.config, [f"model.preset={args.preset}", f"train.epochs={args.epochs}",
                                        f"train.zero_stage={stage}", "tracking.wandb=disabled", *args.overrides])
        shards = prepare_shards(cfg)
        init_ray(cfg)
        name = f"bench-zero{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
        t0 = time.perf_counter()
        fit(cfg, shards, name)
        wall = time.perf_counter() - t0
        last = read_history(cfg, name)[-1]
        rows.append({"zero_stage": stage, "events_per_s": last["events_per_s"], "epoch_time_s": last["epoch_time_s"],
                     "run_wall_s": wall, "loss": last["loss"], "valid_mrr": last["valid_mrr"]})
    base = rows[0]["events_per_s"]
    for r in rows:
        r["vs_first"] = f"{r['events_per_s'] / base:.2f}x"
    print(f"\n{args.preset}, {cfg.train.workers} workers x {cfg.train.cpus_per_worker} CPU, batch "
          f"{cfg.train.batch_size}, max_seq_len {cfg.model.max_seq_len}; {platform.processor() or platform.machine()}")
    print_table(rows, ["zero_stage", "events_per_s", "vs_first", "epoch_time_s", "run_wall_s", "loss", "valid_mrr"])


if __name__ == "__main__":
    main()
