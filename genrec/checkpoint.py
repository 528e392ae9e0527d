"""Load a trained checkpoint without DeepSpeed or Ray: plain torch, weights only (no unpickling of objects)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from genrec.model import GenRec, ModelSpec
from genrec.train import CHECKPOINT_ITEMS, CHECKPOINT_SPEC, CHECKPOINT_WEIGHTS


class CheckpointError(RuntimeError):
    pass


@dataclass
class LoadedModel:
    model: GenRec
    spec: ModelSpec
    items: pa.Table  # vocabulary: item_id, index, title, genres, ...
    info: dict  # what the trainer wrote beside the weights (metrics, preset, dataset)
    path: Path


def load_checkpoint(path: str | Path, device: str = "cpu") -> LoadedModel:
    path = Path(path)
    for name in (CHECKPOINT_WEIGHTS, CHECKPOINT_SPEC, CHECKPOINT_ITEMS):
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: missing; is {path} a genrec checkpoint folder?")
    info = json.loads((path / CHECKPOINT_SPEC).read_text())
    spec = ModelSpec.from_dict(info["spec"])
    state = torch.load(path / CHECKPOINT_WEIGHTS, map_location=device, weights_only=True)
    model = GenRec(spec)
    # bf16 training saves bf16 weights; serve in fp32 on CPU.
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model.eval().to(device)
    return LoadedModel(model, spec, pq.read_table(path / CHECKPOINT_ITEMS), info, path)
