import math

import numpy as np
import torch

from genrec.metrics import (from_sums, hit_rate, mrr, multi_rank_sums, ndcg, rank_sums, relevant_ranks,
                            target_ranks)


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
    assert whole["requests"] == 6
    # MRR@10 drops the rank-20 user's 1/20: (1 + 1/2 + 1/4 + 1/3 + 1/7) / 6
    assert math.isclose(whole["mrr@10"], (1 + 1 / 2 + 1 / 4 + 1 / 3 + 1 / 7) / 6)
    assert math.isnan(from_sums(np.zeros(5))["mrr"])


def test_relevant_ranks_match_single_target_ranks_and_handle_several():
    inf = float("-inf")
    scores = torch.tensor([[inf, 0.9, 0.5, 0.1, 0.5],
                           [inf, 0.2, 0.3, 0.4, 0.1]])
    rel = torch.tensor([[2, 3, 4], [1, 0, 0]])
    valid = torch.tensor([[True, True, True], [True, False, False]])
    ranks = relevant_ranks(scores, rel, valid)
    # Row 0: the two 0.5s share ranks 2 and 3 (2.5 each); 0.1 has three above it (-inf is below). Row 1: 0.2 is third.
    assert ranks.tolist() == [[2.5, 4.0, 2.5], [3.0, math.inf, math.inf]]
    assert ranks[1, 0] == target_ranks(scores, rel[:, 0])[1]  # no tie: the strict rank
    # Everything tied: the middle of the catalogue, not the top.
    flat = relevant_ranks(torch.zeros(1, 9), torch.tensor([[4]]), torch.tensor([[True]]))
    assert flat.item() == 5.0
    # Counted (the default for few relevant titles) and sorted, the same ranks.
    assert relevant_ranks(scores, rel, valid, count_up_to=0).tolist() == ranks.tolist()
    assert relevant_ranks(torch.zeros(1, 9), torch.tensor([[4]]), torch.tensor([[True]]), count_up_to=0).item() == 5.0


def test_counted_and_sorted_ranks_agree_with_ties_and_excluded_titles():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (16, 300), generator=gen).float() / 20  # many ties
    scores[:, 0] = float("-inf")
    scores[:5, 7] = float("-inf")  # an excluded title among the relevant ones: below every candidate
    rel = torch.randint(1, 300, (16, 6), generator=gen)
    rel[:5, 0] = 7
    valid = torch.rand(16, 6, generator=gen) > 0.3
    valid[3, 1] = True
    counted = relevant_ranks(scores, rel, valid, count_up_to=6)
    assert torch.equal(counted, relevant_ranks(scores, rel, valid, count_up_to=0))
    # by hand for one row: the scores strictly above, plus the middle of the titles tied with it (itself included)
    s, t = scores[3], scores[3, rel[3, 1]]
    above, tied = int((s > t).sum()), int((s == t).sum())
    assert tied > 1 and counted[3, 1].item() == above + (tied + 1) / 2
    # a diverged model's NaN scores rank last, as the sort has them, not first
    nan = torch.full((1, 5), float("nan"))
    assert relevant_ranks(nan, torch.tensor([[2]]), torch.tensor([[True]])).item() == 5.5
    # no relevant titles: no ranks
    assert relevant_ranks(scores, rel[:, :0], valid[:, :0]).shape == (16, 0)


def test_multi_relevant_sums_by_hand():
    inf = math.inf
    ranks = torch.tensor([[2.0, 5.0, 11.0], [3.0, inf, inf], [12.0, 20.0, inf]])
    n, rr, hits, dcg, rr_k = multi_rank_sums(ranks, k=10).tolist()
    assert n == 3
    assert math.isclose(rr, 1 / 2 + 1 / 3 + 1 / 12)
    assert hits == 2
    # Row 0: relevant at 2 and 5 inside the top 10 (11 outside); ideal: 3 relevant at ranks 1, 2, 3.
    ndcg0 = (1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    ndcg1 = 1 / math.log2(4)  # one relevant title at rank 3: the single-target NDCG
    assert math.isclose(dcg, ndcg0 + ndcg1)
    assert math.isclose(rr_k, 1 / 2 + 1 / 3)
    # One relevant title per row: the same sums as the single-target path.
    single = torch.tensor([1, 2, 4, 20, 3, 7])
    assert torch.allclose(multi_rank_sums(single[:, None].double()), rank_sums(single))
