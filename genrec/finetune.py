"""Fine-tuning's set-up: which checkpoint a run continues, on which task, what learns, and the model it starts
from (the checkpoint's shape and consolidated weights, the catalogue checked against the shards')."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from genrec.checkpoint import CHECKPOINT_ITEMS, local_checkpoint, read_spec, read_weights
from genrec.config import ConfigError, GenrecConfig
from genrec.model import GenRec, ModelSpec
from genrec.shards import ShardSet
from genrec.winner import WinnerError, read_winner


@dataclass(frozen=True)
class FinetuneSpec:
    """What a fine-tuning run continues: `checkpoint` (a folder or a store URI), the `task` whose objective it trains
    and whose validation figure chooses its epoch, and `mode`, what learns ("head": a fresh decoding head only,
    "full": every weight)."""

    checkpoint: str
    task: str
    mode: str


ARCHITECTURE = ("num_items", "layers", "width", "heads", "max_seq_len", "projection_ratio", "semantic", "features",
                "title_age", "tie_embeddings", "block")


def finetune_setup(cfg: GenrecConfig, shards: ShardSet) -> tuple[GenrecConfig, FinetuneSpec]:
    """The config of a fine-tuning run and what the trainer continues (its `finetune` argument).

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
    spec = read_spec(start_checkpoint(cfg, shards, path, "finetune.checkpoint"))
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
    return out, FinetuneSpec(checkpoint=str(path), task=ft.task, mode=ft.mode)


def start_checkpoint(cfg: GenrecConfig, shards: ShardSet, path: str, key: str, spec: ModelSpec | None = None) -> str:
    """The local copy of a checkpoint a run starts from (`key` names the setting), checked to rank the same catalogue
    as the shards (same titles, same order) and, given the run's `spec`, to be the same model."""
    local = local_checkpoint(cfg, path)
    if spec is not None and (diff := [f for f in ARCHITECTURE if getattr(read_spec(local), f) != getattr(spec, f)]):
        raise ConfigError(f"{key}={path}: the checkpoint's model differs from the run's in {', '.join(diff)}; start "
                          "from a checkpoint of the same model (or set those model.* keys as it has them)")
    ckpt_items = pq.read_table(Path(local, CHECKPOINT_ITEMS), columns=["item_id"]).column("item_id")
    shard_items = pq.read_table(shards.items_path, columns=["item_id"], filesystem=shards.fs).column("item_id")
    if not ckpt_items.equals(shard_items):
        raise ConfigError(f"{key}={path}: its catalogue ({len(ckpt_items)} titles) is not the one of the shards at "
                          f"{shards.uri()} ({len(shard_items)}); start from a checkpoint trained on this data")
    return str(local)


def load_pretrained(model: GenRec, spec: ModelSpec, path: str) -> None:
    """Fine-tuning: start from a checkpoint's consolidated weights (weights only: nothing is unpickled). `path` is
    local (local_checkpoint)."""
    ckpt_spec = read_spec(path)
    diff = [f for f in ARCHITECTURE if getattr(ckpt_spec, f) != getattr(spec, f)]
    if diff:
        raise ConfigError(f"{path}: the checkpoint's model differs from the run's in {', '.join(diff)}")
    model.load_state_dict(read_weights(path), strict=True)
