"""What a training run trains, built from a config and a shard set: the model with its catalogue and objective, the
training window, the optimizer and its learning-rate schedule.

Shared by the Ray Train worker loop (genrec.train) and the reference loop (genrec.reference_loop), so both train the
same model the same way; the Ray side adds only distribution (Ray Data, DeepSpeed, checkpoints).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from genrec.checkpoint import TRAIN_COUNT, catalogue_features
from genrec.config import ConfigError, GenrecConfig
from genrec.features import (NUM_AGE_BUCKETS, FeatureVocab, age_bucket_counts, age_log_lift, build_vocab,
                             title_age_buckets)
from genrec.flops import Flops, training_flops_per_token
from genrec.model import GenRec, ModelSpec, Objective, resolve_shape
from genrec.shards import ShardSet
from genrec.windows import in_window, training_windows, window_count


@dataclass
class Run:
    """A run's model and the facts about its data that the loop needs."""

    model: GenRec
    spec: ModelSpec
    items: pa.Table  # the item table with each title's training count (TRAIN_COUNT), as checkpoints keep it
    window: tuple[int | None, int | None]  # the training window [ts_min, ts_max)
    counts: np.ndarray  # training events per item index inside the window
    trained: torch.Tensor  # indices of titles with training events: where sampled negatives are drawn
    mask_rate: float  # collaborative-embedding masking rate
    cold: np.ndarray  # per item index: no event in the shards' training rows (what held-out tasks call cold)
    targets_from: int | None = None  # only events from this time on are targets (train.new_window_h)


def build_run(cfg: GenrecConfig, shards: ShardSet, task: str | None = None) -> Run:
    """The model of a run (seeded by train.seed: every rank builds the same initial weights), its catalogue (known
    titles, logQ), objective (pre-training's, or `task`'s when fine-tuning) and title-age prior, and the facts of its
    training window."""
    items = pq.read_table(shards.items_path, filesystem=shards.fs)
    spec = model_spec(cfg, shards, items)
    window = train_window(cfg, shards)
    counts = item_counts(shards, window)
    items = items.append_column(TRAIN_COUNT, pa.array(counts[items.column("index").to_numpy()]))
    torch.manual_seed(cfg.train.seed)
    model = GenRec(spec)
    since = targets_from(cfg, shards)
    model.objective = replace(objective(cfg, task), targets_from=since)
    model.set_catalogue(*catalogue(spec, items, counts, cfg.model.decoding))
    if model.items.age is not None:
        with torch.no_grad():
            model.items.age.weight[:, 0] = age_prior(shards, window, model.items.f_launch, model.items.known)
    # The held-out requests and their targets do not depend on this run's training window, so every retrain
    # (seeds, shifted windows) scores the same ones: "cold" means no event in the shards' training rows.
    cold = (counts if window == (None, None) else item_counts(shards)) == 0
    cold[0] = False
    # Negatives come from titles with training events only: a title launched after the cutoff would otherwise be
    # pushed down as a negative at every step (and the future catalogue would leak into training).
    return Run(model, spec, items, window, counts, torch.from_numpy(np.flatnonzero(counts > 0)),
               id_mask_rate(cfg, shards), cold, since)


def model_spec(cfg: GenrecConfig, shards: ShardSet, items: pa.Table | None = None) -> ModelSpec:
    model_cfg = cfg.model
    layers, width, heads = resolve_shape(model_cfg.preset, model_cfg.layers, model_cfg.width, model_cfg.heads,
                                         model_cfg.block)
    if items is None and model_cfg.semantic:
        items = pq.read_table(shards.items_path, filesystem=shards.fs)
    vocab = build_vocab(items, model_cfg.text_buckets) if model_cfg.semantic else FeatureVocab()
    return ModelSpec(num_items=shards.num_items, layers=layers, width=width, heads=heads,
                     max_seq_len=model_cfg.max_seq_len, dropout=model_cfg.dropout,
                     activation_checkpointing=model_cfg.activation_checkpointing,
                     projection_ratio=model_cfg.projection_ratio, semantic=model_cfg.semantic,
                     features=vocab.to_dict(), title_age=model_cfg.title_age,
                     tie_embeddings=model_cfg.tie_embeddings, block=model_cfg.block)


def objective(cfg: GenrecConfig, task: str | None = None) -> Objective:
    """The training objective: pre-training's (next events, MTP), or a task's when fine-tuning on it. A horizon task
    trains on its own future window; next-event, cold-start and popular-pool tasks on next-event prediction."""
    model_cfg = cfg.model
    half_life_h = model_cfg.mtp_half_life_h
    base = Objective(decoding=model_cfg.decoding, logq=model_cfg.logq, mtp_k=model_cfg.mtp_k,
                     half_life_s=None if half_life_h is None else half_life_h * 3600.0,
                     exclude_history=model_cfg.exclude_history)
    task_cfg = cfg.eval.tasks[task] if task is not None else None
    if task_cfg is None or task_cfg.targets != "horizon":
        return base
    return replace(base, mtp_k=cfg.finetune.horizon_targets, half_life_s=None, skip=task_cfg.skip,
                   min_dt_s=task_cfg.start_h * 3600.0, max_dt_s=task_cfg.end_h * 3600.0)


def train_window(cfg: GenrecConfig, shards: ShardSet) -> tuple[int | None, int | None]:
    """[ts_min, ts_max) of the training events (None = unbounded): the window moved back from the training end (the
    validation cutoff) by train.window_shift_h and cut to train.window_days. Time split only (the config refuses
    shifts on leave-one-out)."""
    shift_h, days = cfg.train.window_shift_h, cfg.train.window_days
    if not shift_h and not days:
        return None, None
    counts = shards.manifest["counts"]
    cutoff = counts.get("valid_cutoff") or counts.get("cutoff")
    if cutoff is None:
        raise ConfigError("train.window_shift_h / train.window_days need time-split shards (data.split: time)")
    ts_max = int(cutoff - shift_h * 3600) if shift_h else None
    ts_min = int((ts_max if ts_max is not None else cutoff) - days * 86400) if days else None
    return ts_min, ts_max


def targets_from(cfg: GenrecConfig, shards: ShardSet) -> int | None:
    """The Unix time from which training events are targets (train.new_window_h hours before the training window's
    end; None: every event is): a retrain on its new window, the older events its context."""
    if cfg.train.new_window_h is None:
        return None
    cutoff = shards.manifest["counts"].get("valid_cutoff") or shards.manifest["counts"].get("cutoff")
    if cutoff is None:
        raise ConfigError("train.new_window_h needs time-split shards (data.split: time)")
    return int(cutoff - (cfg.train.window_shift_h + cfg.train.new_window_h) * 3600)


def num_negatives(cfg: GenrecConfig, num_items: int) -> int | None:
    """Uniform negatives per batch for "sampled" decoding (None for full softmax and in-batch negatives)."""
    if cfg.model.decoding != "sampled":
        return None
    if cfg.model.num_negatives is not None:
        return int(min(num_items, cfg.model.num_negatives))
    return int(min(num_items, max(cfg.model.min_negatives, round(cfg.model.negatives_fraction * num_items))))


def id_mask_rate(cfg: GenrecConfig, shards: ShardSet) -> float:
    """The collaborative-embedding masking rate: configured, or ("auto") the share of validation targets on titles
    without a training event. Measured on the validation window, never on the test split: the same pseudo-cutoff
    every choice is made at."""
    if cfg.model.id_mask_rate == "auto":
        return float(shards.manifest["counts"].get("cold_start_valid_share", 0.0)) if cfg.model.semantic else 0.0
    return float(cfg.model.id_mask_rate)


def item_counts(shards: ShardSet, window: tuple[int | None, int | None] = (None, None)) -> np.ndarray:
    """Training events per item index (length num_items + 1) inside the training window: which titles have a
    trained id row, and q for logQ."""
    counts = np.zeros(shards.num_items + 1, np.int64)
    for path in shards.files("train"):
        t = pq.read_table(path, columns=["items", "ts"], filesystem=shards.fs)
        flat = pc.list_flatten(t.column("items")).to_numpy()
        if window != (None, None):
            flat = flat[in_window(pc.list_flatten(t.column("ts")).to_numpy(), *window)]
        counts += np.bincount(flat, minlength=shards.num_items + 1)[: shards.num_items + 1]
    return counts


def catalogue(spec: ModelSpec, items: pa.Table, counts: np.ndarray | None, decoding: str = "sampled"):
    """(features, known, log_q) for GenRec.set_catalogue from an item table (with `index`) and training counts: the
    catalogue a checkpoint's model ranks (genrec.checkpoint.catalogue_features) and the sampling correction."""
    feats, known = catalogue_features(spec, items, counts)
    if decoding == "in_batch" and counts is not None:  # a batch's targets are drawn ~ training frequency
        c = torch.from_numpy(counts.astype(np.float64))
        log_q = torch.log((c + 1.0) / (c.sum() + len(c))).float()
    else:
        log_q = torch.full((spec.num_items + 1,), -math.log(max(spec.num_items, 1)))
    return feats, known, log_q


def age_prior(shards: ShardSet, window: tuple[int | None, int | None], launch: torch.Tensor, known: torch.Tensor,
              requests: int = 4096) -> torch.Tensor:
    """The title-age bias's starting point: :func:`genrec.features.age_log_lift` of the training window's events
    (each scored at its own time, as the request it answers) against every trained title on offer at a sample of
    those times (counted exactly, :func:`genrec.features.age_bucket_counts`). Seeded: every rank starts alike."""
    target_counts = np.zeros(NUM_AGE_BUCKETS, np.int64)
    times = []
    launch_np = launch.numpy()
    for path in shards.files("train"):  # one file at a time: only the bucket counts and the times are kept
        t = pq.read_table(path, columns=["items", "ts"], filesystem=shards.fs)
        i, s = pc.list_flatten(t.column("items")).to_numpy(), pc.list_flatten(t.column("ts")).to_numpy()
        if window != (None, None):
            keep = in_window(s, *window)
            i, s = i[keep], s[keep]
        buckets = title_age_buckets(torch.from_numpy(s.astype(np.int64)), torch.from_numpy(launch_np[i]))
        target_counts += np.bincount(buckets.numpy(), minlength=NUM_AGE_BUCKETS)[:NUM_AGE_BUCKETS]
        times.append(s)
    times = np.concatenate(times) if times else np.zeros(0, np.int64)
    offered = launch_np[1:][known[1:].numpy()]
    if not len(times) or not len(offered):
        return torch.zeros(NUM_AGE_BUCKETS)
    sample = np.random.default_rng(0).choice(times, size=min(requests, len(times)), replace=False)
    return torch.from_numpy(age_log_lift(target_counts, age_bucket_counts(sample, offered))).float()


def all_windows(shards: ShardSet, max_seq_len: int, window: tuple[int | None, int | None] = (None, None),
                targets_from: int | None = None) -> dict[str, np.ndarray]:
    """Every training window of the shards, cut in this process as the trainer's Ray Data tasks cut them
    (genrec.windows.training_windows): the reference loop's input, and the trainer's for small data."""
    table = pq.read_table(shards.files("train"), columns=["items", "ts", "actions", "utils"], filesystem=shards.fs)
    batch = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
    return training_windows(batch, max_seq_len, *window, targets_from=targets_from)


def count_windows(shards: ShardSet, max_seq_len: int, window: tuple[int | None, int | None] = (None, None),
                  targets_from: int | None = None) -> int:
    """Training windows per epoch: a user with n events in the window gives ceil((n - 1) / max_seq_len) (see
    window_bounds); with targets_from, ceil(min(m, n - 1) / max_seq_len) for the m events from then on (the windows
    holding a target, cut from the end)."""
    total = 0
    for path in shards.files("train"):
        t = pq.read_table(path, columns=["ts"], filesystem=shards.fs).column("ts")
        if window == (None, None) and targets_from is None:
            n = pc.list_value_length(t).to_numpy()
            total += int(np.sum(np.ceil(np.clip(n - 1, 0, None) / max_seq_len)))
            continue
        total += sum(window_count(np.asarray(ts, np.int64), max_seq_len, *window, targets_from)
                     for ts in t.to_pylist())
    return total


def lr_lambda(warmup: int, total: int, offset: int = 0, schedule: str = "constant"):
    """The learning-rate factor of each step: a linear warm-up over `warmup` steps, then constant, or ("cosine")
    down to 10% at step `total`; `offset` steps already done (a resume on fresh optimizer state). Early stopping
    decides when a run ends, so the constant schedule is the default: a cosine needs the length known up front."""
    def f(step: int) -> float:
        step += offset
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine down to 10%

    return f


def width_scaled_lr(lr: float, base_width: int | None, width: int) -> float:
    """The learning rate of a backbone `width` wide: lr x base_width / width when it is wider than base_width (Adam's
    rate for hidden layers falls as 1/width, as in muP: at one rate a wider backbone trains worse, or not at all),
    else lr; lr at every width when base_width is None."""
    if base_width is None or width <= base_width:
        return lr
    return lr * base_width / width


def optimizer_and_schedule(cfg: GenrecConfig, model: torch.nn.Module, total_steps: int, offset: int = 0,
                           fused: bool = False):
    """AdamW over the trainable parameters, weight decay on the weight matrices of linear layers only (never on
    embedding tables, norms or biases: decaying a title's row pulls rarely seen titles toward zero), and its
    learning-rate schedule (train.lr_schedule, train.warmup_steps), from train.lr scaled to the backbone's width."""
    decay, keep = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                matrix = isinstance(module, torch.nn.Linear) and name == "weight"
                (decay if matrix or cfg.train.weight_decay_on == "all" else keep).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    lr = width_scaled_lr(cfg.train.lr, cfg.train.lr_base_width, model.spec.width)
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.98), fused=fused)
    warmup = min(cfg.train.warmup_steps, max(1, total_steps // 10)) if cfg.train.warmup_steps else 0
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(warmup, total_steps, offset, cfg.train.lr_schedule))
    return optimizer, schedule


def model_flops(cfg: GenrecConfig, spec: ModelSpec, num_items: int, n_neg: int | None) -> Flops:
    """Model FLOPs per training token, backbone (every input token) and decoding (every target) apart (genrec's own
    blocks; see genrec.flops): in-batch scores every target of the batch, sampled its shared negatives, full the whole
    catalogue. The semantic tower and embeddings are not counted."""
    return training_flops_per_token(
        spec.layers, spec.width, spec.max_seq_len, num_items,
        "full" if cfg.model.decoding == "full" else "sampled", projection_ratio=spec.projection_ratio,
        num_negatives=n_neg if n_neg is not None else cfg.train.batch_size * spec.max_seq_len * cfg.model.mtp_k,
        convention="genrec", block=spec.block)


def model_flops_per_token(cfg: GenrecConfig, spec: ModelSpec, num_items: int, n_neg: int | None) -> float:
    """model_flops' total: a token that is also a target (every token, but a retrain's context-only ones)."""
    return model_flops(cfg, spec, num_items, n_neg).total


def torch_threads(cfg: GenrecConfig, workers_here: int | None = None) -> int:
    """train.torch_threads, with "auto" the cores of this node divided among the run's workers on it (every worker
    on one node unless `workers_here` says how many share it)."""
    if cfg.train.torch_threads != "auto":
        return int(cfg.train.torch_threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers_here or cfg.train.workers))
