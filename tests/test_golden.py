"""The golden loss curve: the first steps of a tiny seeded single-process run of the trainer's own model, objective and
step (genrec.reference_loop, built by genrec.build as the Ray worker builds it), pinned to 1e-4.

A refactor that changes behaviour (initialisation, features, the objective, the optimizer, the windows) moves these
numbers; one that only moves code does not. Ray Data's block order across workers is not deterministic, so the
single-process path is what is pinned. Change the numbers only with a change that means to change training, and say
so in its commit. Checked to fail: zero-initialised event features drawn at random again move every step after the
first."""

import pytest

from genrec.config import load_config
from genrec.data.synthetic import generate
from genrec.reference_loop import train_reference
from genrec.shards import write_shards

GOLDEN = [1.402672, 1.651094, 1.181164, 2.057785, 1.958846, 2.244751, 1.910745, 1.571838]


def test_the_first_steps_follow_the_golden_loss_curve(tmp_path):
    ds = generate(users=60, items=40, events_per_user=20, days=30, genres=4, seed=1)
    shards = write_shards(ds, tmp_path / "s", None, split="leave_one_out")
    cfg = load_config(None, ["model.preset=custom", "model.layers=1", "model.width=16", "model.heads=2",
                             "model.max_seq_len=8", "model.dropout=0.1", "model.decoding=sampled",
                             "model.num_negatives=8", "model.mtp_k=2", "model.id_mask_rate=0.1", "train.batch_size=8",
                             "train.lr=0.01", "train.seed=3"])
    run = train_reference(cfg, shards, epochs=1, threads=1, validate=False, max_steps=len(GOLDEN))
    assert run.history[0]["losses"] == pytest.approx(GOLDEN, abs=1e-4)
