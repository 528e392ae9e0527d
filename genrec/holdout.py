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

from genrec.build import item_counts
from genrec.checkpoint import CheckpointError, checkpoint_folders, load_checkpoint, local_checkpoint, read_info
from genrec.config import GenrecConfig
from genrec.console import print_table, say
from genrec.errors import GenrecError
from genrec.selection import TEST, VALID, best_record, selection_key
from genrec.shards import ShardSet
from genrec.tasks import build_plan, count_scorer, evaluate_plan, model_scorer, plan_metrics

SELECTED = "selected.json"  # in a run's folder: the kept epoch, its checkpoint, validation and test figures


def request_plan(cfg: GenrecConfig, shards: ShardSet, split: str):
    """(the evaluation plan of `split`'s requests, the titles' training event counts). Cold titles are those with no
    event in the shards' training rows, as for the trainer's validation."""
    counts = item_counts(shards)
    cold = counts == 0
    cold[0] = False
    return build_plan(shards, cfg.eval, cold, split=split), counts


def score_test(cfg: GenrecConfig, shards: ShardSet, checkpoint: str, threads: int | None = None) -> dict:
    """test_<metric> figures of `checkpoint` (a folder or URI of the store) on the shards' test split."""
    if threads:
        torch.set_num_threads(threads)
    loaded = load_checkpoint(local_checkpoint(cfg, checkpoint),
                             allow_unverified=cfg.storage.allow_unverified_checkpoints)
    plan, _ = request_plan(cfg, shards, "eval")
    model = loaded.model.eval()
    with torch.no_grad():
        sums, _ = evaluate_plan(plan, model_scorer(model, model.item_matrix()), loaded.spec.max_seq_len,
                                batch_size=cfg.eval.batch_size)
    return {TEST + k: v for k, v in plan_metrics(sums, cfg.eval.primary).items()}


def popularity(cfg: GenrecConfig, shards: ShardSet, split: str) -> dict:
    """The bar every table stands beside: titles ranked by their training events (the context's titles excluded, as
    for a model), on the same requests, tasks and metrics as a model. Figures named as `split`'s (valid_/test_)."""
    plan, counts = request_plan(cfg, shards, split)
    sums, _ = evaluate_plan(plan, count_scorer(counts), 1, batch_size=cfg.eval.batch_size)
    return {(VALID if split == "valid" else TEST) + k: v for k, v in plan_metrics(sums, cfg.eval.primary).items()}


def figures(record: dict, prefix: str) -> dict:
    """The record's figures of one split, names without the prefix (mrr, hr@10, ndcg@10, mrr_B, ...)."""
    return {k[len(prefix):]: v for k, v in record.items() if k.startswith(prefix)
            and isinstance(v, (int, float)) and not (isinstance(v, float) and np.isnan(v))}


def write_selected(cfg: GenrecConfig, run_folder: str, record: dict, checkpoint: str, test: dict, key: str,
                   popular: dict | None = None) -> dict:
    """`selected.json` beside a run's history: which epoch was kept (and why), its checkpoint, both splits, and
    popularity's test figures beside them."""
    out = {"rule": f"highest {key} (validation split), earliest of equals",
           "epoch": record["epoch"], "checkpoint": checkpoint,
           "valid": figures(record, VALID), "test": figures(test, TEST),
           **({"test_popularity": figures(popular, TEST)} if popular else {})}
    store = cfg.storage.store()
    store.write_json(f"{run_folder}/{SELECTED}", out)
    return out


def select_and_test(cfg: GenrecConfig, shards: ShardSet, run_name: str, task: str | None = None) -> dict:
    """After a run: the epoch it keeps (genrec.selection's rule on validation, among the checkpoints on storage: Ray
    Train keeps the best two by the same figure and the latest, and a run resumed past a lost record of Ray's keeps
    its older folders too), then that checkpoint's one reading of the test split. Printed, and stored in the run's
    selected.json. `task`: choose on that task's figure (fine-tuning) instead of the primary task's."""
    store = cfg.storage.store()
    key = selection_key(cfg.eval.select_metric, task)
    run_folder = store.path("runs", run_name)
    kept = {}
    for folder in checkpoint_folders(store, run_folder):
        try:
            metrics = read_info(folder, store)["metrics"]
        except (CheckpointError, OSError, KeyError):  # a checkpoint cut short: not a candidate
            continue
        kept.setdefault(int(metrics["epoch"]), (folder, metrics))
    record = best_record([m for _, m in sorted(kept.values(), key=lambda fm: fm[1]["epoch"])], key)
    if record is None:
        raise SelectionError(f"run {run_name}: no kept checkpoint has a validation figure {key} (its validation "
                             f"requests: {', '.join(str(m.get(VALID + 'requests', 0)) for _, m in kept.values())}); "
                             "the validation split has no request for the primary task: check eval.primary and the "
                             "split (data.valid_quantile)")
    checkpoint = kept[record["epoch"]][0]
    test = score_test(cfg, shards, checkpoint)
    selected = write_selected(cfg, run_folder, record, store.uri(checkpoint), test, key,
                              popularity(cfg, shards, "eval"))
    say(f"kept epoch {record['epoch']} (highest {key} {record[key]:.4f}): {store.uri(checkpoint)}")
    suffix = f"_{task}" if task else ""
    names = [f"{m}{suffix}" for m in ("mrr", "hr@10", "ndcg@10", "requests")]
    print_table([{"split": split.replace("_", " "), **{m: selected[split].get(m) for m in names}}
                 for split in ("valid", "test", "test_popularity")], ["split", *names])
    return selected


class SelectionError(GenrecError, RuntimeError):
    """No checkpoint of a run can be chosen: none has a validation figure (the message says which and why)."""
    exit_code = 1
