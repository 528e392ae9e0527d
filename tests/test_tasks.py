"""Downstream tasks on hand-made shards: requests, targets, pools, delays and their metrics, computed by hand."""

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from genrec.config import load_config
from genrec.data.schema import Dataset
from genrec.shards import write_shards
from genrec.tasks import build_plan, evaluate_plan, plan_metrics, request_positions
from genrec.build import item_counts

D = 86_400
ML_SMALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"


def _dataset() -> Dataset:
    # Cutoff: day 10. Titles 1..6 (index = id). Titles 4, 5, 6 launch after the cutoff: cold start.
    rows = [(1, 1, 1 * D), (1, 2, 2 * D), (1, 3, 3 * D),  # user 1, before the cutoff
            (1, 4, 10 * D), (1, 1, 10 * D + 60), (1, 5, 10 * D + 120),  # a session at the cutoff
            (1, 6, 12 * D), (1, 2, 12 * D + 30),  # a session two days later
            (1, 5, 15 * D),  # and one at day 15
            (2, 2, 5 * D), (2, 3, 11 * D), (2, 6, 13 * D),  # user 2: one event before (no training row)
            (3, 1, 2 * D), (3, 3, 4 * D)]  # user 3: training only
    users, items, ts = (list(c) for c in zip(*rows))
    events = pa.table({"user_id": pa.array(users, pa.int64()), "item_id": pa.array(items, pa.int64()),
                       "timestamp": pa.array(ts, pa.int64()), "action": pa.array([0] * len(rows), pa.int32()),
                       "utility": pa.array([1.0] * len(rows), pa.float32())})
    catalogue = pa.table({"item_id": pa.array([1, 2, 3, 4, 5, 6], pa.int64()), "title": list("abcdef"),
                          "genres": pa.array([[]] * 6, pa.list_(pa.string())),
                          "year": pa.array([None] * 6, pa.int32()),
                          "launch_ts": pa.array([0, 0, 0, 10 * D, 10 * D, 12 * D], pa.int64()),
                          "text": [""] * 6})
    return Dataset(events, catalogue, "tasks")


TASKS = ["eval.tasks={B: {targets: next}, A: {targets: horizon, start_h: 24, end_h: 720, skip: 1}, "
         "C: {targets: next, candidates: popular, pool_size: 3, window_days: 2}, cold: {targets: cold}}"]


@pytest.fixture()
def plan(tmp_path):
    shards = write_shards(_dataset(), tmp_path / "s", cutoff=10 * D)
    counts = item_counts(shards)
    cold = counts == 0
    cold[0] = False
    assert cold.tolist() == [False, False, False, False, True, True, True]
    cfg = load_config(None, TASKS + ["eval.delays_h=[48]", "eval.requests_per_user=3"])
    return build_plan(shards, cfg.eval, cold, split="eval")


def test_requests_targets_and_pools_by_hand(plan):
    got = {(r.user, r.ts // D): ({t: v.tolist() for t, v in r.targets.items()},
                                 {t: v.tolist() for t, v in r.pools.items()}, r.ends) for r in plan.requests}
    # User 1's request at day 15 has no target (title 5 was seen) and is dropped; user 3 has no evaluation events.
    assert sorted(got) == [(1, 10), (1, 12), (2, 11), (2, 13)]
    # Day 10 (first event after the cutoff): next new title 4 (cold); A: titles 1-30 days later after skipping one
    # event: 6 (day 12) and 5 (day 15), title 2 being in the context. C: the 2 days before hold no event: no pool.
    assert got[(1, 10)][:2] == ({"B": [4], "A": [6, 5], "cold": [4]}, {})
    # Day 12 (a session start): title 6, cold; A has nothing new after it (5 is in the context). C: days 10-11 saw
    # 4, 1, 5, 3 once each (ties by index): the top 3 are 1, 3, 4, without the target 6.
    assert got[(1, 12)][:2] == ({"B": [6], "cold": [6]}, {})
    # User 2 at day 11: next 3 (trained, not cold), first cold title 6; C: days 9-10 give 1, 4, 5, not 3.
    assert got[(2, 11)][:2] == ({"B": [3], "A": [6], "cold": [6]}, {})
    # Day 13: days 11-12 saw 3, 6, 2 once each: the pool 2, 3, 6 holds the target 6 (launched on day 12).
    assert got[(2, 13)][:2] == ({"B": [6], "C": [6], "cold": [6]}, {"C": [2, 3, 6]})
    # Contexts: delay 0 = every event before the request; 48 h = events at or before r - 48 h.
    assert got[(1, 10)][2] == {0.0: 3, 48.0: 3} and got[(1, 12)][2] == {0.0: 6, 48.0: 4}
    assert got[(2, 11)][2] == {0.0: 1, 48.0: 1} and got[(2, 13)][2] == {0.0: 2, 48.0: 2}
    assert plan.counts() == {"B": 4, "A": 2, "C": 1, "cold": 4}


# Fixed scores by item index (column 0 is padding): 5 > 2 > 6 > 3 > 4 > 1.
SCORES = torch.tensor([0.0, 0.1, 0.5, 0.3, 0.2, 0.6, 0.4])


def fixed_scorer(uses, batch):
    return SCORES.repeat(batch["items"].shape[0], 1)


def test_metrics_of_a_fixed_ranking_by_hand(plan):
    sums, top = evaluate_plan(plan, fixed_scorer, max_seq_len=4, batch_size=3, topk=2)
    m = plan_metrics(sums, primary="B")
    # B: ranks 3 (4 among 5, 6, 4), 1 (only 6 left), 3 (3 among 5, 6, 3, 4, 1), 2 (6 after 5).
    assert math.isclose(m["mrr_B"], (1 / 3 + 1 + 1 / 3 + 1 / 2) / 4) and m["requests_B"] == 4
    assert m["mrr"] == m["mrr_B"] and m["hr@10"] == 1.0
    # A: [6, 5] -> 5 is first (best rank 1; both relevant at ranks 1, 2: NDCG 1); [6] after 5 -> rank 2.
    assert math.isclose(m["mrr_A"], (1 + 1 / 2) / 2)
    assert math.isclose(m["ndcg@10_A"], (1 + 1 / math.log2(3)) / 2)
    # C: in the pool 2, 3, 6 minus the context (2, 3), the target is alone.
    assert m["mrr_C"] == 1.0 and m["requests_C"] == 1
    # cold: 3, 1, 2 (6 after 5), 2.
    assert math.isclose(m["mrr_cold"], (1 / 3 + 1 + 1 / 2 + 1 / 2) / 4)
    # 48 h stale: user 1 at day 12 sees only 1, 2, 3, 4, so 5 outranks the target 6 (rank 2 instead of 1).
    assert math.isclose(m["mrr_B_48h"], (1 / 3 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
    assert m["requests_B_48h"] == 4
    # Top-2 lists at delay 0, seen titles excluded.
    assert sorted(top) == [(1, 10 * D, [5, 6]), (1, 12 * D, [6]), (2, 11 * D, [5, 6]), (2, 13 * D, [5, 6])]


def test_ranks_are_split_across_workers_without_loss(plan):
    whole, _ = evaluate_plan(plan, fixed_scorer, max_seq_len=4, batch_size=2)
    parts = [evaluate_plan(plan, fixed_scorer, max_seq_len=4, rank=r, world=3, batch_size=1)[0] for r in range(3)]
    for key, v in whole.items():
        assert torch.allclose(v, sum(p[key] for p in parts)), key


def test_popular_pools_count_only_the_days_before_the_request():
    from genrec.tasks import HOUR, PopularPools

    # Titles 1..4; title 4 launches at hour 50. Events (title @ hour): 1@1, 2@2, 2@3, 3@30, 3@31, 3@32, 4@50, 1@60.
    items = np.array([1, 2, 2, 3, 3, 3, 4, 1])
    ts = np.array([1, 2, 3, 30, 31, 32, 50, 60]) * HOUR
    launch = np.array([np.iinfo(np.int64).max, 0, 0, 0, 50 * HOUR])
    pools = PopularPools(items, ts, launch)
    # A request at 33:30 counts the events before 33:00: over 2 days, 3 (three events) then 2 (two).
    assert pools.pool(int(33.5 * HOUR), 2, 2).tolist() == [3, 2]
    assert pools.pool(int(33.5 * HOUR), 5, 1).tolist() == [3]  # over 1 day (hours 9-33): only title 3
    assert pools.pool(50 * HOUR + 10, 5, 1).tolist() == [3]  # 4's event at 50:00 is in the request's hour: not yet
    assert pools.pool(61 * HOUR, 5, 1).tolist() == [1, 4]  # hours 37-61: one event each, ties by index
    assert pools.pool(61 * HOUR, 5, 1).tolist() == pools.pool(int(61.9 * HOUR), 5, 1).tolist()  # one count per hour


def test_request_positions():
    ts = np.array([0, 10, 20, 5000, 5010, 9000, 20000])
    assert request_positions(ts, 1, 3600, 5) == [1, 3, 5, 6]  # gaps of 4980, 3990 and 11000 s
    assert request_positions(ts, 1, 3600, 2) == [1, 3]
    assert request_positions(ts, 7, 3600, 2) == []
    # a user new in the window (nothing before position 0): its first session is context, not a request
    assert request_positions(ts, 0, 3600, 5) == [3, 5, 6]
    assert request_positions(ts, 0, 3600, 1) == [3]


def test_a_user_new_in_the_window_is_asked_after_its_first_session(tmp_path):
    """User 4's first event comes after the cutoff: its first session (days 11) is its context, its request is its
    next session start (day 14), and the target is that session's first title."""
    rows = [(1, 1, 1 * D), (1, 2, 2 * D), (1, 3, 11 * D),  # user 1: trains on days 1-2, asked at day 11
            (4, 2, 11 * D), (4, 3, 11 * D + 60), (4, 1, 14 * D), (4, 3, 14 * D + 60)]  # user 4: new after the cutoff
    users, items, ts = (list(c) for c in zip(*rows))
    events = pa.table({"user_id": pa.array(users, pa.int64()), "item_id": pa.array(items, pa.int64()),
                       "timestamp": pa.array(ts, pa.int64()), "action": pa.array([0] * len(rows), pa.int32()),
                       "utility": pa.array([1.0] * len(rows), pa.float32())})
    catalogue = pa.table({"item_id": pa.array([1, 2, 3], pa.int64()), "title": list("abc"),
                          "genres": pa.array([[]] * 3, pa.list_(pa.string())), "year": pa.array([None] * 3, pa.int32()),
                          "launch_ts": pa.array([0, 0, 0], pa.int64()), "text": [""] * 3})
    shards = write_shards(Dataset(events, catalogue, "new-user"), tmp_path / "s", cutoff=10 * D)
    assert (shards.manifest["counts"]["eval_users"], shards.manifest["counts"]["eval_new_users"]) == (2, 1)
    cfg = load_config(None, ["eval.tasks={B: {targets: next}}", "eval.primary=B", "finetune.task=B",
                              "eval.requests_per_user=3"])
    plan = build_plan(shards, cfg.eval, np.zeros(4, bool), split="eval")
    got = {(r.user, r.ts // D): (r.ends, r.targets["B"].tolist()) for r in plan.requests}
    assert got == {(1, 11): ({0.0: 2}, [3]), (4, 14): ({0.0: 2}, [1])}
    items, ts, _, _ = plan.seqs[next(r.seq for r in plan.requests if r.user == 4)]
    assert items.tolist() == [2, 3, 1, 3] and ts.tolist()[:2] == [11 * D, 11 * D + 60]


@pytest.mark.skipif(not ML_SMALL.is_dir(), reason="needs ../shared/data/ml-latest-small")
def test_leave_one_out_next_is_the_last_event(tmp_path):
    from genrec.data.loaders import load

    ds = load("movielens", str(ML_SMALL))
    shards = write_shards(ds, tmp_path / "loo", None, split="leave_one_out")
    counts = item_counts(shards)
    cfg = load_config(None, ["data.split=leave_one_out"])
    plan = build_plan(shards, cfg.eval, counts == 0, split="eval")
    # One request per evaluated user, at the held-out last event, whose title is the B target (no re-ratings).
    assert len(plan.requests) == shards.manifest["counts"]["eval_users"] == 671
    for r in plan.requests[:50]:
        items, ts, _, _ = plan.seqs[r.seq]
        assert r.ts == ts[-1] and r.targets["B"].tolist() == [items[-1]] and r.ends[0.0] == len(items) - 1
