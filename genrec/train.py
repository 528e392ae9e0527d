"""The one training loop: a Ray Train worker function running DeepSpeed over Ray Data windows.

`train_func` runs on every worker (read it top to bottom); `build_trainer` wires it into a `TorchTrainer`. The
pre-training entrypoint and every Tune trial use exactly this pair, so a sweep trains the way a single run does.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from genrec.config import ConfigError, GenrecConfig
from genrec.features import FeatureVocab, build_vocab, item_features
from genrec.flops import training_flops_per_token
from genrec.metrics import from_sums, rank_sums, target_ranks
from genrec.model import GenRec, ModelSpec, Objective, resolve_shape
from genrec.objectives import draw_id_mask
from genrec.shards import ShardSet, atomic_write_json, open_shards
from genrec.windows import context_window, training_windows

CHECKPOINT_WEIGHTS = "model.pt"
CHECKPOINT_SPEC = "model.json"
CHECKPOINT_ITEMS = "items.parquet"
TRAIN_COUNT = "train_count"  # items.parquet column in a checkpoint: training events of each title (0 = cold start)


def model_spec(cfg: GenrecConfig, shards: ShardSet, items: pa.Table | None = None) -> ModelSpec:
    m = cfg.model
    layers, width, heads = resolve_shape(m.preset, m.layers, m.width, m.heads)
    items = pq.read_table(shards.items_path) if items is None and m.semantic else items
    vocab = build_vocab(items, m.text_buckets) if m.semantic else FeatureVocab()
    return ModelSpec(num_items=shards.num_items, layers=layers, width=width, heads=heads, max_seq_len=m.max_seq_len,
                     dropout=m.dropout, activation_checkpointing=m.activation_checkpointing,
                     projection_ratio=m.projection_ratio, semantic=m.semantic, features=vocab.to_dict())


def objective(cfg: GenrecConfig) -> Objective:
    m = cfg.model
    return Objective(decoding=m.decoding, logq=m.logq, mtp_k=m.mtp_k,
                     half_life_s=None if m.mtp_half_life_h is None else m.mtp_half_life_h * 3600.0)


def num_negatives(cfg: GenrecConfig, num_items: int) -> int | None:
    """Uniform negatives per batch for "sampled" decoding (None for full softmax and in-batch negatives)."""
    if cfg.model.decoding != "sampled":
        return None
    if cfg.model.num_negatives is not None:
        return int(min(num_items, cfg.model.num_negatives))
    return int(min(num_items, max(cfg.model.min_negatives, round(cfg.model.negatives_fraction * num_items))))


def id_mask_rate(cfg: GenrecConfig, shards: ShardSet) -> float:
    """The collaborative-embedding masking rate: configured, or the shards' observed cold-start share."""
    if cfg.model.id_mask_rate == "auto":
        return float(shards.manifest["counts"].get("cold_start_eval_share", 0.0)) if cfg.model.semantic else 0.0
    return float(cfg.model.id_mask_rate)


def item_counts(shards: ShardSet) -> np.ndarray:
    """Training events per item index (length num_items + 1): which titles have a trained id row, and q for logQ."""
    counts = np.zeros(shards.num_items + 1, np.int64)
    for path in shards.files("train"):
        flat = pc.list_flatten(pq.read_table(path, columns=["items"]).column("items")).to_numpy()
        counts += np.bincount(flat, minlength=shards.num_items + 1)[: shards.num_items + 1]
    return counts


def catalogue(spec: ModelSpec, items: pa.Table, counts: np.ndarray | None, decoding: str = "sampled"):
    """(features, known, log_q) for GenRec.set_catalogue from an item table (with `index`) and training counts."""
    feats = item_features(items, FeatureVocab.from_dict(spec.features))
    n = len(feats) - 1
    known = torch.zeros(n + 1, dtype=torch.bool)
    if counts is not None:
        m = min(len(counts), n + 1)
        known[:m] = torch.from_numpy(counts[:m] > 0)
    if decoding == "in_batch" and counts is not None:  # a batch's targets are drawn ~ training frequency
        c = torch.from_numpy(counts.astype(np.float64))
        log_q = torch.log((c + 1.0) / (c.sum() + len(c))).float()
    else:
        log_q = torch.full((spec.num_items + 1,), -math.log(max(spec.num_items, 1)))
    return feats, known, log_q


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


def eval_probes(shards: ShardSet, delays_h: list[float], cold: np.ndarray) -> list[str]:
    """What evaluation scores, as metric suffixes:

    * "next": from the history up to the cutoff, the first title after it (plain names: mrr, hr@10, ...);
    * "cold": from the same context, the first cold-start title (no training event) after the cutoff;
    * with delays [24, 48]: "0h", "24h", "48h": one target per user (their last new title of the evaluation period)
      scored from every event before it ("0h", a fresh context) and from only the events at least 24 h / 48 h older
      than it (a serving cache that stale). Same users, same targets: the differences are the cost of staleness.
    """
    probes = ["next"]
    if cold[1:].any():
        probes.append("cold")
    if delays_h:
        probes += ["0h", *(f"{h:g}h" for h in delays_h if h > 0)]
    return probes


def _delay(probe: str) -> float | None:
    return float(probe[:-1]) * 3600 if probe.endswith("h") else None


def eval_rows(shards: ShardSet, probes: list[str], cold: np.ndarray, max_users: int | None, seed: int = 0):
    """Evaluation sets [(probes, rows)], rows = [(items, ts, actions, utils, {probe: target index})].

    The probes of one set share a context (one forward pass per user). A target is never a title already in its
    context (seen titles are excluded from the candidates)."""
    table = pq.read_table(shards.files("eval"))
    n = table.num_rows
    cols = {c: table.column(c).to_pylist() for c in ("items", "ts", "actions", "targets", "target_ts",
                                                     "target_actions", "target_utils")}
    utils = table.column("utils").to_pylist() if "utils" in table.column_names else [[1.0] * len(x)
                                                                                    for x in cols["items"]]
    users = np.arange(n)
    if max_users is not None and n > max_users:
        users = np.sort(np.random.default_rng(seed).choice(n, max_users, replace=False))
    cutoff_probes = [p for p in probes if p in ("next", "cold")]
    delays = {p: _delay(p) for p in probes if _delay(p) is not None}
    cutoff_rows, delay_rows = [], {p: [] for p in delays}
    for i in users:
        items, targets, target_ts = cols["items"][i], cols["targets"][i], cols["target_ts"][i]
        seen = set(items)
        fresh = [(t, ts) for t, ts in zip(targets, target_ts) if t not in seen]
        chosen = {}
        for p in cutoff_probes:
            hit = fresh[0][0] if p == "next" and fresh else next((t for t, _ in fresh if cold[t]), None)
            if hit is not None:
                chosen[p] = hit
        if chosen:
            cutoff_rows.append((items, cols["ts"][i], cols["actions"][i], utils[i], chosen))
        if not delays:
            continue
        # The whole sequence (history + evaluation period), in time order; the target is its last new title.
        seq_items = items + targets
        seq_ts = cols["ts"][i] + target_ts
        seq_actions = cols["actions"][i] + cols["target_actions"][i]
        seq_utils = utils[i] + cols["target_utils"][i]
        first = {}  # title -> its first position: "new at k" is first[title] == k (linear, not a set per k)
        for k, t in enumerate(seq_items):
            first.setdefault(t, k)
        j = next((k for k in range(len(seq_items) - 1, len(items) - 1, -1) if first[seq_items[k]] == k), None)
        if j is None:
            continue
        ends = {p: int(np.searchsorted(seq_ts[:j], seq_ts[j] - d, side="right")) for p, d in delays.items()}
        if min(ends.values()) == 0:
            continue  # no event old enough for the stalest cache: the user is left out of every delay probe
        for p, m in ends.items():
            delay_rows[p].append((seq_items[:m], seq_ts[:m], seq_actions[:m], seq_utils[:m], {p: seq_items[j]}))
    sets = [(cutoff_probes, cutoff_rows)]
    sets += [([p], rows) for p, rows in delay_rows.items()]
    return sets


def eval_batches(rows, probes: list[str], max_seq_len: int, rank: int, world: int, batch_size: int):
    """This rank's evaluation batches. Every rank yields the same number of batches, padded with invalid rows,
    because a ZeRO-3 forward is a collective: a rank that stopped early would hang the others."""
    per_rank = math.ceil(len(rows) / world)
    mine = rows[rank::world]
    for b in range(math.ceil(per_rank / batch_size)):
        chunk = mine[b * batch_size:(b + 1) * batch_size]
        n = max(len(chunk), 1)
        items = np.zeros((n, max_seq_len), np.int64)
        actions, gaps = np.zeros_like(items), np.zeros_like(items)
        utils = np.zeros((n, max_seq_len), np.float32)
        lengths = np.ones(n, np.int64)
        targets = {p: np.ones(n, np.int64) for p in probes}
        valid = {p: np.zeros(n, bool) for p in probes}
        exclude_rows, exclude_cols = [], []
        for i, (h_items, h_ts, h_actions, h_utils, chosen) in enumerate(chunk):
            items[i], actions[i], gaps[i], utils[i], lengths[i] = context_window(h_items, h_ts, h_actions,
                                                                                 max_seq_len, h_utils)
            for p, t in chosen.items():
                targets[p][i], valid[p][i] = t, True
            exclude_rows += [i] * len(h_items)
            exclude_cols += h_items
        batch = dict(items=items, actions=actions, gaps=gaps, utils=utils, lengths=lengths,
                     exclude_rows=np.asarray(exclude_rows, np.int64), exclude_cols=np.asarray(exclude_cols, np.int64))
        batch |= {f"target_{p}": targets[p] for p in probes} | {f"valid_{p}": valid[p] for p in probes}
        yield {k: torch.from_numpy(v) for k, v in batch.items()}


def evaluate(model: GenRec, sets, rank: int, world: int, batch_size: int, max_seq_len: int, device
             ) -> dict[str, torch.Tensor]:
    """Summed ranking statistics per probe (see metrics.rank_sums) over this rank's share of every evaluation set."""
    sums = {}
    with torch.no_grad():
        matrix = model.item_matrix()  # the catalogue's output embeddings, once per evaluation
        for probes, rows in sets:
            for p in probes:
                sums[p] = torch.zeros(5, dtype=torch.float64)
            for b in eval_batches(rows, probes, max_seq_len, rank, world, batch_size):
                b = {k: v.to(device) for k, v in b.items()}
                scores = model.score_last(b["items"], b["actions"], b["gaps"], b["utils"], b["lengths"],
                                          matrix).float()
                scores[b["exclude_rows"], b["exclude_cols"]] = float("-inf")
                for p in probes:
                    ranks = target_ranks(scores, b[f"target_{p}"])[b[f"valid_{p}"]]
                    if ranks.numel():
                        sums[p] += rank_sums(ranks.cpu())
    return sums


def probe_metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """mrr, hr@10, ndcg@10, mrr@10, eval_users for "next"; the same suffixed by the probe for the others
    (mrr_cold, mrr_24h)."""
    out = {}
    for p, v in sums.items():
        out |= {(k if p == "next" else f"{k}_{p}"): x for k, x in from_sums(v).items()}
    return out


def save_for_serving(engine, spec: ModelSpec, items: pa.Table, out_dir: str, extra: dict, rank: int) -> None:
    """Consolidated weights + spec + the item table (with each title's training count): loads with plain torch
    (see `genrec.checkpoint`)."""
    engine.save_16bit_model(out_dir, CHECKPOINT_WEIGHTS)  # collective under ZeRO-3: every rank must call it
    if rank == 0:
        Path(out_dir, CHECKPOINT_SPEC).write_text(json.dumps({"spec": spec.to_dict(), **extra}, indent=2))
        pq.write_table(items, Path(out_dir, CHECKPOINT_ITEMS))


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
    items_table = pq.read_table(shards.items_path)
    spec = model_spec(cfg, shards, items_table)
    counts = item_counts(shards)
    items_table = items_table.append_column(TRAIN_COUNT, pa.array(counts[items_table.column("index").to_numpy()]))
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = GenRec(spec)
    model.objective = objective(cfg)
    model.set_catalogue(*catalogue(spec, items_table, counts, cfg.model.decoding))
    cold = ~model.items.known.numpy()
    cold[0] = False
    mask_rate = id_mask_rate(cfg, shards)
    probes = eval_probes(shards, cfg.train.eval_delays_h, cold)
    eval_sets = eval_rows(shards, probes, cold, cfg.train.max_eval_users, cfg.train.seed)
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")

    steps_per_epoch = max(1, config["windows"] // world // cfg.train.batch_size)
    total_steps = steps_per_epoch * cfg.train.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                  betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(min(cfg.train.warmup_steps, max(1, total_steps // 10)), total_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg, on_gpu))
    # Negatives come from titles with training events only: a title launched after the cutoff would otherwise be
    # pushed down as a negative at every step (and the future catalogue would leak into training).
    trained = torch.from_numpy(np.flatnonzero(counts > 0)).to(device)
    n_neg = num_negatives(cfg, len(trained))
    # Model FLOPs per training token (genrec's own blocks; see genrec.flops): in-batch scores every target of the
    # batch, sampled its shared negatives, full the whole catalogue. The semantic tower and embeddings are not counted.
    flops_per_token = training_flops_per_token(
        spec.layers, spec.width, spec.max_seq_len, shards.num_items,
        "full" if cfg.model.decoding == "full" else "sampled", projection_ratio=spec.projection_ratio,
        num_negatives=n_neg if n_neg is not None else cfg.train.batch_size * spec.max_seq_len * cfg.model.mtp_k,
        convention="genrec").total
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
            items, actions, gaps, ts = (batch[k].long() for k in ("items", "actions", "gaps", "ts"))
            negatives = None if n_neg is None else trained[
                torch.randint(0, len(trained), (n_neg,), device=device, generator=gen)]
            id_mask = draw_id_mask(spec.num_items + 1, mask_rate, gen, device)
            loss = engine(items, actions, gaps, batch["utils"].float(), ts, negatives, id_mask)
            engine.backward(loss)
            engine.step()
            stats += torch.tensor([loss.item(), 1.0, float((items[:, 1:] > 0).sum())], dtype=torch.float64)
        train_time = time.perf_counter() - t0
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        events_seen += int(stats[2])

        engine.eval()
        eval_sums = evaluate(engine.module, eval_sets, rank, world, cfg.train.eval_batch_size, spec.max_seq_len,
                             device)
        if torch.distributed.is_initialized():
            for v in eval_sums.values():
                torch.distributed.all_reduce(v)
        metrics = {
            "epoch": epoch + 1,
            "loss": float(stats[0] / max(stats[1], 1)),
            "steps": int(stats[1]) // world,
            "events_per_s": float(stats[2]) / max(train_time, 1e-9),
            "epoch_time_s": train_time,
            "wall_time_s": time.perf_counter() - start,
            "events_processed": events_seen,
            "backbone_params": spec.backbone_params,
            "flops_per_token": flops_per_token,
            "model_tflops_per_s": flops_per_token * float(stats[2]) / max(train_time, 1e-9) / 1e12,
            "lr": scheduler.get_last_lr()[0],
            "id_mask_rate": mask_rate,
            **probe_metrics(eval_sums),
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
            save_for_serving(engine, spec, items_table, tmp, {"metrics": metrics, "preset": cfg.model.preset,
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
    train_ds = ray.data.read_parquet(shards.files("train"), columns=["items", "ts", "actions", "utils"],
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
