"""The one training loop: a Ray Train worker function running DeepSpeed over Ray Data windows.

`train_func` runs on every worker: set-up (`setup_worker`), one `restore`, then the loop (read it top to bottom);
`build_trainer` wires it into a `TorchTrainer` and `fit` runs it. The pre-training entrypoint, fine-tuning and every
Tune trial use exactly this pair, so a sweep trains the way a single run does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import ray.train
import torch
from ray.train.torch import TorchConfig, TorchTrainer

from genrec.allocator import keep_freed_memory
from genrec.build import (Run, build_run, model_flops, model_spec, num_negatives, optimizer_and_schedule,
                          torch_threads)
from genrec.averaging import WeightAverage, averaged, refuse_partitioned
from genrec.checkpoint import (load_resume_average, load_resume_state, local_checkpoint, read_spec, read_trainer_state,
                               read_weights, resume_point, save_for_serving, save_resume_state, verify_resumable)
from genrec.config import ConfigError, GenrecConfig, without_secrets
from genrec.console import eta, progress_bar, worker_progress, worker_say
from genrec.defaults import resolve as resolve_defaults
from genrec.engine import make_engine, param_share, train_step
from genrec.finetune import ARCHITECTURE, FinetuneSpec, load_pretrained, start_checkpoint
from genrec.flops import Flops, mfu, peak_tflops
from genrec.ingest import check_ingest_room, training_dataset
from genrec.runs import (TrainingFailed, code_commit, failure_message, history_path, interrupt_message, topk_path,
                         write_topk)
from genrec.errors import Interrupted
from genrec.selection import (EARLY_STOPPING, MAX_EPOCHS, SCORE, SHARED, TIME_BUDGET, VALID, best_record,
                              budget_spent, selection_key, selection_scores, should_stop)
from genrec.shards import ShardSet, open_shards
from genrec.tasks import EvalPlan, build_plan, count_scorer, evaluate_plan, model_scorer, plan_metrics

POPULARITY = "popularity_"  # prefix of popularity's figures beside the model's in each epoch's record
PROGRESS_EVERY_S = 2.0  # how often rank 0 says how far an epoch is (a bar on a terminal; the log keeps each)


@dataclass
class Worker:
    """What a training worker sets up before its first step: where it runs, the run's config and model (built from
    the data, the same initial weights on every rank), the validation requests it scores and the figure it keeps."""

    cfg: GenrecConfig
    rank: int
    world: int
    device: torch.device
    shards: ShardSet
    run: Run
    plan: EvalPlan
    shared_plan: EvalPlan | None  # a shifted retrain's: the requests every retrain shares (None: `plan` is them)
    select: str  # the validation figure that chooses epochs and stops early
    finetune: FinetuneSpec | None  # the pre-trained checkpoint this run continues, if any
    peak_tflops: float | None  # the device's dense bf16 peak, for MFU (None on CPU or an unknown GPU)
    malloc: str  # what genrec.allocator.keep_freed_memory did in this process

    def reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (NCCL needs the tensor on the GPU)."""
        if torch.distributed.is_initialized():
            moved = t.to(self.device)
            torch.distributed.all_reduce(moved)
            t.copy_(moved.cpu())
        return t

    def validate(self, module) -> tuple[dict, list]:
        """Every task at every delay on this run's validation requests (this rank's share, summed over ranks), as
        valid_<metric> figures, and each request's top-k list (rank 0 holds all of them). A shifted retrain's are
        also scored on the requests every retrain shares (shared_valid_<metric>), and its top-k lists come from
        those: retrains' lists are compared request by request."""
        module.eval()
        figures, top = self.score(self.plan, module, VALID, topk=self.shared_plan is None)
        if self.shared_plan is not None:
            shared, top = self.score(self.shared_plan, module, SHARED, topk=True)
            figures |= shared
        return figures, top

    def score(self, plan: EvalPlan, module, prefix: str, topk: bool) -> tuple[dict, list]:
        with torch.no_grad():
            sums, top = evaluate_plan(plan, model_scorer(module, module.item_matrix()), self.run.spec.max_seq_len,
                                      self.rank, self.world, self.cfg.eval.batch_size, self.device,
                                      topk=self.cfg.eval.topk if topk else 0)
        for v in sums.values():
            self.reduce(v)
        return ({prefix + k: v for k, v in plan_metrics(sums, self.cfg.eval.primary).items()},
                gather_rows(top, self.world))

    def popularity(self) -> dict:
        """The bar beside every epoch's figures, computed once per run: titles ranked by their events in this run's
        training window, on the same validation requests (the context's titles excluded, as for the model)."""
        sums, _ = evaluate_plan(self.plan, count_scorer(self.run.counts, self.device), 1, self.rank, self.world,
                                self.cfg.eval.batch_size, self.device)
        for v in sums.values():
            self.reduce(v)
        return {POPULARITY + VALID + m: v for m, v in plan_metrics(sums, self.cfg.eval.primary).items()
                if m in ("mrr", "hr@10", "ndcg@10")}


@dataclass
class Progress:
    """Where a run stands after its last whole epoch: kept in every checkpoint's trainer state, restored from it."""

    epoch: int = 0
    events_seen: int = 0
    wall_time_s: float = 0.0
    history: list[dict] = field(default_factory=list)
    restarts: int = 0
    tokens_seen: int = 0  # input tokens: the target events and, in a retrain on its new window, their context


def setup_worker(config: dict) -> Worker:
    """This worker's environment, config, data and model, before any state is restored."""
    ctx = ray.train.get_context()
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # must be set before deepspeed is imported (genrec.engine)
    os.environ.setdefault("WANDB_SILENT", "true")
    # torch.distributed's renamed-collective warnings fire on every ZeRO-3 gather; they say nothing about our run.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    cfg: GenrecConfig = config["cfg"]  # the typed config itself (it pickles): validated once, by the driver
    finetune = config.get("finetune")
    torch.set_num_threads(torch_threads(cfg, ctx.get_local_world_size()))
    # Ray Train steps in a thread of its own, whose malloc arena glibc would hand back to the kernel within each step.
    malloc = keep_freed_memory()
    shards = open_shards(config["shards"], cfg.storage.store())
    run = build_run(cfg, shards, finetune.task if finetune else None)
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    peak = cfg.train.peak_tflops or (peak_tflops(torch.cuda.get_device_name(device)) if on_gpu else None)
    # A retrain on a shifted window is validated on the window just after its own (eval.moving_validation).
    shift_h = cfg.train.window_shift_h if cfg.eval.moving_validation else 0.0
    return Worker(cfg, ctx.get_world_rank(), ctx.get_world_size(), device, shards, run,
                  build_plan(shards, cfg.eval, run.cold, split="valid", shift_h=shift_h),
                  build_plan(shards, cfg.eval, run.cold, split="valid") if shift_h else None,
                  selection_key(cfg.eval.select_metric, finetune.task if finetune else None), finetune, peak, malloc)


def restore(worker: Worker, config: dict, steps_per_epoch: int):
    """The one place a run's state is restored: (the DeepSpeed engine, its LR scheduler, the sampler's generator,
    the Progress to go on from, the weight average or None without train.ema_decay).

    A restarted worker group (a worker died, `max_failures` allows a retry) or `--resume` goes on from the last
    reported checkpoint, at the start of the epoch that was interrupted, which is redone in full. What this rank
    loads is checked first (not bit-flipped or cut short, the same model). DeepSpeed's optimizer partitions load only
    into the same number of ranks: on another worker count the run goes on from the consolidated weights with a fresh
    optimizer, the LR schedule moved to where it was. A fine-tuning run that starts loads its pre-trained weights and
    scores them first (epoch 0, the transfer baseline); a warm-started retrain (train.init_from) loads its
    predecessor's weights, which the loop reports as its epoch 0 (`start_epoch`)."""
    cfg, model, spec = worker.cfg, worker.run.model, worker.run.spec
    with contextlib.ExitStack() as stack:
        folder, state = resume_folder(worker, config, stack)
        progress = Progress() if state is None else Progress(
            state["epoch"], state["events_processed"], state["wall_time_s"], state["history"], state["restarts"] + 1,
            tokens_seen=state.get("tokens_processed", state["events_processed"]))
        same_world = state is not None and state["world"] == worker.world
        if worker.finetune and state is None:
            load_pretrained(model, spec, str(local_checkpoint(cfg, worker.finetune.checkpoint)))
            progress.history.append({"epoch": 0, **worker.validate(model.to(worker.device))[0]})
        elif cfg.train.init_from and state is None:  # a warm-started retrain: its predecessor's weights
            load_pretrained(model, spec, str(local_checkpoint(cfg, cfg.train.init_from)))
        if worker.finetune and worker.finetune.mode == "head":  # linear-probe style: only a fresh decoding head learns
            model.requires_grad_(False)
            model.new_head()
        lr_offset = 0
        if state is not None and not same_world:
            model.load_state_dict(read_weights(folder), strict=True)
            lr_offset = state["epoch"] * steps_per_epoch
            if worker.rank == 0:
                worker_say(f"resuming on {worker.world} workers from a checkpoint of {state['world']}: consolidated "
                    "weights, fresh optimizer state (AdamW moments restart)")
        optimizer, scheduler = optimizer_and_schedule(cfg, model, steps_per_epoch * cfg.train.epochs, lr_offset,
                                                      fused=worker.device.type == "cuda")
        engine = make_engine(cfg, model, optimizer, scheduler, worker.device.type == "cuda")
        gen = torch.Generator(device=worker.device).manual_seed(cfg.train.seed * 1000 + worker.rank)
        if same_world:  # weights, optimizer, LR schedule and this rank's RNG states
            load_resume_state(engine, folder, worker.rank, gen)
        # After the engine and whatever the run loads: the average starts from the weights training starts from.
        average = WeightAverage(engine.module, cfg.train.ema_decay) if cfg.train.ema_decay else None
        if average is not None and state is not None and not (same_world and load_resume_average(
                average, folder, worker.rank)) and worker.rank == 0:
            worker_say("the weight average starts again from the resumed weights (the checkpoint has none for this "
                       "worker count)")
        if state is not None and worker.rank == 0:
            worker_say(f"resumed from {folder.name} after epoch {progress.epoch} (restart {progress.restarts})")
    return engine, scheduler, gen, progress, average


def resume_folder(worker: Worker, config: dict, stack: contextlib.ExitStack) -> tuple[Path | None, dict | None]:
    """(the local folder of the checkpoint this run goes on from, its trainer state), or (None, None) for a new run.
    Refused, naming the file, when what this rank would load is not as it was written or the model differs."""
    reported = ray.train.get_checkpoint()
    if reported is None and config.get("resume_from"):  # --resume of a run whose Ray Train record was unusable
        reported = ray.train.Checkpoint(config["resume_from"], filesystem=worker.cfg.storage.store().fs)
    if reported is None:
        return None, None
    folder = Path(stack.enter_context(reported.as_directory()))
    state = read_trainer_state(str(folder))
    same = state["world"] == worker.world
    verify_resumable(str(folder), state, ranks=[worker.rank] if same else [], weights=not same,
                     allow_unverified=worker.cfg.storage.allow_unverified_checkpoints)
    saved = read_spec(folder)
    if diff := [f for f in ARCHITECTURE if getattr(saved, f) != getattr(worker.run.spec, f)]:
        raise ConfigError(f"{folder}: the run being resumed built another model ({', '.join(diff)} differ); "
                          "resume with the config it was started with, or start a new run")
    return folder, state


def train_func(config: dict) -> None:
    worker = setup_worker(config)
    cfg, run = worker.cfg, worker.run
    popular = worker.popularity()
    steps_per_epoch = max(1, config["windows"] // worker.world // cfg.train.batch_size)
    engine, scheduler, gen, progress, average = restore(worker, config, steps_per_epoch)
    trained = run.trained.to(worker.device)
    n_neg = num_negatives(cfg, len(trained))
    flops = model_flops(cfg, run.spec, worker.shards.num_items, n_neg)
    tracker = start_tracking(cfg, config["run_name"]) if worker.rank == 0 else None
    data = ray.train.get_dataset_shard("train")
    history = progress.history
    start = time.perf_counter() - progress.wall_time_s
    if cfg.train.init_from and not history:
        start_epoch(worker, engine, gen, progress, popular, flops, config, start, average)
    # A resumed run may be done already.
    end = stop_reason(cfg, history, worker.select, time.perf_counter() - start, worker.reduce)
    for epoch in range(progress.epoch, cfg.train.epochs if end is None else progress.epoch):
        engine.train()
        t0, cpu0 = time.perf_counter(), time.process_time()
        stats = torch.zeros(4, dtype=torch.float64)  # [sum loss, steps, target events, input tokens]
        batches = iter(data.iter_torch_batches(batch_size=cfg.train.batch_size, drop_last=True,
                                               local_shuffle_buffer_size=cfg.train.shuffle_buffer or None,
                                               local_shuffle_seed=cfg.train.seed + epoch, device=str(worker.device),
                                               prefetch_batches=cfg.train.prefetch_batches))
        input_wait = 0.0  # time the loop spends blocked on Ray Data for its next batch
        shown = t0  # when rank 0 last said how far the epoch is
        while True:
            tw = time.perf_counter()
            batch = next(batches, None)
            input_wait += time.perf_counter() - tw
            if batch is None:
                break
            loss, events, tokens = train_step(engine, batch, trained, n_neg, run.mask_rate, gen)
            if average is not None:
                average.update()
            # loss.item() waits for the step, so the next batch's wait is measured from the step's real end.
            stats += torch.tensor([loss.item(), 1.0, events, tokens], dtype=torch.float64)
            if worker.rank == 0 and time.perf_counter() - shown >= PROGRESS_EVERY_S:
                shown = time.perf_counter()
                worker_progress(epoch_progress(epoch + 1, cfg.train.epochs, int(stats[1]), steps_per_epoch,
                                               float(stats[2]) * worker.world, shown - t0, history, worker.select))
        train_time, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        worker.reduce(stats)
        progress.epoch, progress.events_seen = epoch + 1, progress.events_seen + int(stats[2])
        progress.tokens_seen += int(stats[3])
        with averaged(average):  # the average is what is validated, kept and served
            valid_metrics, top = worker.validate(engine.module)
        progress.wall_time_s = time.perf_counter() - start
        metrics = epoch_record(worker, progress, stats, train_time, input_wait, flops, cpu_s) | {
            "lr": scheduler.get_last_lr()[0], **popular, "zero_stage": engine.zero_optimization_stage(),
            "param_share_per_rank": param_share(engine.module), **valid_metrics}
        close_epoch(worker, engine, gen, progress, metrics, top, config, average)
        if tracker is not None:
            tracker.log(metrics, step=epoch + 1)
        end = stop_reason(cfg, history, worker.select, time.perf_counter() - start, worker.reduce)
        if end is not None:
            break
    if worker.rank == 0 and history:  # how the run ended: a finished retrain, even when it stopped before train.epochs
        history[-1]["end"] = end or MAX_EPOCHS
        cfg.storage.store().write_json(config["history"], history)
        if not config["each_epoch"]:
            worker_say(run_line(config["run_name"], history, worker.select))
    if tracker is not None:
        tracker.finish()


def start_epoch(worker: Worker, engine, gen: torch.Generator, progress: Progress, popular: dict, flops: Flops,
                config: dict, start: float, average: WeightAverage | None) -> None:
    """A warm-started retrain's epoch 0: its predecessor as loaded, scored on this run's validation requests and
    reported with a checkpoint like any epoch. It is kept when no trained epoch beats it (production keeps serving
    the model it has when a retrain does not improve on it), and train.patience counts from it."""
    valid_metrics, top = worker.validate(engine.module)
    progress.wall_time_s = time.perf_counter() - start  # its validation: part of the run's time, not epoch 1's pace
    record = epoch_record(worker, progress, torch.zeros(4, dtype=torch.float64), 0.0, 0.0, flops, 0.0)
    record |= {k: None for k in ("loss", "events_per_s", "cpu_s", "model_tflops_per_s", "mfu") if k in record}  # no step yet
    record |= {**popular, "zero_stage": engine.zero_optimization_stage(),
               "param_share_per_rank": param_share(engine.module), **valid_metrics}
    close_epoch(worker, engine, gen, progress, record, top, config, average)


def close_epoch(worker: Worker, engine, gen: torch.Generator, progress: Progress, metrics: dict, top: list,
                config: dict, average: WeightAverage | None) -> None:
    """An epoch's record into the history (with what Ray is told to keep checkpoints by), the history and, when it is
    the best so far, its top-k lists to storage, its line, and its checkpoint to Ray Train."""
    history = progress.history
    history.append(metrics)  # every rank: the selection figures are all-reduced, so they agree on stopping
    metrics |= selection_scores(history, worker.select)
    best = best_record(history, worker.select) is metrics
    if worker.rank == 0:
        store = worker.cfg.storage.store()
        store.write_json(config["history"], history)  # also when Ray keeps only the best metrics
        if best:  # the kept model's top-k lists, for the retrain-stability analysis
            write_topk(store, config["topk"], top)
        # A lone run says every epoch; a sweep's trial draws them in place and says one line at its end.
        (worker_say if config["each_epoch"] else worker_progress)(epoch_line(metrics, worker.cfg, worker.select, best))
    report(worker, engine, gen, progress, metrics, config["commit"], average)


def epoch_record(worker: Worker, progress: Progress, stats: torch.Tensor, train_time: float, input_wait: float,
                 flops: Flops, cpu_s: float) -> dict:
    """An epoch's figures of the run itself: loss, speed, input wait, CPU time, FLOPs and MFU, and what it was run
    with. FLOPs:
    the backbone's for every input token, the decoding's for every target (the same events, but in a retrain on its
    new window, whose context is read, not predicted)."""
    cfg, spec = worker.cfg, worker.run.spec
    events_per_s = float(stats[2]) / max(train_time, 1e-9)
    tflops_per_s = (flops.backbone * float(stats[3]) + flops.decoding * float(stats[2])) / max(train_time, 1e-9) / 1e12
    return {
        "epoch": progress.epoch,
        "loss": float(stats[0] / max(stats[1], 1)),
        "steps": int(stats[1]) // worker.world,
        "events_per_s": events_per_s,
        "epoch_time_s": train_time,
        "input_wait_s": input_wait,
        "input_wait_share": input_wait / max(train_time, 1e-9),
        # CPU seconds (user and system, every thread) of this rank's worker process over the epoch's steps: what the
        # step costs the process, apart from the time other processes take from it (benchmarks/overhead.py).
        "cpu_s": cpu_s,
        "wall_time_s": progress.wall_time_s,
        "events_processed": progress.events_seen,
        "backbone_params": spec.backbone_params,
        "preset": cfg.model.preset,  # as resolved from the data when the config said "auto"
        "max_seq_len": spec.max_seq_len,
        "flops_per_token": flops.total,
        # Training FLOPs so far: the cost of one retrain at its end.
        "train_flops": flops.backbone * progress.tokens_seen + flops.decoding * progress.events_seen,
        "model_tflops_per_s": tflops_per_s,
        # Against the devices' dense bf16 peak (one device per worker); absent on CPU or an unknown GPU.
        **({"mfu": mfu(tflops_per_s, worker.peak_tflops, worker.world)} if worker.peak_tflops else {}),
        "id_mask_rate": worker.run.mask_rate,
        "malloc": worker.malloc,
        "seed": cfg.train.seed,
        "window_shift_h": cfg.train.window_shift_h,
        "warm_start": cfg.train.init_from is not None,
        "restarts": progress.restarts,
    }


def report(worker: Worker, engine, gen: torch.Generator, progress: Progress, metrics: dict, commit: str,
           average: WeightAverage | None) -> None:
    """The epoch's checkpoint (serving weights and resume state) and figures to Ray Train. Every rank reports its
    folder (its ZeRO partition); Ray merges them into one checkpoint, and keeps the best ones by the validation
    figure (and always the latest, to resume from). The serving files keep what made them: the data and split, the
    run's config (no secrets: fit strips them) and the code's commit, for `genrec export`'s model card."""
    with tempfile.TemporaryDirectory() as tmp:
        with averaged(average):  # the served weights are the validated ones; training resumes from its own
            save_for_serving(engine, worker.run.spec, worker.run.items, tmp, {
                "metrics": metrics, "preset": worker.cfg.model.preset, "dataset": worker.shards.manifest["dataset"],
                "split": worker.shards.manifest["counts"].get("split"), "commit": commit,
                "config": worker.cfg.model_dump(mode="json")}, worker.rank)
        save_resume_state(engine, tmp, worker.rank, gen, {
            "epoch": progress.epoch, "events_processed": progress.events_seen, "tokens_processed": progress.tokens_seen,
            "wall_time_s": progress.wall_time_s,
            "world": worker.world, "restarts": progress.restarts, "history": progress.history}, average)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def start_tracking(cfg: GenrecConfig, run_name: str):
    """A wandb run (offline by default) on rank 0, or None when tracking.wandb is disabled."""
    if cfg.tracking.wandb == "disabled":
        return None
    import wandb  # only when tracking: wandb takes seconds to import

    wandb_dir = cfg.storage.store().local("wandb")
    wandb_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(project=cfg.tracking.project, name=run_name, mode=cfg.tracking.wandb, dir=str(wandb_dir),
                      config=cfg.model_dump(mode="json"), reinit="finish_previous")


def stop_reason(cfg: GenrecConfig, history: list[dict], select: str, elapsed_s: float, reduce) -> str | None:
    """Why training stops after the epochs in `history`: "early stopping" (train.patience epochs without a better
    validation figure), "time budget" (train.time_budget_s spent, or the next epoch would end past it: rank 0's
    clock, shared, so every rank stops at the same epoch), or None to go on."""
    if should_stop(history, select, cfg.train.patience):
        return EARLY_STOPPING
    if cfg.train.time_budget_s is None:
        return None
    # (a fine-tuning run's epoch 0, its transfer baseline, has no wall time: it trained nothing)
    spent = budget_spent([r.get("wall_time_s", 0.0) for r in history], elapsed_s, cfg.train.time_budget_s)
    over = torch.tensor([float(spent)], dtype=torch.float64)
    return TIME_BUDGET if reduce(over).item() > 0 else None


def epoch_line(metrics: dict, cfg: GenrecConfig, select: str, best: bool) -> str:
    """One line per epoch: training loss, the validation figures (the selection metric first, popularity's beside
    it), speed."""
    shown = [select] + [VALID + m for m in ("mrr", "hr@10", "ndcg@10") if VALID + m != select]

    def figure(k: str) -> str:
        beside = f" (popularity {metrics[POPULARITY + k]:.4f})" if k == select and POPULARITY + k in metrics else ""
        return f"{k} {metrics[k]:.4f}{beside}"

    figures = "  ".join(figure(k) for k in shown if k in metrics)
    if metrics["epoch"] == 0:
        return f"epoch 0 (the weights it starts from): {figures}"
    return (f"epoch {metrics['epoch']}/{cfg.train.epochs}: loss {metrics['loss']:.4f}  {figures}  "
            f"{metrics['events_per_s']:,.0f} events/s{'  (best so far)' if best else ''}")


def epoch_progress(epoch: int, epochs: int, step: int, steps: int, events: float, elapsed_s: float,
                   history: list[dict], select: str) -> str:
    """The line of an epoch under way: its bar, events/s so far (rank 0's events times the workers), the time left
    at that pace, and the last epoch's validation figure."""
    left = f"  ETA {eta(elapsed_s * (steps - step) / step)}" if 0 < step <= steps else ""
    last = f"  last {select} {history[-1][select]:.4f}" if history and select in history[-1] else ""
    return (f"epoch {epoch}/{epochs} {progress_bar(step, steps)}  {events / max(elapsed_s, 1e-9):,.0f} events/s"
            f"{left}{last}")


def run_line(run_name: str, history: list[dict], select: str) -> str:
    """One line for a finished run (a sweep's trial): its epochs and how it ended, the kept epoch's validation figure
    beside popularity's, its wall time."""
    best = best_record(history, select)
    kept = "no validation figure" if best is None else f"kept epoch {best['epoch']}: {select} {best[select]:.4f}"
    pop = history[-1].get(POPULARITY + select)
    trained = sum(r.get("epoch", 0) > 0 for r in history)  # not an epoch 0 (the weights a run starts from)
    return (f"{run_name}: {trained} epochs ({history[-1].get('end', 'stopped')}), {kept}"
            + (f" (popularity {pop:.4f})" if best is not None and pop is not None else "")
            + f", {history[-1]['wall_time_s']:.0f} s")


def gather_rows(rows: list, world: int) -> list:
    if world == 1 or not torch.distributed.is_initialized():
        return rows
    parts = [None] * world
    torch.distributed.all_gather_object(parts, rows)
    return [r for part in parts for r in part]


def build_trainer(cfg: GenrecConfig, shards: ShardSet, run_name: str, callbacks=None,
                  finetune: FinetuneSpec | None = None, resume_from: str | None = None,
                  each_epoch: bool = True) -> TorchTrainer:
    """A TorchTrainer for `train_func` over the shard set's training windows (genrec.ingest.training_dataset).
    `finetune` continues a pre-trained checkpoint on a task's objective; `resume_from` is the checkpoint folder a
    run goes on from when Ray Train's own record of it is unusable (genrec.checkpoint.resume_point); each_epoch:
    a line said per epoch (a lone run), else one at the end (a sweep's trial, its epochs drawn in place)."""
    train_cfg = cfg.train
    storage = cfg.storage.store()
    train_ds, windows = training_dataset(cfg, shards)
    use_gpu = train_cfg.gpus_per_worker > 0
    resources = {"CPU": train_cfg.cpus_per_worker} | ({"GPU": train_cfg.gpus_per_worker} if use_gpu else {})
    return TorchTrainer(
        train_func,
        train_loop_config={"cfg": cfg, "shards": str(shards.root), "run_name": run_name,
                           "windows": windows, "history": str(history_path(cfg, run_name)),
                           "topk": str(topk_path(cfg, run_name)), "finetune": finetune,
                           "resume_from": resume_from, "commit": code_commit(), "each_epoch": each_epoch},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=train_cfg.workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=run_name, storage_path=storage.path("runs"),
                                       storage_filesystem=storage.fs if storage.remote else None,
                                       callbacks=callbacks or [],
                                       failure_config=ray.train.FailureConfig(max_failures=train_cfg.max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(
                                           num_to_keep=2,
                                           checkpoint_score_attribute=SCORE,
                                           checkpoint_score_order="max")),
        datasets={"train": train_ds},
    )

def fit(cfg: GenrecConfig, shards: ShardSet, run_name: str, callbacks=None, reserved_cpus: float = 0.0,
        finetune: FinetuneSpec | None = None, resume_from: str | None = None, resume_hint: bool = True,
        recover: bool = True, each_epoch: bool = True):
    """Train; TrainingFailed (one line: the cause, the last whole checkpoint, `--resume RUN` unless not resume_hint)
    when Ray Train gives up on the run. recover: look for where the run goes on (resume_point) unless the caller
    did (check_run_name)."""
    cfg = without_secrets(cfg)  # the serve token reaches no worker, checkpoint or wandb run
    cfg = resolve_defaults(cfg, shards)  # "auto" values from the data (genrec.defaults); a no-op when resolved
    check_ingest_room(cfg, reserved_cpus)
    refuse_partitioned(cfg)
    if cfg.train.init_from:  # said here, before any worker starts: a checkpoint of another catalogue or model
        if finetune is not None:
            raise ConfigError("train.init_from and fine-tuning's finetune.checkpoint both name the checkpoint a run "
                              "starts from; unset train.init_from")
        start_checkpoint(cfg, shards, cfg.train.init_from, "train.init_from", model_spec(cfg, shards))
    if recover and resume_from is None:  # a sweep trial that Tune restores goes on here, past an unusable record
        resume_from = resume_point(cfg, run_name)
    trainer = build_trainer(cfg, shards, run_name, callbacks, finetune, resume_from, each_epoch)
    result, error, interrupted = run_noting_sigint(trainer.fit)
    if interrupted:
        raise Interrupted(interrupt_message(cfg, run_name)) from None
    if isinstance(error, ray.train.TrainingFailedError):
        raise TrainingFailed(failure_message(cfg, run_name, error, resume_hint)) from None
    if error is not None:
        raise error
    return result


def run_noting_sigint(fit_run):
    """(fit_run()'s result, the exception it raised, whether SIGINT reached this process meanwhile).

    Ray Train installs its own SIGINT handler for the run (in the main thread): Ctrl-C aborts the run, then the
    handler calls sys.exit(0), or the controller's death surfaces from fit() instead; either way the process ended
    with status 1 and said nothing. Which handler ran does not matter here: the signal is seen on a wakeup fd (Python
    writes every signal's number there, whatever its handler), and the handler found is put back afterwards (Ray
    leaves its own, which would swallow a later Ctrl-C of the pipeline's report or serve steps)."""
    if threading.current_thread() is not threading.main_thread():  # Tune's trials: Ray installs nothing there
        try:
            return fit_run(), None, False
        except Exception as exc:
            return None, exc, False
    found = signal.getsignal(signal.SIGINT)
    result = error = None
    read, write = os.pipe()
    try:
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        previous = signal.set_wakeup_fd(write)
        try:
            result = fit_run()
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            error = exc
        finally:
            signal.set_wakeup_fd(previous)
            signal.signal(signal.SIGINT, found if found is not None else signal.SIG_DFL)
        try:
            seen = os.read(read, 1 << 16)
        except BlockingIOError:
            seen = b""
    finally:
        os.close(read)
        os.close(write)
    return result, error, signal.SIGINT in seen
