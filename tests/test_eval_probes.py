"""Evaluation probes on hand-made shards: next title, first cold-start title, first title after a serving delay."""

import numpy as np
import pyarrow.parquet as pq

from genrec.config import load_config
from genrec.shards import write_shards
from genrec.train import catalogue, eval_probes, eval_rows, id_mask_rate, item_counts, model_spec
from tests.test_shards import _dataset


def test_probes_by_hand(tmp_path):
    # cutoff 100. user 1: history [10@10, 20@20, 30@30], then 40@110 (cold: first seen after the cutoff), 10@120.
    # user 2: history [20@50], then 30@150. Index: 10->1, 20->2, 30->3, 40->4, 50->5.
    shards = write_shards(_dataset(), tmp_path / "s", cutoff=100)
    counts = item_counts(shards)
    assert counts.tolist() == [0, 1, 2, 2, 0, 0]  # training rows only (user 2's single event has no row)
    cold = counts == 0
    cold[0] = False
    probes = eval_probes(shards, [0.025], cold)  # a 90 s stale cache
    assert probes == ["next", "cold", "0h", "0.025h"]
    sets = {tuple(p): [(r[0], r[4]) for r in rows] for p, rows in eval_rows(shards, probes, cold, None)}
    # From the cutoff: user 1's next new title is 40 (cold); user 2's is 30 (trained through user 1, so not cold).
    assert sets[("next", "cold")] == [([1, 2, 3], {"next": 4, "cold": 4}), ([2], {"next": 3})]
    # Delays: the target is the last new title of the whole sequence (user 1: 40@110, as 10@120 is a repeat).
    # Fresh context: everything before it; 90 s stale: only events at or before 110 - 90 = 20 (user 2: 150 - 90).
    assert sets[("0h",)] == [([1, 2, 3], {"0h": 4}), ([2], {"0h": 3})]
    assert sets[("0.025h",)] == [([1, 2], {"0.025h": 4}), ([2], {"0.025h": 3})]
    # A delay longer than anyone's history leaves every user out of all delay probes (the sets stay paired).
    sets = dict((tuple(p), rows) for p, rows in eval_rows(shards, eval_probes(shards, [0.025, 1], cold), cold, None))
    assert sets[("0h",)] == [] and sets[("1h",)] == [] and len(sets[("next", "cold")]) == 2


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
    assert id_mask_rate(cfg, shards) == shards.manifest["counts"]["cold_start_eval_share"]
    assert id_mask_rate(load_config(None, ["model.id_mask_rate=0.25"]), shards) == 0.25
