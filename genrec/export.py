"""A checkpoint as a portable folder: `genrec export CHECKPOINT OUT`.

OUT holds the serving files in the current checkpoint format (safetensors weights, the JSON spec, the item table),
their checksums, the run's config (config.yaml, when the checkpoint kept it) and a short model card (MODEL_CARD.md):
the data and split, the model, the validation figures of the kept epoch and, when the checkpoint is its run's
selected one, the test figures read once for it, the command that retrains it and the commit that wrote it. A
format-1 checkpoint (torch-pickled weights) is read with weights only and written out in the current format: this is
the command that converts one. The weights load with `safetensors` alone; the model needs genrec.model.GenRec and
the spec.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from genrec.checkpoint import (CHECKPOINT_ITEMS, CHECKPOINT_SPEC, CHECKPOINT_WEIGHTS, MODEL_CARD, CheckpointError,
                               LoadedModel, read_weights, write_serving_files)
from genrec.holdout import SELECTED
from genrec.winner import WinnerError, read_winner

CONFIG_COPY = "config.yaml"
FIGURES = ("mrr", "hr@10", "ndcg@10", "requests")


def selected_record(store, checkpoint: str, winner_path: str | None = None) -> dict | None:
    """How `checkpoint` (a checkpoint folder in `store`, a genrec.storage.Store) was chosen and its test figures:
    its run's selected.json (the run folder is the parent) when the run kept it, else the winner manifest at
    `winner_path` when the sweep chose it; None when neither did (its test split was never read)."""
    folder, name = checkpoint.rstrip("/").rsplit("/", 1)
    f = f"{folder}/{SELECTED}"
    if store.is_file(f):
        record = json.loads(store.read_text(f))
        if str(record.get("checkpoint", "")).rstrip("/").endswith("/" + name):
            return record
    if winner_path and store.is_file(winner_path):
        try:
            winner = read_winner(store, winner_path)
        except WinnerError:
            return None
        if winner.checkpoint.rstrip("/") == store.uri(checkpoint.rstrip("/")) and winner.test:
            return {"rule": winner.selection, "test": winner.test, "test_popularity": winner.test_popularity or {}}
    return None


def figure_line(figures: dict) -> str:
    return ", ".join(f"{m.upper() if m == 'mrr' else m} {figures[m]:.4f}" if m != "requests"
                     else f"{int(figures[m]):,} requests" for m in FIGURES if m in figures)


def model_card(loaded: LoadedModel, source: str, selected: dict | None) -> str:
    """MODEL_CARD.md of an exported checkpoint: what it was trained on, how well it ranks (validation; test when
    read), how to retrain and load it."""
    info, spec = loaded.info, loaded.spec
    metrics = info.get("metrics", {})
    valid = {k.removeprefix("valid_"): v for k, v in metrics.items()
             if k.startswith("valid_") and k.removeprefix("valid_") in FIGURES}
    popular = {k.removeprefix("popularity_valid_"): v for k, v in metrics.items()
               if k.startswith("popularity_valid_")}
    lines = [f"# genrec model card: {source}", "",
             f"- **data**: {info.get('dataset', 'not recorded')}, {info.get('split') or 'split not recorded'} split, "
             f"{spec.num_items:,} titles",
             f"- **model**: {spec.block} backbone, {spec.layers} layers, width {spec.width}, {spec.heads} heads, "
             f"{spec.backbone_params:,} backbone parameters, windows of {spec.max_seq_len} events, decoding head "
             f"d/{spec.projection_ratio}, semantic tower {'on' if spec.semantic else 'off'}",
             f"- **trained**: epoch {metrics.get('epoch', '?')}, {metrics.get('events_processed', 0):,} target events, "
             f"{metrics.get('train_flops', 0):.3g} training FLOPs",
             f"- **validation** (epoch {metrics.get('epoch', '?')}): {figure_line(valid) or 'not recorded'}"
             + (f"; popularity on the same requests: {figure_line(popular)}" if popular else "")]
    if selected:
        test_popular = selected.get("test_popularity", {})
        lines.append(f"- **test** (read once for this checkpoint, chosen by the {selected.get('rule', 'run')}): "
                     f"{figure_line(selected.get('test', {}))}"
                     + (f"; popularity: {figure_line(test_popular)}" if test_popular else ""))
    else:
        lines.append("- **test**: not read for this checkpoint (it is not its run's selected one)")
    lines += [f"- **retrain**: `genrec train --config {CONFIG_COPY}` (the run's config, beside this card)"
              if info.get("config") else "- **retrain**: the run's config was not kept by the genrec that wrote it",
              f"- **code**: genrec commit {info.get('commit', 'not recorded')}",
              "", "Load it:", "", "```python",
              "import json, safetensors.torch",
              "from genrec.model import GenRec, ModelSpec",
              f"spec = ModelSpec.from_dict(json.load(open('{CHECKPOINT_SPEC}'))['spec'])",
              "model = GenRec(spec)",
              f"model.load_state_dict(safetensors.torch.load_file('{CHECKPOINT_WEIGHTS}'))",
              "```", "",
              f"or `genrec.checkpoint.load_checkpoint(folder)`, which also checks the files against checksums.json and "
              f"builds the catalogue from {CHECKPOINT_ITEMS}.", ""]
    return "\n".join(lines)


def export_checkpoint(loaded: LoadedModel, out: Path, source: str, selected: dict | None) -> Path:
    """Write `loaded` (the checkpoint named `source`; `selected`: its run's selected_record) to the new folder `out`
    (refused when it exists): written under a temporary name, then renamed, so an interrupted export leaves no half
    folder under `out`'s name."""
    out = Path(out)
    if out.exists():
        raise CheckpointError(f"{out}: already exists; export into a new folder")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        # The weights as trained (bf16 stays), in this genrec's format whatever the checkpoint's.
        write_serving_files(tmp, read_weights(loaded.path, as_float=False), loaded.info, loaded.items)
        if loaded.info.get("config"):
            (tmp / CONFIG_COPY).write_text(yaml.safe_dump(loaded.info["config"], sort_keys=False))
        (tmp / MODEL_CARD).write_text(model_card(loaded, source, selected))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

