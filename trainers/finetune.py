"""Fine-tune a pre-trained checkpoint on one downstream task: `python -m trainers.finetune --config C`.

Thin Ray wiring over `genrec.train`, the same TorchTrainer and worker loop as pre-training. `finetune.checkpoint`
names the checkpoint (or "winner": this config's winner manifest), `finetune.task` the task whose objective is
trained (a horizon task trains on its own future window; the others on next-event prediction) and `finetune.mode`
what learns: "head" (backbone, embeddings and item tower frozen, a new decoding head) or "full". The run first
scores every task with the pre-trained weights (epoch 0), so the table shows what fine-tuning transferred:

    python -m trainers.finetune --config configs/local.yaml --set finetune.task=A --set finetune.mode=full
"""

from __future__ import annotations

import sys
import time

from genrec.console import LOG_NAME, keep_log, print_table, say
from genrec.entrypoint import run_entrypoint
from genrec.config import GenrecConfig


def run(cfg: GenrecConfig, run_name: str | None = None, rebuild: bool = False, resume: str | None = None):
    # Imported when a run starts, not at the top: they reach torch, DeepSpeed and Ray Train, which
    # `python -m trainers.finetune --help` must not wait for.
    from genrec.holdout import select_and_test
    from genrec.preparation import prepare_shards
    from genrec.ray_session import init_ray
    from genrec.finetune import finetune_setup
    from genrec.runs import check_run_name, read_history
    from genrec.train import fit

    run_name, resume_from = check_run_name(cfg, run_name, resume)
    task = cfg.finetune.task
    run_name = run_name or f"finetune-{cfg.name}-{task}-{cfg.finetune.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    keep_log(cfg.storage.store(), "runs", run_name, LOG_NAME)
    shards = prepare_shards(cfg, rebuild=rebuild)
    cfg, finetune = finetune_setup(cfg, shards)
    init_ray(cfg)
    say(f"fine-tuning {finetune.checkpoint} on task {task} ({finetune.mode}), {cfg.train.epochs} epochs on "
        f"{cfg.train.workers} workers -> {cfg.storage.store().uri(cfg.storage.store().path('runs', run_name))}")
    result = fit(cfg, shards, run_name, finetune=finetune, resume_from=resume_from, recover=False)
    history = read_history(cfg, run_name)
    columns = ["epoch", "loss"] + [f"valid_mrr_{t}" for t in cfg.eval.tasks] + [f"valid_hr@10_{task}"]
    print_table(history, columns)
    say(f"task {task} (validation): MRR {history[0][f'valid_mrr_{task}']:.4f} before fine-tuning, "
        f"{history[-1][f'valid_mrr_{task}']:.4f} after {len(history) - 1} epochs")
    if result.checkpoint is None:  # resumed from a checkpoint of the last epoch: nothing left to train
        say(f"nothing to train: {run_name} had finished its {cfg.train.epochs} epochs; pass --set "
            "finetune.epochs=N to train longer")
        return result
    select_and_test(cfg, shards, run_name, task)
    return result


def main(argv: list[str] | None = None) -> int:
    return run_entrypoint("python -m trainers.finetune", __doc__, run, argv, resume="RUN")


if __name__ == "__main__":
    sys.exit(main())
