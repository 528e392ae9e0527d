"""genrec's model, objective and step in one plain PyTorch process: no Ray, no DeepSpeed, windows held in memory.

The reference the full path (shards -> Ray Data -> Ray Train -> DeepSpeed, genrec.train) is measured against:
benchmarks/overhead.py runs both side by side on the same model and cores, and the golden-loss test pins this loop's
first steps. It builds the run exactly as the trainer does (genrec.build: model, catalogue, objective, optimizer,
schedule) and cuts the same training windows (genrec.windows); only distribution differs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from genrec.build import all_windows, build_run, num_negatives, optimizer_and_schedule, torch_threads
from genrec.config import GenrecConfig
from genrec.defaults import resolve as resolve_defaults
from genrec.objectives import draw_id_mask
from genrec.selection import VALID, selection_key, should_stop
from genrec.shards import ShardSet
from genrec.tasks import build_plan, evaluate_plan, model_scorer, plan_metrics

WINDOW_COLUMNS = ("items", "actions", "gaps", "utils", "ts")


@dataclass
class ReferenceRun:
    history: list[dict]
    model: torch.nn.Module


def train_reference(cfg: GenrecConfig, shards: ShardSet, epochs: int | None = None, threads: int | None = None,
                    validate: bool = True, max_steps: int | None = None, log=None, prepare=None) -> ReferenceRun:
    """Train for `epochs` (default train.epochs; early stopping and the time budget as the trainer applies them when
    `validate`). Each record: epoch, loss (mean over the epoch's steps), steps, target events, training seconds
    (steps only: no evaluation, no start-up), events/s, per-step losses, and the validation figures. `prepare(run)`
    may change the built model before training."""
    cfg = resolve_defaults(cfg, shards, echo=log or (lambda *_: None))
    torch.set_num_threads(threads or torch_threads(cfg, workers_here=1))
    run = build_run(cfg, shards)
    if prepare is not None:  # a benchmark's change to the built model (benchmarks/ablation.py)
        prepare(run)
    model = run.model
    windows = all_windows(shards, cfg.model.max_seq_len, run.window)
    n = len(windows["items"])
    batch_size = cfg.train.batch_size
    steps_per_epoch = max(1, n // batch_size)
    epochs = epochs or cfg.train.epochs
    optimizer, schedule = optimizer_and_schedule(cfg, model, steps_per_epoch * epochs)
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
        losses, events, t0 = [], 0, time.perf_counter()
        for s in range(steps_per_epoch):
            idx = order[s * batch_size:(s + 1) * batch_size]
            items, actions, gaps, ts = (torch.from_numpy(windows[k][idx]).long() for k in ("items", "actions", "gaps",
                                                                                               "ts"))
            utils = torch.from_numpy(windows["utils"][idx]).float()
            negatives = None if n_neg is None else run.trained[torch.randint(0, len(run.trained), (n_neg,),
                                                                             generator=gen)]
            loss = model(items, actions, gaps, utils, ts, negatives,
                         draw_id_mask(run.spec.num_items + 1, run.mask_rate, gen))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            events += int((items[:, 1:] > 0).sum())
            steps_done += 1
            if max_steps is not None and steps_done >= max_steps:
                break
        train_s = time.perf_counter() - t0
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "steps": len(losses), "events": events,
                  "train_s": train_s, "events_per_s": events / max(train_s, 1e-9), "losses": losses}
        if plan is not None:
            model.eval()
            with torch.no_grad():
                sums, _ = evaluate_plan(plan, model_scorer(model, model.item_matrix()), run.spec.max_seq_len,
                                        batch_size=cfg.eval.batch_size)
            record |= {VALID + k: v for k, v in plan_metrics(sums, cfg.eval.primary).items()}
        record["wall_time_s"] = time.perf_counter() - start
        history.append(record)
        if log:
            log(record)
        if max_steps is not None and steps_done >= max_steps:
            break
        if validate and (should_stop(history, select, cfg.train.patience) or (
                cfg.train.time_budget_s is not None and record["wall_time_s"] >= cfg.train.time_budget_s)):
            break
    return ReferenceRun(history, model)
