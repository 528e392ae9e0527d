"""The leaderboard's arithmetic (benchmarks/leaderboard.py), on hand-computed cases: the paired bootstrap, the
per-user NDCG@10, the time to reach a target, and pooling per-seed invocations."""

import numpy as np
import pytest

from benchmarks.leaderboard import merge_runs, paired_bootstrap, time_to_reach, user_ndcg


def test_paired_bootstrap_of_a_constant_difference_is_that_difference():
    base = np.array([0.1, 0.2, 0.3, 0.4])
    out = paired_bootstrap(base + 0.05, base)
    assert out["mean"] == pytest.approx(0.05) and out["lo"] == pytest.approx(0.05) and out["hi"] == pytest.approx(0.05)
    assert out["relative"] == pytest.approx(0.05 / 0.25)


def test_paired_bootstrap_interval_brackets_the_mean_and_spans_zero_for_noise():
    rng = np.random.default_rng(0)
    a, b = rng.random(500), rng.random(500)
    out = paired_bootstrap(a, b)
    assert out["lo"] < out["mean"] < out["hi"] and out["lo"] < 0 < out["hi"]


def test_user_ndcg_counts_the_top_ten_only():
    assert user_ndcg(np.array([1, 3, 10, 11])).tolist() == pytest.approx([1.0, 0.5, 1 / np.log2(11), 0.0])


def test_time_to_reach_is_the_first_wall_time_at_or_over_the_target():
    curve = [(10.0, 0.05), (20.0, None), (30.0, 0.12), (40.0, 0.20)]
    assert time_to_reach(curve, 0.12) == 30.0 and time_to_reach(curve, 0.3) is None


def test_merge_pools_seeds_keeps_popularity_once_and_refuses_a_seed_twice():
    def run(seed):
        return {"ranks": [1, 2], "seed": seed}

    a = {"d": {"popularity": [run(0)], "sasrec": [run(0)]}}
    b = {"d": {"popularity": [run(0)], "sasrec": [run(1)]}}
    pooled = merge_runs([a, b])
    assert [r["seed"] for r in pooled["d"]["sasrec"]] == [0, 1] and len(pooled["d"]["popularity"]) == 1
    with pytest.raises(SystemExit, match="sasrec: seed"):
        merge_runs([a, a])
