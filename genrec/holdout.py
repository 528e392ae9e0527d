"""The test split, read once: a selected checkpoint scored on the held-out test requests.

Every choice (the epoch a run keeps, early stopping, the trial a sweep serves) is made on the validation split
(genrec.selection). Only then is the chosen checkpoint scored here, once, on every test request (no user sampling),
with the same tasks, delays and metrics as validation, in one process: plain torch, no Ray, no DeepSpeed. The figures
come back as test_<metric> and are stored beside the choice (`selected.json` of a run, the winner manifest of a
sweep), never fed back into one.
"""

from __future__ import annotations

import numpy as np
import torch

from genrec.checkpoint import load_checkpoint
from genrec.config import GenrecConfig
from genrec.selection import TEST, VALID, best_record, selection_key
from genrec.shards import ShardSet
from genrec.tasks import build_plan, evaluate_plan, model_scorer, plan_metrics
from genrec.build import item_counts
from genrec.train import local_checkpoint

SELECTED = "selected.json"  # in a run's folder: the kept epoch, its checkpoint, validation and test figures


def score_test(cfg: GenrecConfig, shards: ShardSet, checkpoint: str, threads: int | None = None) -> dict:
    """test_<metric> figures of `checkpoint` (a folder or URI of the store) on the shards' test split."""
    if threads:
        torch.set_num_threads(threads)
    loaded = load_checkpoint(local_checkpoint(cfg, checkpoint))
    cold = item_counts(shards) == 0  # as the trainer's validation: no event in the shards' training rows
    cold[0] = False
    plan = build_plan(shards, cfg.eval, cold, split="eval")
    model = loaded.model.eval()
    with torch.no_grad():
        sums, _ = evaluate_plan(plan, model_scorer(model, model.item_matrix()), loaded.spec.max_seq_len,
                                batch_size=cfg.eval.batch_size)
    return {TEST + k: v for k, v in plan_metrics(sums, cfg.eval.primary).items()}


def figures(record: dict, prefix: str) -> dict:
    """The record's figures of one split, names without the prefix (mrr, hr@10, ndcg@10, mrr_B, ...)."""
    return {k[len(prefix):]: v for k, v in record.items() if k.startswith(prefix)
            and isinstance(v, (int, float)) and not (isinstance(v, float) and np.isnan(v))}


def write_selected(cfg: GenrecConfig, run_folder: str, record: dict, checkpoint: str, test: dict, key: str) -> dict:
    """`selected.json` beside a run's history: which epoch was kept (and why), its checkpoint, both splits."""
    out = {"rule": f"highest {key} (validation split), earliest of equals",
           "epoch": record["epoch"], "checkpoint": checkpoint,
           "valid": figures(record, VALID), "test": figures(test, TEST)}
    store = cfg.storage.store()
    store.write_json(f"{run_folder}/{SELECTED}", out)
    return out


def select_and_test(cfg: GenrecConfig, shards: ShardSet, run_name: str, result, task: str | None = None) -> dict:
    """After a run: the epoch it keeps (genrec.selection's rule on validation, among the checkpoints Ray Train kept:
    the best two by the same figure, and the latest), then that checkpoint's one reading of the test split. Printed,
    and stored in the run's selected.json. `task`: choose on that task's figure (fine-tuning) instead of the primary
    task's."""
    from genrec.runtime import print_table

    store = cfg.storage.store()
    key = selection_key(cfg.eval.select_metric, task)
    kept = {int(m["epoch"]): (c, m) for c, m in result.best_checkpoints}
    record = best_record([m for _, m in sorted(kept.values(), key=lambda cm: cm[1]["epoch"])], key)
    checkpoint = kept[record["epoch"]][0].path
    test = score_test(cfg, shards, checkpoint)
    selected = write_selected(cfg, store.path("runs", run_name), record, store.uri(checkpoint), test, key)
    print(f"kept epoch {record['epoch']} (highest {key} {record[key]:.4f}): {store.uri(checkpoint)}")
    suffix = f"_{task}" if task else ""
    names = [f"{m}{suffix}" for m in ("mrr", "hr@10", "ndcg@10", "requests")]
    print_table([{"split": split, **{m: selected[split].get(m) for m in names}} for split in ("valid", "test")],
                ["split", *names])
    return selected
