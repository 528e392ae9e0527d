"""The leaderboard's arithmetic (benchmarks/leaderboard.py), on hand-computed cases: the paired bootstrap, the
per-user NDCG@10, the time to reach a target, pooling per-seed invocations, and a peer's scores ranked by the
leaderboard's own evaluator."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.leaderboard import merge_runs, paired_bootstrap, peer_ranks, time_to_reach, user_ndcg
from benchmarks.plain_sasrec import LooData


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


def test_a_peers_scores_are_ranked_by_the_data_s_own_ids_with_the_context_excluded(tmp_path):
    """The peer (RecBole) names users and titles by the data's ids in its own order, with a padding column; the
    leaderboard maps them to its item indices and ranks each user's target with the context left out."""
    items = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": [100, 200, 300, 400], "index": [1, 2, 3, 4]}), items)
    data = LooData(num_items=4, train=[], users=np.array([7, 9]), valid_ctx=[], valid_target=np.array([]),
                   test_ctx=[np.array([1]), np.array([2, 3])], test_target=np.array([2, 4]), test_files=[])
    peer = {"users": np.array(["9", "7"]), "targets": np.array(["400", "300"]),
            "items": np.array(["[PAD]", "400", "300", "200", "100"]),
            # user 9: 400 > 300 > 200 > 100; user 7: 100 > 300 > 200 > 400
            "scores": np.array([[0.0, 4.0, 3.0, 2.0, 1.0], [0.0, 1.0, 3.0, 2.0, 4.0]], np.float32)}
    ranks, agree = peer_ranks(peer, data, str(items))
    # user 7 (context 100): target 200 behind 300 -> rank 2; user 9 (context 200, 300): target 400 first -> rank 1
    assert ranks.tolist() == [2.0, 1.0]
    assert agree == 1  # user 9's target is the same in both splits, user 7's is not (300 against 200)
