"""Inner half of benchmarks/recbole_peer.py: runs INSIDE the RecBole venv (benchmarks/work/recbole-venv), never
genrec's. Calls run_recbole for SASRec on RecBole's bundled ML-100K (leave-one-out, full ranking) and writes one
JSON object to --result-file. Started with cwd=benchmarks/work/recbole-run so RecBole's ./log and
./log_tensorboard land there.
"""

import argparse
import json
import os
import sys
import time

# torch >= 2.6 defaults torch.load to weights_only=True, and RecBole 1.2.1 reloads its best checkpoint (a pickled
# dict with its config) for the test pass without saying weights_only=False: allow it for this trusted local file.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import recbole
import torch
from recbole.quick_start import run_recbole
from recbole.trainer import Trainer

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--max-len", type=int, default=50)
p.add_argument("--batch-size", type=int, default=256)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seed", type=int, default=2020)
p.add_argument("--result-file", required=True)
args = p.parse_args()
sys.argv = sys.argv[:1]  # RecBole's Config reads `--key=value` overrides from sys.argv; keep ours out of it

torch.set_num_threads(args.threads)

# run_recbole gives only the final metrics, so time the pieces by wrapping the trainer's epoch methods
# (SASRec's trainer is the base Trainer; the assert below catches a subclass that bypasses these).
stats = {"train_s": 0.0, "train_epochs": 0, "train_samples": None, "history": []}
t_start = time.time()
_train_epoch, _valid_epoch = Trainer._train_epoch, Trainer._valid_epoch


def timed_train_epoch(self, train_data, *a, **kw):
    t = time.time()
    out = _train_epoch(self, train_data, *a, **kw)
    stats["train_s"] += time.time() - t
    stats["train_epochs"] += 1
    ds = train_data._dataset
    # SASRec's train set holds one sample per prefix (history -> next item), so len(ds) = training targets;
    # each user's first event is never a target, so the train split's events = samples + users.
    stats["train_samples"] = len(ds)
    stats["train_users"] = int(ds.inter_feat[ds.uid_field].unique().numel())
    return out


def timed_valid_epoch(self, valid_data, *a, **kw):
    score, result = _valid_epoch(self, valid_data, *a, **kw)
    # elapsed since start at each validation: lets a reader see time-to-NDCG@10 without rerunning
    stats["history"].append({"epoch": stats["train_epochs"], "elapsed_s": round(time.time() - t_start, 1),
                             "train_s": round(stats["train_s"], 1), "valid_ndcg@10": round(float(score), 4)})
    return score, result


Trainer._train_epoch, Trainer._valid_epoch = timed_train_epoch, timed_valid_epoch

work = os.path.dirname(os.getcwd())  # benchmarks/work
config = {
    "data_path": os.path.join(recbole.__path__[0], "dataset_example"),  # ML-100K shipped in the wheel
    "checkpoint_dir": os.path.join(work, "recbole-saved"),
    "device": "cpu", "use_gpu": False, "seed": args.seed,
    "loss_type": "CE", "train_neg_sample_args": None,  # softmax over the whole catalogue, no sampled negatives
    "MAX_ITEM_LIST_LENGTH": args.max_len,
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
    "metrics": ["Hit", "NDCG", "MRR"], "topk": [10], "valid_metric": "NDCG@10",
    "epochs": args.epochs, "train_batch_size": args.batch_size, "show_progress": False,
}
res = run_recbole(model="SASRec", dataset="ml-100k", config_dict=config)
wall = time.time() - t_start
assert stats["train_epochs"] > 0, "Trainer._train_epoch was never called: RecBole's trainer changed"

test = res["test_result"]
samples = stats["train_samples"] * stats["train_epochs"]
out = {
    "peer": "recbole", "recbole": recbole.__version__, "torch": torch.__version__, "model": "SASRec",
    "dataset": "ml-100k (RecBole bundled)", "split": "leave-one-out (LS valid_and_test, TO)", "ranking": "full",
    "max_len": args.max_len, "batch_size": args.batch_size, "seed": args.seed,
    "torch_threads": torch.get_num_threads(),
    "epochs": stats["train_epochs"],
    "test_hr@10": round(float(test["hit@10"]), 4), "test_ndcg@10": round(float(test["ndcg@10"]), 4),
    "test_mrr@10": round(float(test["mrr@10"]), 4),
    "best_valid_ndcg@10": round(float(res["best_valid_score"]), 4),
    "train_samples": stats["train_samples"], "train_users": stats["train_users"],
    "train_events": stats["train_samples"] + stats["train_users"],
    "train_wall_s": round(stats["train_s"], 1),
    "samples_per_s": round(samples / stats["train_s"], 1),
    "wall_s": round(wall, 1),  # run_recbole end to end: data load, training, validation, test
    "history": stats["history"],
}
with open(args.result_file, "w") as f:
    json.dump(out, f)
