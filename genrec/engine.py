"""The DeepSpeed engine a training worker steps: its config (ZeRO stage, precision, clipping), the engine itself,
resume state loaded without unpickling code, and one optimizer step.

DeepSpeed is imported inside the functions that use it: DS_ACCELERATOR ("cpu" on a CPU worker) must be set before
its first import, which the worker does when it starts (genrec.train.train_func).
"""

from __future__ import annotations

import torch

from genrec.checkpoint import read_resume_file
from genrec.config import GenrecConfig
from genrec.model import GenRec, backbone_params, resolve_shape
from genrec.objectives import draw_id_mask

ZERO3_FROM_PARAMS = 500e6  # train.zero_stage=auto: ZeRO-3 (parameters partitioned) from this backbone size up


def zero_stage(cfg: GenrecConfig) -> int:
    """train.zero_stage, with "auto" resolved: 0 on one worker, 1 below ZERO3_FROM_PARAMS backbone parameters, 3 from
    there up. At small scale ZeRO-3's per-module gathers cost more than the model's own compute."""
    if cfg.train.zero_stage != "auto":
        return int(cfg.train.zero_stage)
    if cfg.train.workers == 1:
        return 0
    model_cfg = cfg.model
    layers, width, _ = resolve_shape(model_cfg.preset, model_cfg.layers, model_cfg.width, model_cfg.heads,
                                     model_cfg.block)
    return 3 if backbone_params(layers, width, model_cfg.block) >= ZERO3_FROM_PARAMS else 1


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
    """DeepSpeed's checkpoint engine, loading through genrec.checkpoint.read_resume_file: weights_only=True, with
    tensors, containers and the few DeepSpeed types its checkpoints hold (deepspeed_safe_globals). Its own
    TorchCheckpointEngine unpickles anything (weights_only=False), and checksums prove integrity, not origin:
    whoever can write a resume file in the storage (and its checksums beside it) could run code in every trainer. A
    file that needs another type is refused, naming the file and the type. Saving is DeepSpeed's own."""
    allowed = deepspeed_safe_globals()

    class WeightsOnlyCheckpointEngine(type(engine)):
        def load(self, path: str, map_location=None):
            return read_resume_file(path, allowed, map_location)

    engine.__class__ = WeightsOnlyCheckpointEngine  # the same engine (its config, its save), another load
    return engine


def reduces_nothing(engine) -> bool:
    """Whether DeepSpeed's gradient all-reduce after backward is a no-op for this engine: ZeRO-0 in fp32 on a one-rank
    world (one worker). There it still flattens every gradient into one buffer, all-reduces it over the one rank,
    scales it by 1 and copies it back, a pass over all the gradients each step that grows with the catalogue's
    embedding tables (BENCHMARKS.md, "DeepSpeed's all-reduce on one rank"). The reference loop's plain-torch engine
    has no all-reduce to skip. Stage 1 keeps it (its optimizer takes its gradients from that reduction), and so do
    bf16 and fp16, whose optimizers this was not measured with. One more thing the reduction did: it gave a parameter
    without a gradient a zero one, which AdamW then stepped (decaying it); without it such a parameter is skipped, as
    the plain-torch engine skips it."""
    return (getattr(engine, "dp_world_size", None) == 1 and engine.zero_optimization_stage() == 0
            and not engine.bfloat16_enabled() and not engine.fp16_enabled())


def train_step(engine, batch: dict, trained: torch.Tensor, n_neg: int | None, mask_rate: float,
               gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """One optimizer step on a batch of windows (the trainer's, genrec.reference_loop's and benchmarks/gpu_scale.py's;
    `engine` is a DeepSpeed engine or the reference loop's plain-torch stand-in): draws the shared uniform negatives
    among `trained` and this step's collaborative-embedding mask, then forward, backward, step. Returns the loss (not
    synchronised), the batch's target events and its input tokens (the same, but in a retrain on its new window,
    whose older events are context only), read from the device in one transfer."""
    items, actions, gaps, ts = (batch[k].long() for k in ("items", "actions", "gaps", "ts"))
    device = items.device
    negatives = None if n_neg is None else trained[
        torch.randint(0, len(trained), (n_neg,), device=device, generator=gen)]
    id_mask = draw_id_mask(engine.module.spec.num_items + 1, mask_rate, gen, device)
    loss = engine(items, actions, gaps, batch["utils"].float(), ts, negatives, id_mask)
    if reduces_nothing(engine):
        with engine.no_sync():  # DeepSpeed's own switch for a backward without its gradient all-reduce
            engine.backward(loss)
    else:
        engine.backward(loss)
    engine.step()
    tokens = items[:, 1:] > 0
    if (since := engine.module.objective.targets_from) is None:
        events = float(tokens.sum())
        return loss, events, events
    events, read = torch.stack([(tokens & (ts[:, 1:] >= since)).sum(), tokens.sum()]).tolist()  # older: context only
    return loss, float(events), float(read)
