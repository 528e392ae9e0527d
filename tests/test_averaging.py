"""genrec.averaging: the weight average train.ema_decay keeps, on hand-computed cases, and its refusal of ZeRO-3 (no
Ray); in the trainer: tests/test_integration.py::test_ctrl_c_of_a_training_run_names_its_checkpoint_and_how_to_go_on
(its run keeps an average)."""

from __future__ import annotations

import pytest
import torch

from genrec.averaging import WeightAverage, averaged, decay_at, refuse_partitioned
from genrec.build import build_run, optimizer_and_schedule
from genrec.checkpoint import RESUME_AVERAGE, RESUME_DIR, load_resume_average
from genrec.config import ConfigError, load_config
from genrec.data.synthetic import generate
from genrec.defaults import resolve
from genrec.reference_loop import deepspeed_engine
from genrec.shards import write_shards


def test_the_decay_is_smaller_over_the_first_updates():
    assert decay_at(0.99, 0) == pytest.approx(0.1)  # 1/10: the first update takes 90% of the weights
    assert decay_at(0.99, 90) == pytest.approx(0.91)  # 91/100
    assert decay_at(0.99, 989) == pytest.approx(0.99)  # 990/999 > 0.99: the configured decay from here on
    assert decay_at(0.5, 0) == pytest.approx(0.1) and decay_at(0.5, 10) == 0.5


def two_weights(w0: float, w1: float, dtype=torch.float32) -> torch.nn.Linear:
    layer = torch.nn.Linear(2, 1, bias=False).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[w0, w1]]))
    return layer


def test_each_update_moves_the_average_toward_the_weights_by_one_minus_the_decay():
    layer = two_weights(1.0, 2.0)
    average = WeightAverage(layer, 0.99)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0]]))
    average.update()  # decay 1/10: 1 + 0.9 * (3 - 1), 2 + 0.9 * (4 - 2)
    assert average.average[0].flatten().tolist() == pytest.approx([2.8, 3.8])
    with torch.no_grad():
        layer.weight.zero_()
    average.update()  # decay 2/11: the average times 2/11
    assert average.average[0].flatten().tolist() == pytest.approx([2.8 * 2 / 11, 3.8 * 2 / 11])
    assert average.updates == 2 and layer.weight.tolist() == [[0.0, 0.0]]  # the weights themselves untouched


def test_the_average_is_in_the_module_inside_the_block_and_the_weights_come_back_after_it():
    layer = two_weights(3.0, 4.0, torch.bfloat16)
    average = WeightAverage(layer, 0.9)
    average.average = [torch.tensor([[0.5, -1.5]])]
    x = torch.tensor([[1.0, 1.0]], dtype=torch.bfloat16)
    with averaged(average):
        assert layer.weight.dtype == torch.bfloat16 and layer.weight.tolist() == [[0.5, -1.5]]
        assert layer(x).item() == -1.0
    assert layer.weight.tolist() == [[3.0, 4.0]]
    with pytest.raises(RuntimeError), averaged(average):
        raise RuntimeError("validation failed")
    assert layer.weight.tolist() == [[3.0, 4.0]]
    with averaged(None):  # no average: the module as it is
        assert layer.weight.tolist() == [[3.0, 4.0]]


def test_a_saved_average_loads_back_weights_only_and_a_missing_one_is_said(tmp_path):
    layer = two_weights(1.0, 2.0)
    average = WeightAverage(layer, 0.99)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0]]))
    average.update()
    (tmp_path / RESUME_DIR).mkdir()
    torch.save(average.state_dict(), tmp_path / RESUME_DIR / RESUME_AVERAGE.format(rank=0))
    again = WeightAverage(layer, 0.5)  # starts from the current weights, 3 and 4; resumed with another decay
    assert load_resume_average(again, tmp_path, rank=0)
    assert again.decay == 0.5 and again.updates == 1 and again.average[0].flatten().tolist() == pytest.approx([2.8, 3.8])
    assert not load_resume_average(again, tmp_path, rank=1)  # none for that rank: the caller says so
    with pytest.raises(ValueError, match="other tensors"):
        WeightAverage(torch.nn.Linear(3, 1, bias=False), 0.99).load_state_dict(average.state_dict())
    with pytest.raises(ValueError, match="between 0 and 1"):
        WeightAverage(layer, 1.0)


def test_zero3_is_refused_before_any_worker_starts_and_by_the_average_itself(tmp_path):
    """Under ZeRO-3 DeepSpeed keeps small parameters gathered between steps, so an average swapped into the partitions
    would not be what is validated and served: `fit` refuses the config (refuse_partitioned, naming the keys), and a
    WeightAverage of a ZeRO-3 engine's module (built in this process as one rank on CPU) refuses too."""
    refuse_partitioned(load_config(None, ["train.ema_decay=0.9"]))  # auto on one worker: ZeRO-0
    refuse_partitioned(load_config(None, ["train.zero_stage=3"]))  # no average
    with pytest.raises(ConfigError, match="train.ema_decay=0.9 under ZeRO-3 .*train.zero_stage"):
        refuse_partitioned(load_config(None, ["train.ema_decay=0.9", "train.zero_stage=3"]))
    ds = generate(users=40, items=30, events_per_user=12, days=20, genres=3, seed=2)
    shards = write_shards(ds, tmp_path / "s", None, split="leave_one_out")
    cfg = load_config(None, ["model.preset=custom", "model.layers=1", "model.width=16", "model.heads=2",
                             "model.max_seq_len=8", "model.decoding=sampled", "model.num_negatives=8",
                             "train.batch_size=8", "train.zero_stage=3"])
    run = build_run(resolve(cfg, shards, echo=lambda *_: None), shards)
    optimizer, schedule = optimizer_and_schedule(cfg, run.model, 10)
    engine = deepspeed_engine(cfg, run.model, optimizer, schedule)
    assert engine.zero_optimization_partition_weights()
    with pytest.raises(ValueError, match="ZeRO-3"):
        WeightAverage(engine.module, 0.9)
