import math

import numpy as np
import torch

from genrec.metrics import from_sums, hit_rate, mrr, ndcg, rank_sums, target_ranks


def test_ranks_by_hand():
    scores = torch.tensor([[float("-inf"), 0.9, 0.5, 0.1],
                           [float("-inf"), 0.2, 0.3, 0.4],
                           [float("-inf"), 0.3, 0.1, float("-inf")]])
    targets = torch.tensor([2, 1, 1])
    assert target_ranks(scores, targets).tolist() == [2, 3, 1]


def test_metrics_by_hand():
    ranks = [1, 2, 4, 20]
    assert math.isclose(mrr(ranks), (1 + 1 / 2 + 1 / 4 + 1 / 20) / 4)
    assert hit_rate(ranks, 10) == 0.75
    assert math.isclose(ndcg(ranks, 10), (1 + 1 / math.log2(3) + 1 / math.log2(5)) / 4)
    assert math.isclose(ndcg([1], 10), 1.0)
    assert ndcg([11], 10) == 0.0


def test_sums_are_additive_across_shards():
    ranks = torch.tensor([1, 2, 4, 20, 3, 7])
    whole = from_sums(rank_sums(ranks))
    parts = from_sums(rank_sums(ranks[:2]) + rank_sums(ranks[2:]))
    assert whole == parts
    assert math.isclose(whole["mrr"], mrr(ranks.numpy()))
    assert math.isclose(whole["ndcg@10"], ndcg(ranks.numpy(), 10))
    assert whole["eval_users"] == 6
    # MRR@10 drops the rank-20 user's 1/20: (1 + 1/2 + 1/4 + 1/3 + 1/7) / 6
    assert math.isclose(whole["mrr@10"], (1 + 1 / 2 + 1 / 4 + 1 / 3 + 1 / 7) / 6)
    assert math.isnan(from_sums(np.zeros(5))["mrr"])
