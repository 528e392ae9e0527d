"""Pre-train one model: `python -m trainers.pretrain --config configs/local.yaml [--set train.workers=4 ...]`.

Thin Ray wiring over `genrec.train`: builds the shards if needed, runs the TorchTrainer, prints the epoch table and
the checkpoint path. Works the same under `ray job submit --working-dir . -- python -m trainers.pretrain ...`.
A run whose driver died (or that should train longer: `--set train.epochs=N`) goes on with `--resume RUN` from its
last epoch's checkpoint; a lost worker is retried by Ray Train itself (`train.max_failures`).
"""

from __future__ import annotations

import sys
import time

from genrec.console import LOG_NAME, keep_log, print_table, say
from genrec.entrypoint import run_entrypoint
from genrec.config import GenrecConfig

EPOCH_COLUMNS = ["epoch", "loss", "valid_mrr", "valid_hr@10", "valid_ndcg@10", "events_per_s", "epoch_time_s"]


def run(cfg: GenrecConfig, run_name: str | None = None, rebuild: bool = False, resume: str | None = None):
    # Imported when a run starts, not at the top: they reach torch, DeepSpeed and Ray Train, which
    # `python -m trainers.pretrain --help` must not wait for.
    from genrec.defaults import resolve as resolve_defaults
    from genrec.holdout import select_and_test
    from genrec.preparation import prepare_shards
    from genrec.ray_session import init_ray
    from genrec.engine import zero_stage
    from genrec.runs import check_run_name, read_history
    from genrec.train import fit

    run_name, resume_from = check_run_name(cfg, run_name, resume)
    run_name = run_name or f"pretrain-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    keep_log(cfg.storage.store(), "runs", run_name, LOG_NAME)
    shards = prepare_shards(cfg, rebuild=rebuild)
    cfg = resolve_defaults(cfg, shards)
    init_ray(cfg)
    say(f"training {cfg.model.preset} (max_seq_len {cfg.model.max_seq_len}) on {cfg.train.workers} workers, "
          f"DeepSpeed ZeRO-{zero_stage(cfg)}, up to {cfg.train.epochs} epochs -> "
        f"{cfg.storage.store().uri(cfg.storage.store().path('runs', run_name))}")
    result = fit(cfg, shards, run_name, resume_from=resume_from, recover=False)
    history = read_history(cfg, run_name)
    print_table(history, EPOCH_COLUMNS)
    if result.checkpoint is None:  # resumed from a checkpoint of the last epoch: nothing left to train
        say(f"nothing to train: {run_name} had finished its {cfg.train.epochs} epochs"
            + (f" ({cfg.storage.store().uri(resume_from)})" if resume_from else "")
            + "; pass --set train.epochs=N to train longer")
        return result
    select_and_test(cfg, shards, run_name)
    return result


def main(argv: list[str] | None = None) -> int:
    return run_entrypoint("python -m trainers.pretrain", __doc__, run, argv, resume="RUN")


if __name__ == "__main__":
    sys.exit(main())
