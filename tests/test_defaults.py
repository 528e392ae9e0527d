"""Defaults that scale with the data (genrec.defaults): each "auto" value by hand, and resolved from real shards."""

import numpy as np

from genrec.config import load_config
from genrec.defaults import (MAX_LEN_AUTO, PRESET_BY_EVENTS, auto_batch_size, auto_max_seq_len, auto_preset,
                             resolve)
from genrec.presets import PRESETS
from genrec.shards import write_shards
from tests.test_shards import _dataset


def test_auto_values_by_hand():
    # 90th percentile of 1..100 is 90.1 -> the next multiple of 16: 96
    assert auto_max_seq_len(np.arange(1, 101)) == 96
    assert auto_max_seq_len(np.array([3, 4, 5])) == 16  # never below 16
    assert auto_max_seq_len(np.array([10_000] * 10)) == MAX_LEN_AUTO
    assert auto_max_seq_len(np.zeros(0)) == 16
    assert auto_preset(98_000) == "100k" and auto_preset(5_000_000) == "1m" and auto_preset(10**9) == "2m"
    assert all(name in PRESETS for _, name in PRESET_BY_EVENTS)
    # 64 windows a step unless an epoch would then be under 64 steps: ML-100K's ~1,000 windows train at 32
    assert auto_batch_size(64 * 64) == 64 and auto_batch_size(64 * 64 - 1) == 32 and auto_batch_size(1_000) == 32
    assert auto_batch_size(20) == 16 and auto_batch_size(1) == 1 and auto_batch_size(0) == 1  # within the windows


def test_resolve_from_shards_says_why_and_leaves_explicit_values(tmp_path):
    shards = write_shards(_dataset(), tmp_path / "s", cutoff=100)  # training rows of 3 and 2 events, 5 titles
    said = []
    cfg = resolve(load_config(None), shards, echo=said.append)
    m = cfg.model
    assert (m.preset, m.max_seq_len, m.decoding, m.projection_ratio) == ("100k", 16, "full", 1)
    assert "max_seq_len 16" in said[0] and "decoding full (5 titles)" in said[0]
    assert cfg.train.batch_size == 2 and "batch_size 2 (2 training windows per worker" in said[0]
    explicit = load_config(None, ["model.preset=2m", "model.max_seq_len=48", "model.decoding=sampled",
                                  "model.projection_ratio=8", "train.batch_size=64"])
    assert resolve(explicit, shards, echo=said.append) is explicit  # nothing to choose
    wide = resolve(load_config(None, ["model.preset=32m"]), shards, echo=said.append)
    assert wide.model.projection_ratio == 8  # width 512: the paper's d/8 head
