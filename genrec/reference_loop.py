"""genrec's model, objective and step in one PyTorch process: no Ray, windows held in memory.

The reference the full path (shards -> Ray Data -> Ray Train -> DeepSpeed, genrec.train) is measured against:
benchmarks/overhead.py runs both side by side on the same model and cores, and the golden-loss test pins this loop's
first steps. It builds the run exactly as the trainer does (genrec.build: model, catalogue, objective, optimizer,
schedule), cuts the same training windows (genrec.windows) and takes every step through the trainer's own
genrec.engine.train_step: on a plain-torch stand-in for the DeepSpeed engine (TorchEngine, the benchmarks' loop), or on
the trainer's DeepSpeed engine itself (genrec.engine.make_engine) as one rank on CPU. Only distribution differs, and
two things the trainer adds for retrains over shifted windows, which this loop does not run: a warm start's epoch 0
(train.init_from) and the moved validation window (eval.moving_validation).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from genrec.build import all_windows, build_run, num_negatives, optimizer_and_schedule, torch_threads
from genrec.config import GenrecConfig
from genrec.defaults import resolve as resolve_defaults
from genrec.engine import make_engine, train_step
from genrec.selection import VALID, budget_spent, selection_key, should_stop
from genrec.shards import ShardSet
from genrec.tasks import EvalPlan, build_plan, evaluate_plan, model_scorer, plan_metrics

WINDOW_COLUMNS = ("items", "actions", "gaps", "utils", "ts")


@dataclass
class ReferenceRun:
    history: list[dict]
    model: torch.nn.Module


class TorchEngine:
    """What genrec.engine.train_step asks of a DeepSpeed engine, in plain torch: the step DeepSpeed takes on one rank
    in fp32 (forward; backward; gradients clipped to train.grad_clip, optimizer step, gradients cleared, LR schedule
    step). The golden-loss test holds it to the DeepSpeed engine's losses."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule, grad_clip: float):
        self.module, self.optimizer, self.schedule, self.grad_clip = module, optimizer, schedule, grad_clip

    def __call__(self, *inputs):
        return self.module(*inputs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()


def one_rank_world() -> None:
    """torch.distributed in this process as a one-worker run's worker has it on CPU: a world of one rank over gloo.
    Set up once and kept for the life of the process: DeepSpeed keeps the groups of the first world it sees, and an
    engine built in a later world would fail on them. A one-rank world already here is used as it is."""
    if torch.distributed.is_initialized():
        if torch.distributed.get_world_size() != 1:
            raise RuntimeError("train_reference(engine='deepspeed') steps as one rank, and this process is in a world "
                               f"of {torch.distributed.get_world_size()}: call it from a process outside it")
        return
    with socket.socket() as probe:  # a free port for the group's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def deepspeed_engine(cfg: GenrecConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule):
    """The trainer's DeepSpeed engine (genrec.engine.make_engine) in this process, on CPU as one rank. LOCAL_RANK
    (which the engine reads) and DS_ACCELERATOR ("cpu" unless set: DeepSpeed reads it when first imported, in
    make_engine) are set while it is built, then put back as they were: a Ray started later in this process must not
    hand them to its workers."""
    one_rank_world()
    saved = {key: os.environ.get(key) for key in ("LOCAL_RANK", "DS_ACCELERATOR")}
    os.environ["LOCAL_RANK"] = "0"
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        engine = make_engine(cfg, model, optimizer, schedule, on_gpu=False)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if engine.device.type != "cpu":
        raise RuntimeError(f"DeepSpeed placed the model on {engine.device}: it picked its accelerator when it was "
                           "first imported in this process; set DS_ACCELERATOR=cpu before importing it")
    return engine


def train_reference(cfg: GenrecConfig, shards: ShardSet, epochs: int | None = None, threads: int | None = None,
                    validate: bool = True, max_steps: int | None = None, log=None, prepare=None,
                    engine: Literal["torch", "deepspeed"] = "torch", on_step=None) -> ReferenceRun:
    """Train for `epochs` (default train.epochs; early stopping and the time budget as the trainer applies them when
    `validate`). Each record: epoch, loss (mean over the epoch's steps), steps, target events, training seconds
    (steps only: no evaluation, no start-up), events/s, this process's CPU seconds over the steps, per-step losses, and
    the validation figures. `prepare(run)`
    may change the built model before training; `on_step(model)` is called after every optimizer step
    (benchmarks/weight_average.py keeps its averaged copies with it). Every step is genrec.engine.train_step's, on
    `engine`: "torch" (TorchEngine: no DeepSpeed) or "deepspeed" (the trainer's engine, built by deepspeed_engine)."""
    cfg = resolve_defaults(cfg, shards, echo=log or (lambda *_: None))
    torch.set_num_threads(threads or torch_threads(cfg, workers_here=1))
    run = build_run(cfg, shards)
    if prepare is not None:  # a benchmark's change to the built model (benchmarks/ablation.py)
        prepare(run)
    model = run.model
    windows = all_windows(shards, cfg.model.max_seq_len, run.window, run.targets_from)
    n = len(windows["items"])
    batch_size = cfg.train.batch_size
    steps_per_epoch = max(1, n // batch_size)
    epochs = epochs or cfg.train.epochs
    optimizer, schedule = optimizer_and_schedule(cfg, model, steps_per_epoch * epochs)
    stepper = (deepspeed_engine(cfg, model, optimizer, schedule) if engine == "deepspeed" else
               TorchEngine(model, optimizer, schedule, cfg.train.grad_clip))
    gen = torch.Generator().manual_seed(cfg.train.seed * 1000)
    order_rng = np.random.default_rng(cfg.train.seed)
    n_neg = num_negatives(cfg, len(run.trained))
    plan = build_plan(shards, cfg.eval, run.cold, split="valid") if validate else None
    select = selection_key(cfg.eval.select_metric)
    history: list[dict] = []
    start = time.perf_counter()
    steps_done = 0
    for epoch in range(1, epochs + 1):
        model.train()
        order = order_rng.permutation(n)
        losses, events, t0, cpu0 = [], 0, time.perf_counter(), time.process_time()
        for s in range(steps_per_epoch):
            idx = order[s * batch_size:(s + 1) * batch_size]
            batch = {k: torch.from_numpy(windows[k][idx]) for k in WINDOW_COLUMNS}
            loss, batch_events, _ = train_step(stepper, batch, run.trained, n_neg, run.mask_rate, gen)
            if on_step is not None:
                on_step(model)
            losses.append(loss.item())
            events += int(batch_events)
            steps_done += 1
            if max_steps is not None and steps_done >= max_steps:
                break
        train_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "steps": len(losses), "events": events,
                  "train_s": train_s, "events_per_s": events / max(train_s, 1e-9), "cpu_s": cpu_s, "losses": losses}
        if plan is not None:
            record |= validation_figures(plan, model, cfg)
        record["wall_time_s"] = time.perf_counter() - start
        history.append(record)
        if log:
            log(record)
        if max_steps is not None and steps_done >= max_steps:
            break
        if validate and (should_stop(history, select, cfg.train.patience) or budget_spent(
                [r["wall_time_s"] for r in history], record["wall_time_s"], cfg.train.time_budget_s)):
            break
    return ReferenceRun(history, model)


def validation_figures(plan: EvalPlan, model: torch.nn.Module, cfg: GenrecConfig) -> dict:
    """A model's figures on the validation requests of `plan`, as valid_<metric> (eval mode, no gradients)."""
    model.eval()
    with torch.no_grad():
        sums, _ = evaluate_plan(plan, model_scorer(model, model.item_matrix()), model.spec.max_seq_len,
                                batch_size=cfg.eval.batch_size)
    return {VALID + k: v for k, v in plan_metrics(sums, cfg.eval.primary).items()}
