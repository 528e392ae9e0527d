"""Pre-train one model: `python -m trainers.pretrain --config configs/local.yaml [--set train.workers=4 ...]`.

Thin Ray wiring over `genrec.train`: builds the shards if needed, runs the TorchTrainer, prints the epoch table and
the checkpoint path. Works the same under `ray job submit --working-dir . -- python -m trainers.pretrain ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from genrec.config import ConfigError, GenrecConfig, load_config

EPOCH_COLUMNS = ["epoch", "loss", "mrr", "hr@10", "ndcg@10", "events_per_s", "epoch_time_s"]


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="deployment YAML (default: built-in local defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field, e.g. --set train.workers=4 (repeatable)")


def run(cfg: GenrecConfig, run_name: str | None = None, rebuild: bool = False):
    from genrec.runtime import init_ray, prepare_shards, print_table
    from genrec.train import fit, history_path

    shards = prepare_shards(cfg, rebuild=rebuild)
    init_ray(cfg)
    run_name = run_name or f"pretrain-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"training {cfg.model.preset} (max_seq_len {cfg.model.max_seq_len}) on {cfg.train.workers} workers, "
          f"DeepSpeed ZeRO-{cfg.train.zero_stage}, {cfg.train.epochs} epochs -> {cfg.storage.path('runs', run_name)}")
    result = fit(cfg, shards, run_name)
    print_table(json.loads(history_path(cfg, run_name).read_text()), EPOCH_COLUMNS)
    best = result.get_best_checkpoint(metric="mrr", mode="max") or result.checkpoint
    print(f"best checkpoint: {best.path}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainers.pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--name", default=None, help="run name (default: pretrain-<config name>-<time>)")
    p.add_argument("--rebuild-shards", action="store_true", help="rebuild the shards even if they exist")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run(cfg, args.name, args.rebuild_shards)
    return 0


if __name__ == "__main__":
    sys.exit(main())
