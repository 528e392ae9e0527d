"""A plain single-process SASRec (the reference of ../shared/notes/baselines.md), on genrec's leave-one-out shards.

    .venv/bin/python benchmarks/plain_sasrec.py --data data/ml-100k --source recbole [--seed 0] [--max-seconds 480]

About 150 lines of PyTorch, no Ray, no DeepSpeed: item embedding x sqrt(d) + learned positions, 2 pre-LayerNorm
blocks (1 head, ReLU FFN of width d), a final LayerNorm, logits tied to the item table, full-softmax cross-entropy at
every position; Adam, batch 128 users, the most recent `max_len` training events, early stopping on validation
NDCG@10 with the best state kept. The leaderboard (benchmarks/leaderboard.py) imports it and scores every model with
`rank_users` below, the one evaluator of the benchmark: titles in the context excluded, ties at their mean rank.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class LooData:
    """Per evaluated user: the training sequence, the validation target, the test target (item indices)."""

    num_items: int
    train: list[np.ndarray]  # every user with a training row (item indices, time order)
    users: np.ndarray  # evaluated users (user_id)
    valid_ctx: list[np.ndarray]  # per evaluated user: the context of the validation request
    valid_target: np.ndarray
    test_ctx: list[np.ndarray]  # the context of the test request (the validation event included)
    test_target: np.ndarray
    test_files: list[str]  # the shards' test rows (timestamps, actions, utilities of each context)


def loo_data(shards) -> LooData:
    """The three parts of a leave-one-out shard set (genrec.shards), by user."""
    def table(split):
        return pq.read_table(shards.files(split), filesystem=shards.fs).sort_by("user_id")

    train = [np.asarray(x, np.int64) for x in table("train").column("items").to_pylist()]
    valid, test = table("valid"), table("eval")
    assert valid.column("user_id").equals(test.column("user_id"))
    return LooData(
        num_items=shards.num_items, train=train, users=np.asarray(test.column("user_id").to_pylist()),
        valid_ctx=[np.asarray(x, np.int64) for x in valid.column("items").to_pylist()],
        valid_target=np.asarray([t[0] for t in valid.column("targets").to_pylist()], np.int64),
        test_ctx=[np.asarray(x, np.int64) for x in test.column("items").to_pylist()],
        test_target=np.asarray([t[0] for t in test.column("targets").to_pylist()], np.int64),
        test_files=shards.files("eval"))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, d), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, causal):
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, h, attn_mask=causal, need_weights=False)[0])
        return x + self.ff(self.ln2(x))


class PlainSASRec(nn.Module):
    def __init__(self, num_items: int, max_len: int, d: int = 64, blocks: int = 2, heads: int = 1,
                 dropout: float = 0.2):
        super().__init__()
        self.item = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.pos = nn.Embedding(max_len, d)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, heads, dropout) for _ in range(blocks))
        self.ln = nn.LayerNorm(d)
        self.d = d
        for emb in (self.item, self.pos):
            nn.init.xavier_normal_(emb.weight)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:  # seq (B, T) right-padded with 0
        t = seq.shape[1]
        x = self.item(seq) * math.sqrt(self.d) + self.pos(torch.arange(t, device=seq.device))[None]
        x = self.drop(x)
        causal = torch.ones(t, t, dtype=torch.bool, device=seq.device).triu(1)  # True = not attended
        for b in self.blocks:
            x = b(x, causal)
        return self.ln(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item.weight.t()


def right_padded(seqs: list[np.ndarray], max_len: int) -> torch.Tensor:
    out = np.zeros((len(seqs), max_len), np.int64)
    for i, s in enumerate(seqs):
        s = s[-max_len:]
        out[i, :len(s)] = s
    return torch.from_numpy(out)


def rank_users(score: callable, contexts: list[np.ndarray], targets: np.ndarray, num_items: int,
               batch: int = 256) -> np.ndarray:
    """1-based rank of each user's target among every title (padding and the context's titles excluded; ties at
    their mean rank). score(contexts) -> (B, num_items + 1) scores."""
    ranks = []
    for i in range(0, len(contexts), batch):
        ctx = contexts[i:i + batch]
        with torch.no_grad():
            s = score(ctx).float().clone()
        s[:, 0] = -math.inf
        rows = np.repeat(np.arange(len(ctx)), [len(c) for c in ctx])
        s[torch.from_numpy(rows), torch.from_numpy(np.concatenate(ctx))] = -math.inf
        t = s.gather(1, torch.from_numpy(targets[i:i + batch])[:, None])
        higher, tied = (s > t).sum(1), (s == t).sum(1)
        ranks.append((1 + higher + (tied - 1) / 2).double().numpy())
    return np.concatenate(ranks)


def metrics(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    r = np.asarray(ranks, np.float64)
    return {f"hr@{k}": float(np.mean(r <= k)), f"ndcg@{k}": float(np.mean(np.where(r <= k, 1 / np.log2(r + 1), 0))),
            "mrr": float(np.mean(1 / r))}


def train_plain(data: LooData, seed: int = 0, max_len: int = 200, batch: int = 128, lr: float = 1e-3,
                patience: int = 20, max_epochs: int = 400, max_seconds: float = 1e9, threads: int = 2,
                log=print) -> dict:
    """Train to early stopping on validation NDCG@10; returns the best model, its epoch and the timings."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    model = PlainSASRec(data.num_items, max_len)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    seqs = [s[-(max_len + 1):] for s in data.train if len(s) >= 2]
    inputs = right_padded([s[:-1] for s in seqs], max_len)
    labels = right_padded([s[1:] for s in seqs], max_len)
    events_per_epoch = int((labels > 0).sum())

    def score(ctx):
        h = model.hidden(right_padded(ctx, max_len))
        last = torch.tensor([min(len(c), max_len) - 1 for c in ctx])
        return model.logits(h[torch.arange(len(ctx)), last])

    best, best_state, best_epoch, curve = -1.0, None, 0, []
    start = time.perf_counter()
    train_s = 0.0
    for epoch in range(1, max_epochs + 1):
        model.train()
        t0 = time.perf_counter()
        losses = []
        for idx in np.array_split(rng.permutation(len(seqs)), max(1, math.ceil(len(seqs) / batch))):
            x, y = inputs[idx], labels[idx]
            logits = model.logits(model.hidden(x))
            logits[..., 0] = -math.inf
            loss = F.cross_entropy(logits[y > 0], y[y > 0])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        train_s += time.perf_counter() - t0
        model.eval()
        ndcg = metrics(rank_users(score, data.valid_ctx, data.valid_target, data.num_items))["ndcg@10"]
        curve.append({"epoch": epoch, "loss": float(np.mean(losses)), "valid_ndcg@10": ndcg,
                      "wall_s": time.perf_counter() - start})
        log(f"plain sasrec epoch {epoch}: loss {np.mean(losses):.4f} valid ndcg@10 {ndcg:.4f}")
        if ndcg > best:
            best, best_state, best_epoch = ndcg, copy.deepcopy(model.state_dict()), epoch
            best_wall = time.perf_counter() - start
        if epoch - best_epoch >= patience or time.perf_counter() - start > max_seconds:
            break
    model.load_state_dict(best_state)
    model.eval()
    return {"model": model, "score": score, "best_epoch": best_epoch, "epochs": epoch, "valid_ndcg@10": best,
            "wall_s": time.perf_counter() - start, "wall_to_best_s": best_wall,
            "events_per_s": events_per_epoch * epoch / train_s, "curve": curve}


def main(argv=None) -> int:
    from genrec.config import load_config
    from genrec.preparation import prepare_shards

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="a MovieLens folder or RecBole atomic files")
    p.add_argument("--source", default="movielens", choices=["movielens", "recbole"])
    p.add_argument("--storage", default="benchmarks/work/plain", help="where the shards are written")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-len", type=int, default=200)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--max-seconds", type=float, default=1e9)
    args = p.parse_args(argv)
    cfg = load_config(None, [f"data.source={args.source}", f"data.path={args.data}", "data.split=leave_one_out",
                             f"storage.root={args.storage}", f"name={args.source}-loo"])
    data = loo_data(prepare_shards(cfg))
    out = train_plain(data, args.seed, args.max_len, patience=args.patience, max_seconds=args.max_seconds)
    test = metrics(rank_users(out["score"], data.test_ctx, data.test_target, data.num_items))
    print(json.dumps({k: v for k, v in out.items() if k not in ("model", "score", "curve")} | {"test": test}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
