"""Ranking metrics over a full candidate set (pure functions, tested on hand-computed rankings).

A rank is 1-based: 1 + the number of candidates scored strictly higher than the target. MRR here is the mean
reciprocal rank over the full catalogue (no cut-off), the paper's headline metric; HR@k and NDCG@k (one relevant
title, so IDCG = 1) sit beside it.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """scores (B, V), targets (B,) column indices -> 1-based ranks (B,). Excluded candidates should be -inf."""
    target_scores = scores.gather(1, targets.long()[:, None])
    return 1 + (scores > target_scores).sum(dim=1)


def mrr(ranks) -> float:
    r = np.asarray(ranks, dtype=np.float64)
    return float(np.mean(1.0 / r)) if r.size else float("nan")


def hit_rate(ranks, k: int) -> float:
    r = np.asarray(ranks)
    return float(np.mean(r <= k)) if r.size else float("nan")


def ndcg(ranks, k: int) -> float:
    r = np.asarray(ranks, dtype=np.float64)
    if not r.size:
        return float("nan")
    return float(np.mean(np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)))


def rank_sums(ranks: torch.Tensor, k: int = 10) -> torch.Tensor:
    """[count, sum 1/r, hits@k, sum ndcg@k, sum 1/r over r <= k] as float64, so shards of users can be all-reduced
    and divided later."""
    r = ranks.double()
    hit = (r <= k).double()
    return torch.stack([torch.tensor(float(r.numel()), dtype=torch.float64), (1.0 / r).sum(), hit.sum(),
                        (hit / torch.log2(r + 1.0)).sum(), (hit / r).sum()])


def from_sums(sums, k: int = 10) -> dict[str, float]:
    """MRR over the full ranking, HR@k, NDCG@k and MRR@k (the truncated MRR that RecBole reports)."""
    n, rr, hits, dcg, rr_k = (float(x) for x in sums)
    if n == 0:
        return {"mrr": math.nan, f"hr@{k}": math.nan, f"ndcg@{k}": math.nan, f"mrr@{k}": math.nan, "eval_users": 0}
    return {"mrr": rr / n, f"hr@{k}": hits / n, f"ndcg@{k}": dcg / n, f"mrr@{k}": rr_k / n, "eval_users": int(n)}
