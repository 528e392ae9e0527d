"""The one training loop: a Ray Train worker function running DeepSpeed over Ray Data windows.

`train_func` runs on every worker (read it top to bottom); `build_trainer` wires it into a `TorchTrainer`. The
pre-training entrypoint and every Tune trial use exactly this pair, so a sweep trains the way a single run does.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from genrec.build import (all_windows, build_run, count_windows, model_flops_per_token, num_negatives,
                          optimizer_and_schedule, torch_threads, train_window)
from genrec.checkpoint import (CHECKPOINT_ITEMS, CHECKPOINT_SPEC, CHECKPOINT_WEIGHTS, RESUME_DIR,
                               RESUME_TAG, TRAINER_STATE, CheckpointError, checkpoint_folders, last_resumable,
                               local_checkpoint, ranks_read, read_spec, read_trainer_state, save_for_serving,
                               save_resume_state, verify_resumable)
from genrec.config import ConfigError, GenrecConfig, without_secrets
from genrec.defaults import resolve as resolve_defaults
from genrec.errors import GenrecError
from genrec.flops import mfu, peak_tflops
from genrec.model import GenRec, ModelSpec, backbone_params, resolve_shape
from genrec.objectives import draw_id_mask
from genrec.runtime import Interrupted
from genrec.selection import SCORE, VALID, best_record, selection_key, selection_scores, should_stop
from genrec.shards import ShardSet, open_shards
from genrec.tasks import build_plan, count_scorer, evaluate_plan, model_scorer, plan_metrics
from genrec.windows import training_windows
from genrec.winner import WinnerError, read_winner

POPULARITY = "popularity_"  # prefix of popularity's figures beside the model's in each epoch's record
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints, in its folder


ZERO3_FROM_PARAMS = 500e6  # train.zero_stage=auto: ZeRO-3 (parameters partitioned) from this backbone size up


def zero_stage(cfg: GenrecConfig) -> int:
    """train.zero_stage, with "auto" resolved: 0 on one worker, 1 below ZERO3_FROM_PARAMS backbone parameters, 3 from
    there up. At small scale ZeRO-3's per-module gathers cost more than the model's own compute."""
    if cfg.train.zero_stage != "auto":
        return int(cfg.train.zero_stage)
    if cfg.train.workers == 1:
        return 0
    m = cfg.model
    layers, width, _ = resolve_shape(m.preset, m.layers, m.width, m.heads, m.block)
    return 3 if backbone_params(layers, width, m.block) >= ZERO3_FROM_PARAMS else 1


def deepspeed_config(cfg: GenrecConfig, on_gpu: bool) -> dict:
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and on_gpu)
    return {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.train.grad_clip,
        "bf16": {"enabled": bf16},
        "zero_optimization": {
            "stage": zero_stage(cfg),
            # Consolidate the partitioned weights on save so that a checkpoint loads without DeepSpeed.
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        # A plain torch AdamW: DeepSpeed's fused/CPU Adam would compile C++ ops at start-up.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }




def check_run_name(cfg: GenrecConfig, run_name: str | None, resume: str | None) -> tuple[str | None, str | None]:
    """The run's name, and the checkpoint folder to go on from when Ray Train cannot say (else None; see
    resume_point). Ray Train continues any run whose folder holds its record of checkpoints (same storage and name),
    so continuing must be asked for: `--resume NAME` needs that run's checkpoint, `--name NAME` a name without any."""
    store = cfg.storage.store()
    if resume:
        if run_name and run_name != resume:
            raise ConfigError(f"--name {run_name} and --resume {resume}: a resumed run keeps its name; drop --name")
        return resume, resume_point(cfg, resume, required=True)
    if run_name:
        folder = store.path("runs", run_name)
        if store.is_file(f"{folder}/{RAY_SNAPSHOT}") or checkpoint_folders(store, folder):
            raise ConfigError(f"--name {run_name}: {store.uri(folder)} holds a run already; pass --resume {run_name} "
                              "to continue it, or choose another name")
    return run_name, None




def resume_point(cfg: GenrecConfig, run_name: str, required: bool = False) -> str | None:
    """Where a run that goes on (`--resume`, or a sweep trial Tune restores) starts: None when Ray Train's record of
    the run names a checkpoint that is whole (Ray Train restores it) or, unless `required`, when the run has no
    checkpoint yet (a new run); else the newest checkpoint folder whose files all pass their checks.

    Ray Train writes that record (RAY_SNAPSHOT) in place: a write that fails midway (a full disk) leaves it empty
    while the checkpoints it listed are still whole, and Ray Train then cannot restore the run at all. The broken
    record is set aside (kept, renamed) so that Ray Train starts a new one, and train_func loads the folder given.
    Hashes are read on a local disk; on an object store sizes only (the workers check the hashes of what they load)."""
    store = cfg.storage.store()
    folder = store.path("runs", run_name)
    snapshot = f"{folder}/{RAY_SNAPSHOT}"
    latest, unusable = None, None
    if store.is_file(snapshot):
        try:
            latest = json.loads(store.read_text(snapshot)).get("latest_checkpoint_result")
        except ValueError:
            unusable = (f"Ray Train's record of its checkpoints, {store.uri(snapshot)}, is not readable JSON "
                        f"({store.size(snapshot):,} bytes: a write cut short, e.g. by a full disk)")
    if latest:
        name = latest.get("checkpoint_dir_name", "")
        if name and not store.is_file(f"{folder}/{name}/{TRAINER_STATE}"):
            raise ConfigError(f"--resume {run_name}: {store.uri(folder + '/' + name)} has no {TRAINER_STATE} "
                              "(written by a genrec before runs could resume); start a new run")
        try:
            state = read_trainer_state(f"{folder}/{name}", store)
            verify_resumable(f"{folder}/{name}", state, ranks=ranks_read(state, cfg.train.workers), store=store,
                             hashes=not store.remote, allow_unverified=cfg.storage.allow_unverified_checkpoints)
            return None
        except CheckpointError as exc:
            unusable = f"the checkpoint Ray Train's record names last is not whole ({exc})"
    elif not unusable and not required and not checkpoint_folders(store, folder):
        return None  # a new run
    found, state, passed_over = last_resumable(store, folder, hashes=not store.remote, workers=cfg.train.workers,
                                               allow_unverified=cfg.storage.allow_unverified_checkpoints)
    if found is None:
        why = f" ({unusable})" if unusable else ""
        if passed_over:
            why += f"; its newest checkpoint is not whole ({passed_over}), nor any older one: start a new run"
        raise ConfigError(f"--resume {run_name}: {store.uri(folder)} holds no checkpoint of a run under "
                          f"storage.root={cfg.storage.root}{why}" + ("" if passed_over else "; name a run listed there"))
    if unusable and store.is_file(snapshot):
        aside = f"{snapshot}.unusable-{time.strftime('%Y%m%d-%H%M%S')}"
        store.fs.move(snapshot, aside)
        unusable += f" (kept as {aside.rsplit('/', 1)[-1]})"
    print(f"--resume {run_name}: {unusable or 'no record of its checkpoints by Ray Train'}; going on from "
          f"{found.rsplit('/', 1)[-1]} (epoch {state['epoch']}), its newest checkpoint whose files all pass their "
          "checks" + (f" (a newer one does not: {passed_over})" if passed_over else ""), flush=True)
    return found










class TrainingFailed(GenrecError, RuntimeError):
    """A run Ray Train gave up on (a worker's error past train.max_failures, or its controller's, such as a full
    disk under storage): said in one line by the entrypoints, with the checkpoint left and how to go on."""
    exit_code = 1


def failure_cause(exc: Exception) -> str:
    """The last line of each distinct error behind a Ray Train failure (its tracebacks are in the run's log)."""
    import ray.train

    if isinstance(exc, ray.train.ControllerError):
        causes = [exc.controller_failure]
    elif isinstance(exc, ray.train.WorkerGroupError):
        causes = [e for _, e in sorted(exc.worker_failures.items())]
    else:
        causes = [exc]
    lines = []
    for e in causes:
        text = [line.strip() for line in str(e).splitlines() if line.strip()]
        line = text[-1] if text else type(e).__name__
        lines.append(line if line.split(":")[0].split(".")[-1].endswith(("Error", "Exception"))
                     else f"{type(e).__name__}: {line}")
    return "; ".join(dict.fromkeys(lines))


def last_whole_checkpoint(cfg: GenrecConfig, run_name: str) -> tuple[str | None, int | None]:
    """The run's last whole checkpoint (its URI) and epoch, or (None, None), for a message after a failure or a
    Ctrl-C. Sizes only: a full disk cuts files short, and naming the checkpoint must not read gigabytes back. The
    store's own errors propagate: each caller says them after its own cause."""
    store = cfg.storage.store()
    found, state, _ = last_resumable(store, store.path("runs", run_name), hashes=False,
                                     allow_unverified=cfg.storage.allow_unverified_checkpoints)
    return (None, None) if found is None else (store.uri(found), state["epoch"])


def failure_message(cfg: GenrecConfig, run_name: str, exc: Exception, resume_hint: bool = True) -> str:
    try:
        found, epoch = last_whole_checkpoint(cfg, run_name)
    except Exception as scan:  # the store itself failing: say so, keep the run's own cause first
        return f"training run {run_name} failed: {failure_cause(exc)}; its checkpoints could not be listed ({scan})"
    if found is None:
        left = "no whole checkpoint was written"
    else:
        left = f"its last whole checkpoint is {found} (epoch {epoch})"
        if resume_hint:
            left += f"; once the cause is fixed, go on with --resume {run_name}"
    return f"training run {run_name} failed: {failure_cause(exc)}; {left}"




ARCHITECTURE = ("num_items", "layers", "width", "heads", "max_seq_len", "projection_ratio", "semantic", "features",
                "title_age", "tie_embeddings", "block")


def finetune_setup(cfg: GenrecConfig, shards: ShardSet) -> tuple[GenrecConfig, dict]:
    """The config of a fine-tuning run and the trainer's `finetune` argument.

    The model's shape comes from the checkpoint (`finetune.checkpoint`: a folder, or "winner" for the winner
    manifest's); epochs and learning rate from `finetune.*` where set. The checkpoint must rank the same catalogue
    as the shards (same titles, same order)."""
    ft = cfg.finetune
    path = ft.checkpoint
    if path is None:
        raise ConfigError("finetune.checkpoint: set a pre-trained checkpoint folder, or 'winner' (after a sweep)")
    store = cfg.storage.store()
    if path == "winner":
        try:
            path = read_winner(store, cfg.winner_path()).checkpoint
        except WinnerError as exc:  # missing or unreadable: said by read_winner, under the key that asked for it
            raise ConfigError(f"finetune.checkpoint=winner: {exc}") from None
    local = local_checkpoint(cfg, path)
    spec = read_spec(local)
    ckpt_items = pq.read_table(Path(local, CHECKPOINT_ITEMS), columns=["item_id"]).column("item_id")
    shard_items = pq.read_table(shards.items_path, columns=["item_id"], filesystem=shards.fs).column("item_id")
    if not ckpt_items.equals(shard_items):
        raise ConfigError(f"finetune.checkpoint={path}: its catalogue ({len(ckpt_items)} titles) is not the one of "
                          f"the shards at {shards.uri()} ({len(shard_items)}); fine-tune on the data it was trained on")
    out = cfg.model_copy(deep=True)
    out.model.preset, out.model.layers, out.model.width, out.model.heads = "custom", spec.layers, spec.width, spec.heads
    out.model.max_seq_len, out.model.projection_ratio = spec.max_seq_len, spec.projection_ratio
    out.model.semantic, out.model.title_age = spec.semantic, spec.title_age
    out.model.tie_embeddings, out.model.block = spec.tie_embeddings, spec.block
    if ft.epochs:
        out.train.epochs = ft.epochs
    if ft.lr:
        out.train.lr = ft.lr
    if ft.mode == "head" and spec.projection_ratio <= 1:
        raise ConfigError("finetune.mode=head trains a new projected decoding head; the checkpoint has none "
                          "(projection_ratio 1): use finetune.mode=full")
    return out, {"checkpoint": str(path), "task": ft.task, "mode": ft.mode}




def _load_pretrained(model: GenRec, spec: ModelSpec, path: str) -> None:
    """Fine-tuning: start from a checkpoint's consolidated weights (weights only: nothing is unpickled). `path` is
    local (local_checkpoint)."""
    ckpt_spec = read_spec(path)
    diff = [f for f in ARCHITECTURE if getattr(ckpt_spec, f) != getattr(spec, f)]
    if diff:
        raise ConfigError(f"{path}: the checkpoint's model differs from the run's in {', '.join(diff)}")
    state = torch.load(Path(path, CHECKPOINT_WEIGHTS), map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def _gather_rows(rows: list, world: int) -> list:
    if world == 1 or not torch.distributed.is_initialized():
        return rows
    parts = [None] * world
    torch.distributed.all_gather_object(parts, rows)
    return [r for part in parts for r in part]


def write_topk(store, path: str, rows: list) -> None:
    """Each request's top-k titles (item indices) at delay 0, for the retrain-stability analysis."""
    import io

    rows = sorted(rows)
    table = pa.table({"user_id": pa.array([r[0] for r in rows], pa.int64()),
                      "ts": pa.array([r[1] for r in rows], pa.int64()),
                      "items": pa.array([r[2] for r in rows], pa.list_(pa.int32()))})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    store.write_bytes(path, buf.getvalue())


def skip_shm_comm_op() -> None:
    """On CPU, DeepSpeed's communication set-up JIT-compiles a C++ shared-memory all-reduce (about a minute on 2
    cores, and again whenever the compiler command differs: another venv, another Ray cluster on the machine) that
    only its inference all-reduce uses; training's collectives go through torch.distributed (gloo). Marking the op
    incompatible, DeepSpeed's own switch for ops a machine cannot build, skips the compile and nothing else."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def make_engine(cfg: GenrecConfig, model: GenRec, optimizer, scheduler, on_gpu: bool):
    """The DeepSpeed engine of the trainer and of benchmarks/gpu_scale.py: ZeRO stage and precision from the config,
    compiled (torch.compile through DeepSpeed) when train.compile is set."""
    import deepspeed

    if not on_gpu:
        skip_shm_comm_op()
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg, on_gpu))
    engine.checkpoint_engine = weights_only_checkpoint_engine(engine.checkpoint_engine)
    if cfg.train.compile:
        engine.compile()
    return engine


def param_share(module: torch.nn.Module) -> float:
    """The share of a module's parameter elements held on this rank: DeepSpeed ZeRO-3 keeps each rank's partition in
    `ds_tensor` and the whole size in `ds_numel`; unpartitioned parameters are held whole."""
    params = list(module.parameters())
    held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
    return held / max(1, sum(getattr(p, "ds_numel", p.numel()) for p in params))


def deepspeed_safe_globals() -> list:
    """The non-tensor types DeepSpeed's checkpoints hold (ZeRO 0-3, fp32/bf16/fp16), allowed when they are loaded."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def weights_only_checkpoint_engine(engine):
    """DeepSpeed's checkpoint engine, loading with weights_only=True: tensors, containers and the few DeepSpeed
    types its checkpoints hold (deepspeed_safe_globals). Its own TorchCheckpointEngine unpickles anything
    (weights_only=False), and checksums prove integrity, not origin: whoever can write a resume file in the storage
    (and its checksums beside it) could run code in every trainer. A file that needs another type is refused,
    naming the file and the type. Saving is DeepSpeed's own."""
    allowed = deepspeed_safe_globals()

    class WeightsOnlyCheckpointEngine(type(engine)):
        def load(self, path: str, map_location=None):
            try:
                with torch.serialization.safe_globals(allowed):
                    return torch.load(path, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as exc:
                why = next((line.strip() for line in str(exc).splitlines() if "Unsupported global" in line),
                           str(exc).splitlines()[0])
                raise CheckpointError(f"{path}: resume state that is not only tensors and DeepSpeed's checkpoint "
                                      f"types ({why}); refused, not unpickled. Resume from a checkpoint genrec "
                                      "wrote, or start a new run") from None

    engine.__class__ = WeightsOnlyCheckpointEngine  # the same engine (its config, its save), another load
    return engine


def train_step(engine, batch: dict, trained: torch.Tensor, n_neg: int | None, mask_rate: float,
               gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """One optimizer step on a batch of windows (the trainer's and benchmarks/gpu_scale.py's): draws the shared
    uniform negatives among `trained` and this step's collaborative-embedding mask, then forward, backward, step.
    Returns the loss (not synchronised) and the batch's target events."""
    items, actions, gaps, ts = (batch[k].long() for k in ("items", "actions", "gaps", "ts"))
    device = items.device
    negatives = None if n_neg is None else trained[
        torch.randint(0, len(trained), (n_neg,), device=device, generator=gen)]
    id_mask = draw_id_mask(engine.module.spec.num_items + 1, mask_rate, gen, device)
    loss = engine(items, actions, gaps, batch["utils"].float(), ts, negatives, id_mask)
    engine.backward(loss)
    engine.step()
    return loss, float((items[:, 1:] > 0).sum())


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

    cfg = GenrecConfig.model_validate(config["cfg"])
    finetune = config.get("finetune")  # {"checkpoint", "task", "mode"} when continuing a pre-trained model
    torch.set_num_threads(torch_threads(cfg, ctx.get_local_world_size()))
    store = cfg.storage.store()
    shards = open_shards(config["shards"], store)
    built = build_run(cfg, shards, finetune["task"] if finetune else None)  # the same initial weights on every rank
    model, spec, items_table, mask_rate = built.model, built.spec, built.items, built.mask_rate
    plan = build_plan(shards, cfg.eval, built.cold, split="valid")
    select = selection_key(cfg.eval.select_metric, finetune["task"] if finetune else None)
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")

    def reduce(t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (NCCL needs the tensor on the GPU)."""
        if torch.distributed.is_initialized():
            moved = t.to(device)
            torch.distributed.all_reduce(moved)
            t.copy_(moved.cpu())
        return t

    def metrics_of(module) -> tuple[dict, list]:
        """Every task at every delay on the validation requests (this rank's share, summed over ranks), as
        valid_<metric> figures, and each request's top-k list (rank 0 holds all of them)."""
        module.eval()
        with torch.no_grad():
            sums, top = evaluate_plan(plan, model_scorer(module, module.item_matrix()), spec.max_seq_len, rank,
                                      world, cfg.eval.batch_size, device, topk=cfg.eval.topk)
        for v in sums.values():
            reduce(v)
        return {VALID + k: v for k, v in plan_metrics(sums, cfg.eval.primary).items()}, _gather_rows(top, world)

    def popularity_figures() -> dict:
        """The bar beside every epoch's figures, computed once per run: titles ranked by their events in this run's
        training window, on the same validation requests (the context's titles excluded, as for the model)."""
        sums, _ = evaluate_plan(plan, count_scorer(built.counts, device), 1, rank, world, cfg.eval.batch_size, device)
        for v in sums.values():
            reduce(v)
        return {POPULARITY + VALID + m: v for m, v in plan_metrics(sums, cfg.eval.primary).items()
                if m in ("mrr", "hr@10", "ndcg@10")}

    popular = popularity_figures()

    # A restarted worker group (a worker died, `max_failures` allows a retry) resumes from the last reported
    # checkpoint: at the start of the epoch that was interrupted, which is redone in full.
    exit_stack = contextlib.ExitStack()
    resume_from, state = None, None
    reported = ray.train.get_checkpoint()
    if reported is None and config.get("resume_from"):  # --resume of a run whose Ray Train record was unusable
        reported = ray.train.Checkpoint(config["resume_from"], filesystem=store.fs)
    if reported is not None:
        resume_from = Path(exit_stack.enter_context(reported.as_directory()))
        state = read_trainer_state(str(resume_from))
        # What this rank is about to load must be as it was written (not bit-flipped or cut short): refused,
        # naming the file, rather than trained on.
        same = state["world"] == world
        verify_resumable(str(resume_from), state, ranks=[rank] if same else [], weights=not same,
                         allow_unverified=cfg.storage.allow_unverified_checkpoints)
        saved = ModelSpec.from_dict(json.loads(Path(resume_from, CHECKPOINT_SPEC).read_text())["spec"])
        if diff := [f for f in ARCHITECTURE if getattr(saved, f) != getattr(spec, f)]:
            raise ConfigError(f"{resume_from}: the run being resumed built another model ({', '.join(diff)} differ); "
                              "resume with the config it was started with, or start a new run")
    steps_per_epoch = max(1, config["windows"] // world // cfg.train.batch_size)
    total_steps = steps_per_epoch * cfg.train.epochs
    history: list[dict] = state["history"] if state else []
    if finetune and state is None:
        _load_pretrained(model, spec, str(local_checkpoint(cfg, finetune["checkpoint"])))
        # The pre-trained model on every task before any step, with its own head: the transfer baseline.
        history.append({"epoch": 0, **metrics_of(model.to(device))[0]})
    if finetune and finetune["mode"] == "head":  # linear-probe style: only a fresh decoding head learns
        model.requires_grad_(False)
        model.new_head()
    # DeepSpeed's optimizer partitions only load into the same number of ranks. On another worker count the run
    # goes on from the consolidated weights with a fresh optimizer, the LR schedule moved to where it was.
    same_world = state is not None and state["world"] == world
    lr_offset = 0
    if state is not None and not same_world:
        state_dict = torch.load(Path(resume_from, CHECKPOINT_WEIGHTS), map_location="cpu", weights_only=True)
        model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
        lr_offset = state["epoch"] * steps_per_epoch
        if rank == 0:
            print(f"resuming on {world} workers from a checkpoint of {state['world']}: consolidated weights, "
                  "fresh optimizer state (AdamW moments restart)", flush=True)
    optimizer, scheduler = optimizer_and_schedule(cfg, model, total_steps, lr_offset, fused=on_gpu)
    engine = make_engine(cfg, model, optimizer, scheduler, on_gpu)
    trained = built.trained.to(device)
    n_neg = num_negatives(cfg, len(trained))
    flops_per_token = model_flops_per_token(cfg, spec, shards.num_items, n_neg)
    peak = cfg.train.peak_tflops or (peak_tflops(torch.cuda.get_device_name(device)) if on_gpu else None)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed * 1000 + rank)
    start_epoch, events_seen, wall_before = 0, 0, 0.0
    if state is not None:
        if same_world:
            engine.load_checkpoint(str(resume_from / RESUME_DIR), tag=RESUME_TAG)  # weights, optimizer, LR schedule
            rng = torch.load(resume_from / RESUME_DIR / f"rng_rank{rank}.pt", weights_only=True)
            gen.set_state(rng["sampler"])
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and on_gpu:
                torch.cuda.set_rng_state(rng["cuda"])
        start_epoch, events_seen, wall_before = state["epoch"], state["events_processed"], state["wall_time_s"]
        if rank == 0:
            print(f"resumed from {resume_from.name} after epoch {start_epoch} (restart {state['restarts'] + 1})",
                  flush=True)
    exit_stack.close()
    restarts = state["restarts"] + 1 if state else 0

    run = None
    if rank == 0 and cfg.tracking.wandb != "disabled":
        import wandb

        wandb_dir = store.local("wandb")
        wandb_dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=cfg.tracking.project, name=config["run_name"], mode=cfg.tracking.wandb,
                         dir=str(wandb_dir), config=cfg.model_dump(mode="json"), reinit="finish_previous")

    data = ray.train.get_dataset_shard("train")
    start = time.perf_counter() - wall_before
    end = stop_reason(cfg, history, select, time.perf_counter() - start, reduce)  # a resumed run may be done
    for epoch in range(start_epoch, cfg.train.epochs if end is None else start_epoch):
        engine.train()
        t0 = time.perf_counter()
        stats = torch.zeros(3, dtype=torch.float64)  # [sum loss, steps, target events]
        batches = iter(data.iter_torch_batches(batch_size=cfg.train.batch_size, drop_last=True,
                                               local_shuffle_buffer_size=cfg.train.shuffle_buffer or None,
                                               local_shuffle_seed=cfg.train.seed + epoch, device=str(device),
                                               prefetch_batches=cfg.train.prefetch_batches))
        input_wait = 0.0  # time the loop spends blocked on Ray Data for its next batch
        while True:
            tw = time.perf_counter()
            batch = next(batches, None)
            input_wait += time.perf_counter() - tw
            if batch is None:
                break
            loss, events = train_step(engine, batch, trained, n_neg, mask_rate, gen)
            # loss.item() waits for the step, so the next batch's wait is measured from the step's real end.
            stats += torch.tensor([loss.item(), 1.0, events], dtype=torch.float64)
        train_time = time.perf_counter() - t0
        reduce(stats)
        events_seen += int(stats[2])

        valid_metrics, top = metrics_of(engine.module)
        metrics = {
            "epoch": epoch + 1,
            "loss": float(stats[0] / max(stats[1], 1)),
            "steps": int(stats[1]) // world,
            "events_per_s": float(stats[2]) / max(train_time, 1e-9),
            "epoch_time_s": train_time,
            "input_wait_s": input_wait,
            "input_wait_share": input_wait / max(train_time, 1e-9),
            "wall_time_s": time.perf_counter() - start,
            "events_processed": events_seen,
            "backbone_params": spec.backbone_params,
            "preset": cfg.model.preset,  # as resolved from the data when the config said "auto"
            "max_seq_len": spec.max_seq_len,
            "flops_per_token": flops_per_token,
            # Training FLOPs so far (model FLOPs per token x target events): the cost of one retrain at its end.
            "train_flops": flops_per_token * events_seen,
            "model_tflops_per_s": flops_per_token * float(stats[2]) / max(train_time, 1e-9) / 1e12,
            # Against the devices' dense bf16 peak (one device per worker); absent on CPU or an unknown GPU.
            **({"mfu": mfu(flops_per_token * float(stats[2]) / max(train_time, 1e-9) / 1e12, peak, world)}
               if peak else {}),
            "lr": scheduler.get_last_lr()[0],
            "id_mask_rate": mask_rate,
            "seed": cfg.train.seed,
            "window_shift_h": cfg.train.window_shift_h,
            "restarts": restarts,
            **popular,
            # What DeepSpeed really runs (a silent downgrade of the configured stage would show here): its ZeRO
            # stage, and the share of the parameters this rank holds (1/workers under ZeRO-3, 1 below it).
            "zero_stage": engine.zero_optimization_stage(),
            "param_share_per_rank": param_share(engine.module),
            **valid_metrics,
        }
        history.append(metrics)  # every rank: the selection figures are all-reduced, so they agree on stopping
        metrics |= selection_scores(history, select)
        best = best_record(history, select) is metrics
        if rank == 0:
            store.write_json(config["history"], history)  # also when Ray keeps only the best checkpoints' metrics
            if best:  # the kept model's top-k lists, for the retrain-stability analysis
                write_topk(store, config["topk"], top)
            print(epoch_line(metrics, cfg, select, best), flush=True)
        if run is not None:
            run.log(metrics, step=epoch + 1)
        with tempfile.TemporaryDirectory() as tmp:
            save_for_serving(engine, spec, items_table, tmp, {"metrics": metrics, "preset": cfg.model.preset,
                                                         "dataset": shards.manifest["dataset"]}, rank)
            save_resume_state(engine, tmp, rank, gen, {
                "epoch": epoch + 1, "events_processed": events_seen, "wall_time_s": metrics["wall_time_s"],
                "world": world, "restarts": restarts, "history": history})
            # Every rank reports its folder (its ZeRO partition); Ray merges them into one checkpoint, and keeps the
            # best ones by the validation figure (and always the latest, to resume from).
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        end = stop_reason(cfg, history, select, time.perf_counter() - start, reduce)
        if end is not None:
            break
    if rank == 0 and history:  # how the run ended: a finished retrain, even when it stopped before train.epochs
        history[-1]["end"] = end or "max epochs"
        store.write_json(config["history"], history)
    if run is not None:
        run.finish()


def stop_reason(cfg: GenrecConfig, history: list[dict], select: str, elapsed_s: float, reduce) -> str | None:
    """Why training stops after the epochs in `history`: "early stopping" (train.patience epochs without a better
    validation figure), "time budget" (train.time_budget_s spent: rank 0's clock, shared, so every rank stops at the
    same epoch), or None to go on."""
    if should_stop(history, select, cfg.train.patience):
        return "early stopping"
    if cfg.train.time_budget_s is None:
        return None
    over = torch.tensor([float(elapsed_s >= cfg.train.time_budget_s)], dtype=torch.float64)
    return "time budget" if reduce(over).item() > 0 else None


def epoch_line(metrics: dict, cfg: GenrecConfig, select: str, best: bool) -> str:
    """One line per epoch: training loss, the validation figures (the selection metric first, popularity's beside
    it), speed."""
    shown = [select] + [VALID + m for m in ("mrr", "hr@10", "ndcg@10") if VALID + m != select]

    def figure(k: str) -> str:
        beside = f" (popularity {metrics[POPULARITY + k]:.4f})" if k == select and POPULARITY + k in metrics else ""
        return f"{k} {metrics[k]:.4f}{beside}"

    figures = "  ".join(figure(k) for k in shown if k in metrics)
    return (f"epoch {metrics['epoch']}/{cfg.train.epochs}: loss {metrics['loss']:.4f}  {figures}  "
            f"{metrics['events_per_s']:,.0f} events/s{'  (best so far)' if best else ''}")


def history_path(cfg: GenrecConfig, run_name: str) -> str:
    """The run's per-epoch history, a path in the storage's filesystem (cfg.storage.store())."""
    return cfg.storage.store().path("runs", run_name, "history.json")


def read_history(cfg: GenrecConfig, run_name: str) -> list[dict]:
    return json.loads(cfg.storage.store().read_text(history_path(cfg, run_name)))


def topk_path(cfg: GenrecConfig, run_name: str) -> str:
    return cfg.storage.store().path("runs", run_name, "topk.parquet")


WINDOW_BYTES_PER_EVENT = 18  # items int32 + actions int8 + gaps int8 + utils float32 + ts int64
# Materialised windows up to this size are cut in the driver: Ray Data's read and windowing tasks start new worker
# processes, seconds of start-up for milliseconds of work on small data.
DRIVER_WINDOWS_BYTES = 64 * 2**20
WINDOWS_PER_BLOCK = 2048


def windows_by_ray_data(shards: ShardSet, max_seq_len: int, window: tuple[int | None, int | None],
                        task_cpus: float):
    """The training windows as a Ray Data pipeline: the shards read and windowed by tasks (streamed every epoch,
    or materialised once)."""
    import ray.data

    return ray.data.read_parquet(shards.files("train"), columns=["items", "ts", "actions", "utils"],
                                 filesystem=shards.fs, num_cpus=task_cpus).map_batches(
        training_windows, fn_kwargs={"max_seq_len": max_seq_len, "ts_min": window[0], "ts_max": window[1]},
        batch_format="numpy", batch_size=256, num_cpus=task_cpus)


def windows_in_driver(shards: ShardSet, max_seq_len: int, window: tuple[int | None, int | None]):
    """The training windows cut in this process (genrec.build.all_windows, the same windowing the Ray Data tasks
    run), handed to Ray Data as in-memory blocks of WINDOWS_PER_BLOCK windows."""
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    out = all_windows(shards, max_seq_len, window)
    return ray.data.from_arrow([pa.table({k: ArrowTensorArray.from_numpy(v[a:a + WINDOWS_PER_BLOCK])
                                          for k, v in out.items()})
                                for a in range(0, len(out["items"]), WINDOWS_PER_BLOCK)])


def build_trainer(cfg: GenrecConfig, shards: ShardSet, run_name: str, callbacks=None, finetune: dict | None = None,
                  resume_from: str | None = None):
    """A TorchTrainer for `train_func` over the shard set's training split, fed by Ray Data (windows cut in this
    process and materialised for small data, else read and windowed by Ray Data tasks).

    `finetune` ({"checkpoint", "task", "mode"}) continues a pre-trained checkpoint on a task's objective."""
    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.train
    storage = cfg.storage.store()
    window = train_window(cfg, shards)
    windows = count_windows(shards, cfg.model.max_seq_len, window)
    if windows // t.workers < t.batch_size:
        raise ConfigError(f"train.batch_size={t.batch_size} is larger than the {windows // t.workers} training "
                         f"windows each of the {t.workers} workers gets; lower train.batch_size or train.workers"
                         + (" (or the training-window shift)" if window != (None, None) else ""))
    window_bytes = windows * (cfg.model.max_seq_len + 1) * WINDOW_BYTES_PER_EVENT
    store = ray.cluster_resources().get("object_store_memory", 0.0)
    materialize = t.ingest == "materialize" or (t.ingest == "auto" and window_bytes < 0.25 * store)
    if materialize and window_bytes <= DRIVER_WINDOWS_BYTES:
        train_ds = windows_in_driver(shards, cfg.model.max_seq_len, window)
    else:
        train_ds = windows_by_ray_data(shards, cfg.model.max_seq_len, window, t.data_task_cpus)
        if materialize:
            # Windowed once, kept in the object store: each epoch then only shuffles and splits blocks, instead of
            # re-reading and re-windowing the shards (seconds per epoch on a small box).
            train_ds = train_ds.materialize()
    use_gpu = t.gpus_per_worker > 0
    resources = {"CPU": t.cpus_per_worker} | ({"GPU": t.gpus_per_worker} if use_gpu else {})
    return TorchTrainer(
        train_func,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "shards": str(shards.root), "run_name": run_name,
                           "windows": windows, "history": str(history_path(cfg, run_name)),
                           "topk": str(topk_path(cfg, run_name)), "finetune": finetune,
                           "resume_from": resume_from},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=t.workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=run_name, storage_path=storage.path("runs"),
                                       storage_filesystem=storage.fs if storage.remote else None,
                                       callbacks=callbacks or [],
                                       failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(
                                           num_to_keep=2,
                                           checkpoint_score_attribute=SCORE,
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


def fit(cfg: GenrecConfig, shards: ShardSet, run_name: str, callbacks=None, reserved_cpus: float = 0.0,
        finetune: dict | None = None, resume_from: str | None = None, resume_hint: bool = True, recover: bool = True):
    """Train; TrainingFailed (one line: the cause, the last whole checkpoint, `--resume RUN` unless not resume_hint)
    when Ray Train gives up on the run. recover: look for where the run goes on (resume_point) unless the caller
    did (check_run_name)."""
    import ray.train

    cfg = without_secrets(cfg)  # the serve token reaches no worker, checkpoint or wandb run
    cfg = resolve_defaults(cfg, shards)  # "auto" values from the data (genrec.defaults); a no-op when resolved
    check_ingest_room(cfg, reserved_cpus)
    if recover and resume_from is None:  # a sweep trial that Tune restores goes on here, past an unusable record
        resume_from = resume_point(cfg, run_name)
    trainer = build_trainer(cfg, shards, run_name, callbacks, finetune, resume_from)
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


def interrupt_message(cfg: GenrecConfig, run_name: str) -> str:
    """What a Ctrl-C left: the run's last whole checkpoint and the command that goes on from it."""
    try:
        found, epoch = last_whole_checkpoint(cfg, run_name)
    except Exception as scan:  # the store itself failing: the interruption is still what to say first
        return f"training run {run_name} stopped; its checkpoints could not be listed ({scan})"
    if found is None:
        return f"training run {run_name} stopped before its first checkpoint; nothing to resume, start it again"
    return (f"training run {run_name} stopped; its last whole checkpoint is {found} (epoch {epoch}); go on with "
            f"the same --config and --set flags and --resume {run_name}")
