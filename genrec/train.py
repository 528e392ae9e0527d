"""The one training loop: a Ray Train worker function running DeepSpeed over Ray Data windows.

`train_func` runs on every worker (read it top to bottom); `build_trainer` wires it into a `TorchTrainer`. The
pre-training entrypoint and every Tune trial use exactly this pair, so a sweep trains the way a single run does.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from genrec.config import ConfigError, GenrecConfig
from genrec.metrics import from_sums, rank_sums, target_ranks
from genrec.model import GenRec, ModelSpec, resolve_shape
from genrec.shards import ShardSet, atomic_write_json, open_shards
from genrec.windows import context_window, training_windows

CHECKPOINT_WEIGHTS = "model.pt"
CHECKPOINT_SPEC = "model.json"
CHECKPOINT_ITEMS = "items.parquet"


def model_spec(cfg: GenrecConfig, num_items: int) -> ModelSpec:
    m = cfg.model
    layers, width, heads = resolve_shape(m.preset, m.layers, m.width, m.heads)
    return ModelSpec(num_items=num_items, layers=layers, width=width, heads=heads, max_seq_len=m.max_seq_len,
                     dropout=m.dropout, activation_checkpointing=m.activation_checkpointing)


def num_negatives(cfg: GenrecConfig, num_items: int) -> int | None:
    """Uniform negatives per batch for sampled softmax (None = full softmax)."""
    if cfg.model.decoding == "full":
        return None
    return int(min(num_items, max(cfg.model.min_negatives, round(cfg.model.negatives_fraction * num_items))))


def count_windows(shards: ShardSet, max_seq_len: int) -> int:
    """Training windows per epoch: a user with n events gives ceil((n - 1) / max_seq_len) (see window_bounds)."""
    total = 0
    for path in shards.files("train"):
        n = pc.list_value_length(pq.read_table(path, columns=["items"]).column("items")).to_numpy()
        total += int(np.sum(np.ceil(np.clip(n - 1, 0, None) / max_seq_len)))
    return total


def deepspeed_config(cfg: GenrecConfig, on_gpu: bool) -> dict:
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and on_gpu)
    return {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.train.grad_clip,
        "bf16": {"enabled": bf16},
        "zero_optimization": {
            "stage": cfg.train.zero_stage,
            # Consolidate the partitioned weights on save so that a checkpoint loads without DeepSpeed.
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        # A plain torch AdamW: DeepSpeed's fused/CPU Adam would compile C++ ops at start-up.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine down to 10%

    return f


def eval_batches(shards: ShardSet, max_seq_len: int, rank: int, world: int, batch_size: int,
                 max_users: int | None, seed: int = 0):
    """This rank's evaluation batches for next-event ranking after the cutoff.

    Target = the first event after the cutoff whose title is not already in the history (seen titles are excluded
    from the candidates). Every rank yields the same number of batches, padded with `valid=False` rows, because a
    ZeRO-3 forward is a collective: a rank that stopped early would hang the others.
    """
    table = pq.read_table(shards.files("eval"), columns=["items", "ts", "actions", "targets"])
    rows = []
    for items, ts, actions, targets in zip(*(table.column(c).to_pylist() for c in table.column_names)):
        seen = set(items)
        target = next((t for t in targets if t not in seen), None)
        if target is not None:
            rows.append((items, ts, actions, target))
    if max_users is not None and len(rows) > max_users:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), max_users, replace=False))
        rows = [rows[i] for i in keep]
    per_rank = math.ceil(len(rows) / world)
    mine = rows[rank::world]
    n_batches = math.ceil(per_rank / batch_size)
    for b in range(n_batches):
        chunk = mine[b * batch_size:(b + 1) * batch_size]
        n = max(len(chunk), 1)
        items = np.zeros((n, max_seq_len), np.int64)
        actions = np.zeros_like(items)
        gaps = np.zeros_like(items)
        lengths = np.ones(n, np.int64)
        targets = np.ones(n, np.int64)
        valid = np.zeros(n, bool)
        exclude_rows, exclude_cols = [], []
        for i, (h_items, h_ts, h_actions, target) in enumerate(chunk):
            items[i], actions[i], gaps[i], lengths[i] = context_window(h_items, h_ts, h_actions, max_seq_len)
            targets[i], valid[i] = target, True
            exclude_rows += [i] * len(h_items)
            exclude_cols += h_items
        yield {k: torch.from_numpy(v) for k, v in dict(
            items=items, actions=actions, gaps=gaps, lengths=lengths, targets=targets, valid=valid,
            exclude_rows=np.asarray(exclude_rows, np.int64), exclude_cols=np.asarray(exclude_cols, np.int64)).items()}


def evaluate(model: GenRec, batches, device) -> torch.Tensor:
    """Summed ranking statistics ([count, sum 1/r, hits@10, ndcg@10]) over this rank's batches."""
    sums = torch.zeros(4, dtype=torch.float64)
    for b in batches:
        b = {k: v.to(device) for k, v in b.items()}
        scores = model.score_last(b["items"], b["actions"], b["gaps"], b["lengths"]).float()
        scores[b["exclude_rows"], b["exclude_cols"]] = float("-inf")
        ranks = target_ranks(scores, b["targets"])[b["valid"]]
        if ranks.numel():
            sums += rank_sums(ranks.cpu())
    return sums


def save_for_serving(engine, spec: ModelSpec, shards: ShardSet, out_dir: str, extra: dict, rank: int) -> None:
    """Consolidated weights + spec + vocabulary: loads with plain torch (see `genrec.checkpoint`)."""
    engine.save_16bit_model(out_dir, CHECKPOINT_WEIGHTS)  # collective under ZeRO-3: every rank must call it
    if rank == 0:
        Path(out_dir, CHECKPOINT_SPEC).write_text(json.dumps({"spec": spec.to_dict(), **extra}, indent=2))
        shutil.copyfile(shards.items_path, Path(out_dir, CHECKPOINT_ITEMS))


def train_func(config: dict) -> None:
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # must be set before deepspeed is imported
    os.environ.setdefault("WANDB_SILENT", "true")
    # torch.distributed's renamed-collective warnings fire on every ZeRO-3 gather; they say nothing about our run.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    import deepspeed

    cfg = GenrecConfig.model_validate(config["cfg"])
    torch.set_num_threads(cfg.train.torch_threads)
    shards = open_shards(config["shards"])
    spec = model_spec(cfg, shards.num_items)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = GenRec(spec)
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")

    steps_per_epoch = max(1, config["windows"] // world // cfg.train.batch_size)
    total_steps = steps_per_epoch * cfg.train.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                  betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(min(cfg.train.warmup_steps, max(1, total_steps // 10)), total_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg, on_gpu))
    n_neg = num_negatives(cfg, shards.num_items)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed * 1000 + rank)

    run = None
    if rank == 0 and cfg.tracking.wandb != "disabled":
        import wandb

        wandb_dir = cfg.storage.path("wandb")
        wandb_dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=cfg.tracking.project, name=config["run_name"], mode=cfg.tracking.wandb,
                         dir=str(wandb_dir), config=cfg.model_dump(mode="json"), reinit="finish_previous")

    data = ray.train.get_dataset_shard("train")
    start = time.perf_counter()
    events_seen = 0
    history: list[dict] = []
    for epoch in range(cfg.train.epochs):
        engine.train()
        t0 = time.perf_counter()
        stats = torch.zeros(3, dtype=torch.float64)  # [sum loss, steps, target events]
        for batch in data.iter_torch_batches(batch_size=cfg.train.batch_size, drop_last=True,
                                             local_shuffle_buffer_size=cfg.train.shuffle_buffer or None,
                                             local_shuffle_seed=cfg.train.seed + epoch, device=str(device)):
            items, actions, gaps, targets = (batch[k].long() for k in ("items", "actions", "gaps", "targets"))
            negatives = None if n_neg is None else torch.randint(
                1, shards.num_items + 1, (n_neg,), device=device, generator=gen)
            loss = engine(items, actions, gaps, targets, negatives)
            engine.backward(loss)
            engine.step()
            stats += torch.tensor([loss.item(), 1.0, float((targets > 0).sum())], dtype=torch.float64)
        train_time = time.perf_counter() - t0
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        events_seen += int(stats[2])

        engine.eval()
        eval_sums = evaluate(engine.module, eval_batches(
            shards, spec.max_seq_len, rank, world, cfg.train.eval_batch_size, cfg.train.max_eval_users), device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(eval_sums)
        metrics = {
            "epoch": epoch + 1,
            "loss": float(stats[0] / max(stats[1], 1)),
            "steps": int(stats[1]) // world,
            "events_per_s": float(stats[2]) / max(train_time, 1e-9),
            "epoch_time_s": train_time,
            "wall_time_s": time.perf_counter() - start,
            "events_processed": events_seen,
            "backbone_params": spec.backbone_params,
            "lr": scheduler.get_last_lr()[0],
            **from_sums(eval_sums),
        }
        if rank == 0:
            # The per-epoch history, also when Ray keeps only the best checkpoints' metrics.
            history.append(metrics)
            atomic_write_json(Path(config["history"]), history)
            print(f"epoch {epoch + 1}/{cfg.train.epochs}: loss {metrics['loss']:.4f}  mrr {metrics['mrr']:.4f}  "
                  f"hr@10 {metrics['hr@10']:.4f}  {metrics['events_per_s']:,.0f} events/s", flush=True)
        if run is not None:
            run.log(metrics, step=epoch + 1)
        with tempfile.TemporaryDirectory() as tmp:
            save_for_serving(engine, spec, shards, tmp, {"metrics": metrics, "preset": cfg.model.preset,
                                                         "dataset": shards.manifest["dataset"]}, rank)
            ckpt = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
            ray.train.report(metrics, checkpoint=ckpt)
    if run is not None:
        run.finish()


def history_path(cfg: GenrecConfig, run_name: str) -> Path:
    return cfg.storage.path("runs", run_name, "history.json")


def build_trainer(cfg: GenrecConfig, shards: ShardSet, run_name: str, callbacks=None):
    """A TorchTrainer for `train_func` over the shard set's training split, streamed by Ray Data."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.train
    windows = count_windows(shards, cfg.model.max_seq_len)
    if windows // t.workers < t.batch_size:
        raise ConfigError(f"train.batch_size={t.batch_size} is larger than the {windows // t.workers} training "
                         f"windows each of the {t.workers} workers gets; lower train.batch_size or train.workers")
    train_ds = ray.data.read_parquet(shards.files("train"), columns=["items", "ts", "actions"],
                                     num_cpus=t.data_task_cpus).map_batches(
        training_windows, fn_kwargs={"max_seq_len": cfg.model.max_seq_len}, batch_format="numpy", batch_size=256,
        num_cpus=t.data_task_cpus)
    use_gpu = t.gpus_per_worker > 0
    resources = {"CPU": t.cpus_per_worker} | ({"GPU": t.gpus_per_worker} if use_gpu else {})
    return TorchTrainer(
        train_func,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "shards": str(shards.root), "run_name": run_name,
                           "windows": windows, "history": str(history_path(cfg, run_name))},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=t.workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=run_name, storage_path=str(cfg.storage.path("runs")),
                                       callbacks=callbacks or [],
                                       checkpoint_config=ray.train.CheckpointConfig(
                                           num_to_keep=2, checkpoint_score_attribute="mrr",
                                           checkpoint_score_order="max")),
        datasets={"train": train_ds},
    )


def check_ingest_room(cfg: GenrecConfig, reserved: float = 0.0) -> None:
    """Refuse a run whose training workers would leave Ray Data no whole CPU: it would hang, not fail."""
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    free = total - reserved - cfg.train.workers * cfg.train.cpus_per_worker
    if free < 1.0:
        raise ConfigError(
            f"train.workers={cfg.train.workers} x train.cpus_per_worker={cfg.train.cpus_per_worker} leaves "
            f"{free:.2f} of the cluster's {total:g} CPUs for Ray Data, which needs at least 1 to read the shards; "
            "lower train.cpus_per_worker or train.workers (or add CPU nodes)")


def fit(cfg: GenrecConfig, shards: ShardSet, run_name: str, callbacks=None, reserved_cpus: float = 0.0):
    check_ingest_room(cfg, reserved_cpus)
    return build_trainer(cfg, shards, run_name, callbacks).fit()
