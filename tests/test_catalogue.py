"""The catalogue a run trains and ranks: trained titles, cold-start titles, logQ, the masking rate, the window."""

import numpy as np
import pyarrow.parquet as pq

from genrec.config import load_config
from genrec.shards import write_shards
from genrec.build import catalogue, count_windows, id_mask_rate, item_counts, model_spec, train_window
from tests.test_shards import _dataset


def test_catalogue_marks_untrained_titles_cold_and_mask_rate_defaults_to_the_shards(tmp_path):
    shards = write_shards(_dataset(), tmp_path / "s", cutoff=100)
    cfg = load_config(None, ["model.preset=custom", "model.layers=1", "model.width=16", "model.heads=2"])
    spec = model_spec(cfg, shards)
    assert spec.features["genres"] == ["x", "y"] and spec.num_items == 5
    feats, known, log_q = catalogue(spec, pq.read_table(shards.items_path), item_counts(shards), "in_batch")
    assert known.tolist() == [False, True, True, True, False, False]
    assert len(feats) == 6 and feats.genres[4, 0] == 1  # title 40 has genre "x"
    # in-batch logQ: smoothed training frequency, larger for the titles seen twice
    assert log_q[2] > log_q[1] > log_q[4] and np.isclose(log_q.exp().sum().item(), 1.0, atol=1e-6)
    assert id_mask_rate(load_config(None, ["model.id_mask_rate=0.25"]), shards) == 0.25


def test_auto_masking_rate_is_measured_on_validation_not_on_the_test_split(tmp_path):
    """With a validation window from 25: its targets (30 at 30, 20 at 50) were all trained titles, so "auto" masks
    nothing, although a third of the test targets (40) are cold: the test split sets no training choice."""
    shards = write_shards(_dataset(), tmp_path / "s", cutoff=100, valid_cutoff=25)
    counts = shards.manifest["counts"]
    assert counts["cold_start_valid_share"] == 0.0 and counts["cold_start_eval_share"] > 0.3
    assert id_mask_rate(load_config(None), shards) == 0.0
    # leave-one-out: the share of validation targets in no training row (here 1 of 2)
    from tests.test_shards import _loo_dataset

    loo = write_shards(_loo_dataset(), tmp_path / "loo", None, split="leave_one_out")
    assert id_mask_rate(load_config(None), loo) == loo.manifest["counts"]["cold_start_valid_share"] == 0.5


def test_a_training_window_moved_back_in_time(tmp_path):
    # user 1 trains on 10@10, 20@20, 30@30; user 3 on 30@5, 20@6 (cutoff 100). Index: 10->1, 20->2, 30->3.
    shards = write_shards(_dataset(), tmp_path / "s", cutoff=100)
    assert train_window(load_config(None), shards) == (None, None)
    shifted = load_config(None, [f"train.window_shift_h={75 / 3600}"])  # the window ends at 100 - 75 = 25
    window = train_window(shifted, shards)
    assert window == (None, 25)
    assert item_counts(shards, window).tolist() == [0, 1, 2, 1, 0, 0]  # 30@30 falls out
    assert count_windows(shards, 4, window) == 2 and count_windows(shards, 4) == 2
    cut = load_config(None, [f"train.window_shift_h={75 / 3600}", f"train.window_days={15 / 86400}"])
    assert train_window(cut, shards) == (10, 25)  # and starts 15 s before its end
    assert item_counts(shards, train_window(cut, shards)).tolist() == [0, 1, 1, 0, 0, 0]
    # 10@10, 20@20 for user 1 only: one window; user 3 has no event left
    assert count_windows(shards, 4, train_window(cut, shards)) == 1
