"""The golden loss curve: the first steps of a tiny seeded single-process run of the trainer's model, objective and
step, pinned to 1e-4.

What is pinned: genrec.reference_loop on the model, catalogue, objective, optimizer (AdamW and its parameter groups),
LR schedule and windows genrec.build makes as the Ray worker makes them, every step taken by the trainer's own
genrec.engine.train_step (negatives, collaborative-embedding mask, loss, backward, step) on the trainer's own DeepSpeed
engine (genrec.engine.make_engine: its config, clipping included), built in this process as one rank on CPU (gloo,
ZeRO-0, fp32), as a one-worker run on CPU builds it. The same steps on the reference loop's plain-torch engine (what
the benchmarks run) are held to the same curve, so the two cannot drift apart. Not pinned: Ray Data's batches (their
block order across workers is not deterministic) and the checkpoints.

A refactor that changes behaviour (initialisation, features, the objective, the optimizer, the windows, the step) moves
these numbers; one that only moves code does not. Change the numbers only with a change that means to change training,
and say so in its commit. Checked to fail: zero-initialised event features drawn at random again move every step after
the first; DeepSpeed's clipping at half of train.grad_clip moves the DeepSpeed curve from the fourth step on (the
plain-torch one stays: the two cases tell which side moved); the MTP's second target at half weight, weight decay on
every parameter, or train_step drawing the id mask before the negatives move both; the full-softmax curve moves when the
chunked loss leaves out the context's titles' mask or the title-age bias."""

import copy
import sys

import pytest
import torch

from benchmarks.weight_average import ema_update
from genrec import objectives
from genrec.build import all_windows, build_run, num_negatives, optimizer_and_schedule
from genrec.config import load_config
from genrec.data.synthetic import generate
from genrec.defaults import resolve as resolve_defaults
from genrec.engine import reduces_nothing, train_step
from genrec.reference_loop import WINDOW_COLUMNS, TorchEngine, deepspeed_engine, train_reference
from genrec.shards import write_shards

GOLDEN = [1.402672, 1.651094, 1.181164, 2.057785, 1.958846, 2.244751, 1.910745, 1.571838]
# The full softmax with the title-age bias and the context's titles left out of it (the chunked loss's every input):
# the curve the materialised (P, titles) logits gave before the chunked loss replaced them, unchanged to 1e-6.
GOLDEN_FULL = [2.659207, 2.885345, 2.588208, 2.658866, 2.797315, 2.983198, 2.847285, 3.095917]
TINY = ["model.preset=custom", "model.layers=1", "model.width=16", "model.heads=2", "model.max_seq_len=8",
        "model.dropout=0.1", "model.decoding=sampled", "model.num_negatives=8", "model.mtp_k=2",
        "model.id_mask_rate=0.1", "model.exclude_history=false", "train.batch_size=8", "train.lr=0.01", "train.seed=3"]
FULL = ["model.decoding=full", "model.title_age=true", "model.exclude_history=true"]


def deepspeed_elsewhere() -> str | None:
    """The accelerator DeepSpeed took when this process first imported it, where that is not the CPU (a GPU machine
    whose tests imported it before DS_ACCELERATOR was set): the pinned path is the CPU one."""
    deepspeed = sys.modules.get("deepspeed")
    name = None if deepspeed is None else deepspeed.accelerator.get_accelerator().device_name()
    return None if name in (None, "cpu") else name


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    ds = generate(users=60, items=40, events_per_user=20, days=30, genres=4, seed=1)
    shards = write_shards(ds, tmp_path_factory.mktemp("golden") / "s", None, split="leave_one_out")
    return load_config(None, TINY), shards


@pytest.mark.parametrize("decoding, golden", [("sampled", GOLDEN), ("full", GOLDEN_FULL), ("full-chunks", GOLDEN_FULL)])
@pytest.mark.parametrize("engine", ["deepspeed", "torch"])
def test_the_first_steps_follow_the_golden_loss_curve(tiny_run, engine, decoding, golden, monkeypatch):
    if engine == "deepspeed" and deepspeed_elsewhere():
        pytest.skip(f"DeepSpeed was imported on {deepspeed_elsewhere()} in this process; the golden curve is the CPU's")
    cfg, shards = tiny_run
    if decoding.startswith("full"):
        cfg = load_config(None, TINY + FULL)
    if decoding == "full-chunks":  # 3 rows a chunk (41 titles with padding): the model's per-chunk masks and bias
        monkeypatch.setattr(objectives, "CHUNK_LOGITS_CPU", 3 * 41)
    run = train_reference(cfg, shards, epochs=1, threads=1, validate=False, max_steps=len(golden), engine=engine)
    assert run.history[0]["losses"] == pytest.approx(golden, abs=1e-4)
    assert 0 < run.history[0]["cpu_s"]  # this process's CPU time over the steps (benchmarks/overhead.py)


def test_on_step_sees_the_weights_after_every_step_and_the_average_moves_by_one_minus_decay(tiny_run):
    """benchmarks/weight_average.py keeps its averages through train_reference's on_step: called once per optimizer
    step, after the step (the weights it sees differ each time). The average itself on a hand-made case: from 1 toward
    3 by (1 - 0.75) is 1.5, then toward 5 is 2.375."""
    cfg, shards = tiny_run
    seen = []
    train_reference(cfg, shards, epochs=1, threads=1, validate=False, max_steps=3,
                    on_step=lambda model: seen.append(next(model.parameters()).detach().clone()))
    assert len(seen) == 3 and not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])

    model = torch.nn.Linear(1, 1, bias=False)
    average = copy.deepcopy(model)
    with torch.no_grad():
        average.weight.fill_(1.0)
        for w, expected in ((3.0, 1.5), (5.0, 2.375)):
            model.weight.fill_(w)
            ema_update(average, model, 0.75)
            assert average.weight.item() == pytest.approx(expected)


@pytest.mark.parametrize("stage, skips", [(0, True), (1, False)])
def test_one_rank_zero0_fp32_steps_without_deepspeeds_all_reduce(tiny_run, stage, skips):
    """genrec.engine.reduces_nothing on the trainer's own engine built as one rank (as the golden curve above steps
    it): ZeRO-0 in fp32 skips the all-reduce (the curve above is unchanged by the skip), ZeRO-1 keeps it (its
    optimizer reads its gradients from it), as does the plain-torch engine, which has none."""
    if deepspeed_elsewhere():
        pytest.skip(f"DeepSpeed was imported on {deepspeed_elsewhere()} in this process")
    cfg, shards = tiny_run
    cfg = resolve_defaults(load_config(None, TINY + [f"train.zero_stage={stage}"]), shards)
    run = build_run(cfg, shards)
    optimizer, schedule = optimizer_and_schedule(cfg, run.model, 10)
    engine = deepspeed_engine(cfg, run.model, optimizer, schedule)
    assert engine.zero_optimization_stage() == stage and engine.dp_world_size == 1
    assert reduces_nothing(engine) is skips
    assert not reduces_nothing(TorchEngine(run.model, optimizer, schedule, cfg.train.grad_clip))
    # and train_step takes it, or not: DeepSpeed's own method counted as it runs
    calls = []
    reduce = engine.allreduce_gradients
    engine.allreduce_gradients = lambda *a, **k: (calls.append(1), reduce(*a, **k))[1]
    windows = all_windows(shards, cfg.model.max_seq_len, run.window, run.targets_from)
    batch = {k: torch.from_numpy(windows[k][:cfg.train.batch_size]) for k in WINDOW_COLUMNS}
    gen = torch.Generator().manual_seed(0)
    train_step(engine, batch, run.trained, num_negatives(cfg, len(run.trained)), run.mask_rate, gen)
    assert len(calls) == (0 if skips else 1)
