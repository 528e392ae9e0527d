"""Ranking metrics over a full candidate set (pure functions, tested on hand-computed rankings).

A rank is 1-based: 1 + the number of candidates scored strictly higher than the target (`relevant_ranks`, used by
evaluation, splits ties: the mean of the ranks the tied titles span). MRR here is the mean
reciprocal rank over the full candidate set (no cut-off), the paper's headline metric; HR@k and NDCG@k sit beside it.
With several relevant titles (a long-horizon task), MRR and HR@k read the best-ranked one and NDCG@k is binary-relevance
DCG over the top k divided by the ideal DCG of min(relevant, k) titles; with one relevant title that is 1/log2(1 + r).
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


# Up to this many relevant titles a row, relevant_ranks counts the scores above each one (two passes over the row per
# title); with more, one sort of the row costs less (benchmarks/rank_count.py).
COUNT_RANKS_UP_TO = 4


def relevant_ranks(scores: torch.Tensor, relevant: torch.Tensor, valid: torch.Tensor,
                   count_up_to: int = COUNT_RANKS_UP_TO) -> torch.Tensor:
    """scores (B, V) (excluded candidates -inf), relevant (B, R) column indices, valid (B, R) -> 1-based ranks
    (B, R) as float64, +inf where not valid. No (B, R, V) tensor: each relevant title's scores above are counted in
    turn, or, with more than `count_up_to` relevant titles, one sort per row is searched (the same ranks either way).

    Ties take the mean of the ranks they span (a target tied with 3 others at the top ranks 2.5): counting only
    strictly higher scores would reward a model for scoring everything alike (low-precision scores tie often)."""
    scores = scores.float()
    if relevant.shape[1] == 0:
        return torch.empty(relevant.shape, dtype=torch.float64, device=scores.device)
    targets = scores.gather(1, relevant.long())
    # A NaN score (a diverged model) compares false both ways, so counting would rank a NaN target first; the sort
    # puts NaNs last, as ranks always had them.
    if relevant.shape[1] <= count_up_to and not scores.isnan().any():
        columns = targets.split(1, dim=1)
        greater = torch.stack([(scores > t).sum(1) for t in columns], 1)  # scores strictly above
        at_least = torch.stack([(scores >= t).sum(1) for t in columns], 1)  # itself included
    else:
        negated = torch.sort(-scores, dim=1).values.contiguous()  # ascending; -score < -s  <=>  score > s
        negated_targets = (-targets).contiguous()
        greater = torch.searchsorted(negated, negated_targets, side="left")
        at_least = torch.searchsorted(negated, negated_targets, side="right")
    ranks = greater.double() + (at_least - greater + 1).double() / 2
    return ranks.masked_fill(~valid.bool(), math.inf)


def multi_rank_sums(ranks: torch.Tensor, k: int = 10) -> torch.Tensor:
    """ranks (B, R) of each row's relevant titles (+inf = padding; every row has one finite rank) -> the same five
    sums as rank_sums: [count, sum 1/best, hits@k, sum ndcg@k, sum 1/best over best <= k]."""
    r = ranks.double()
    if r.numel() == 0:
        return torch.zeros(5, dtype=torch.float64)
    best = r.min(dim=1).values
    n_rel = torch.isfinite(r).sum(dim=1)
    hit = (best <= k).double()
    dcg = torch.where(r <= k, 1.0 / torch.log2(r.clamp(max=1e18) + 1.0), torch.zeros_like(r)).sum(dim=1)
    discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
    ideal = torch.cumsum(discounts, 0)[(n_rel.clamp(min=1, max=k) - 1)]
    return torch.stack([torch.tensor(float(r.shape[0]), dtype=torch.float64), (1.0 / best).sum(), hit.sum(),
                        (dcg / ideal).sum(), (hit / best).sum()])


def from_sums(sums, k: int = 10) -> dict[str, float]:
    """MRR over the full ranking, HR@k, NDCG@k, MRR@k (the truncated MRR that RecBole reports) and the number of
    scored requests."""
    n, rr, hits, dcg, rr_k = (float(x) for x in sums)
    if n == 0:
        return {"mrr": math.nan, f"hr@{k}": math.nan, f"ndcg@{k}": math.nan, f"mrr@{k}": math.nan, "requests": 0}
    return {"mrr": rr / n, f"hr@{k}": hits / n, f"ndcg@{k}": dcg / n, f"mrr@{k}": rr_k / n, "requests": int(n)}
