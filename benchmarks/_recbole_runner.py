"""Inner half of benchmarks/recbole_peer.py: runs INSIDE the RecBole venv (benchmarks/work/recbole-venv), never
genrec's. Trains SASRec on RecBole's bundled ML-100K (leave-one-out, full ranking) the way RecBole's run_recbole does,
early-stopped on validation NDCG@10 (--stopping-step epochs without a gain, or --max-seconds of training), and writes
one JSON object to --result-file. With --scores-file it also writes, from the best-validation model, every test user's
scores over the whole catalogue (numpy .npz: users, test targets and items as RecBole's tokens, i.e. the data's own
ids), so that a caller ranks them with its own evaluator. Started with cwd=benchmarks/work/recbole-run so RecBole's
./log and ./log_tensorboard land there.
"""

import argparse
import json
import os
import sys
import time

# torch >= 2.6 defaults torch.load to weights_only=True, and RecBole 1.2.1 reloads its best checkpoint (a pickled
# dict with its config) for the test pass without saying weights_only=False: allow it for this trusted local file.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import numpy as np
import recbole
import recbole.trainer.trainer as recbole_trainer
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.trainer import Trainer
from recbole.utils import get_model, get_trainer, init_logger, init_seed

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--max-len", type=int, default=50)
p.add_argument("--batch-size", type=int, default=256)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seed", type=int, default=2020)
p.add_argument("--stopping-step", type=int, default=10, help="epochs without a validation gain before stopping")
p.add_argument("--max-seconds", type=float, default=1e9, help="stop after the first validation past this much time")
p.add_argument("--result-file", required=True)
p.add_argument("--scores-file", default=None)
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
_early_stopping = recbole_trainer.early_stopping


def capped_early_stopping(value, best, cur_step, max_step, bigger=True):
    """RecBole's early stopping, and a stop once --max-seconds of training and validation have passed (the cap the
    other rows of the leaderboard train under). The trainer module calls it by the name it imported."""
    best, cur_step, stop, update = _early_stopping(value, best, cur_step, max_step, bigger)
    return best, cur_step, stop or time.time() - t_start > args.max_seconds, update


recbole_trainer.early_stopping = capped_early_stopping

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
    "stopping_step": args.stopping_step,
}
# What run_recbole does (RecBole 1.2.1), with the model kept for the scores below.
config = Config(model="SASRec", dataset="ml-100k", config_dict=config)
init_seed(config["seed"], config["reproducibility"])
init_logger(config)
dataset = create_dataset(config)
train_data, valid_data, test_data = data_preparation(config, dataset)
init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
best_valid_score, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
res = {"best_valid_score": best_valid_score}
wall = time.time() - t_start
assert stats["train_epochs"] > 0, "Trainer._train_epoch was never called: RecBole's trainer changed"
if args.scores_file:
    # RecBole's own full-ranking evaluation masks no history for sequential models: the caller does its own.
    model.eval()
    users, targets, scores = [], [], []
    with torch.no_grad():
        for interaction, _, _, _ in test_data:
            users.append(interaction[dataset.uid_field].numpy())
            targets.append(interaction[dataset.iid_field].numpy())
            scores.append(model.full_sort_predict(interaction).view(len(users[-1]), -1).numpy().astype(np.float32))
    np.savez(args.scores_file, users=dataset.id2token(dataset.uid_field, np.concatenate(users)),
             targets=dataset.id2token(dataset.iid_field, np.concatenate(targets)),
             items=dataset.id2token(dataset.iid_field, np.arange(dataset.item_num)), scores=np.concatenate(scores))

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
