"""Load a trained checkpoint without DeepSpeed or Ray: plain torch, weights only (no unpickling of objects).

A checkpoint folder holds the consolidated weights, the spec (with the semantic tower's feature vocabulary) and the
item table with each title's training count. The catalogue a model ranks is rebuilt from that table, so titles can be
added after training (:meth:`LoadedModel.add_items`): they have no trained id row and are scored from metadata alone.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from genrec.data.schema import DataError
from genrec.model import GenRec, ModelSpec
from genrec.shards import CHECKSUMS, verify_checksums
from genrec.build import TRAIN_COUNT, catalogue
from genrec.train import CHECKPOINT_ITEMS, CHECKPOINT_SPEC, CHECKPOINT_WEIGHTS, checkpoint_folders


class CheckpointError(RuntimeError):
    pass


@dataclass
class LoadedModel:
    model: GenRec
    spec: ModelSpec
    items: pa.Table  # vocabulary: item_id, index, title, genres, ..., train_count
    info: dict  # what the trainer wrote beside the weights (metrics, preset, dataset)
    path: Path

    def refresh_catalogue(self) -> None:
        index = self.items.column("index").to_numpy()
        counts = np.zeros(int(index.max()) + 1, np.int64)
        if TRAIN_COUNT in self.items.column_names:
            counts[index] = self.items.column(TRAIN_COUNT).to_numpy()
        else:  # a checkpoint without counts: every title of the training catalogue has an id row
            counts[1:self.spec.num_items + 1] = 1
        feats, known, _ = catalogue(self.spec, self.items, counts)
        self.model.set_catalogue(feats, known)

    def add_items(self, new_items: pa.Table) -> list[int]:
        """Append titles (item_id, title, genres, year, launch_ts, text) to the catalogue without retraining.

        They get the next indices and no trained id row, so the semantic tower alone places them. A title without
        a launch_ts launches now (the time it is added): the title-age bias then scores it as new, where an unknown
        launch would score it as not launched. Returns the new indices. Raises DataError for an item_id already in
        the catalogue."""
        existing = set(self.items.column("item_id").to_pylist())
        dup = [i for i in new_items.column("item_id").to_pylist() if i in existing]
        if dup:
            raise DataError(f"new items: item_id {dup[0]} is already in the catalogue; send only new titles")
        start = int(self.items.column("index").to_numpy().max()) + 1
        index = np.arange(start, start + new_items.num_rows, dtype=np.int32)
        cols = {}
        for name in self.items.column_names:
            if name == "index":
                cols[name] = pa.array(index, pa.int32())
            elif name == TRAIN_COUNT:
                cols[name] = pa.array(np.zeros(len(index), np.int64))
            elif name == "launch_ts" and name in new_items.column_names:
                cols[name] = pc.fill_null(new_items.column(name).cast(pa.int64()), int(time.time()))
            elif name == "launch_ts":
                cols[name] = pa.array(np.full(len(index), int(time.time()), np.int64))
            elif name in new_items.column_names:
                cols[name] = new_items.column(name).cast(self.items.schema.field(name).type)
            else:
                cols[name] = pa.nulls(len(index), self.items.schema.field(name).type)
        self.items = pa.concat_tables([self.items, pa.table(cols, schema=self.items.schema)])
        self.refresh_catalogue()
        return index.tolist()


def read_spec(path: str | Path) -> ModelSpec:
    """The model spec saved beside a checkpoint's weights."""
    f = Path(path) / CHECKPOINT_SPEC
    if not f.is_file():
        raise CheckpointError(f"{f}: missing; is {path} a genrec checkpoint folder?")
    try:
        return ModelSpec.from_dict(json.loads(f.read_text())["spec"])
    except (TypeError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{f}: not a spec this genrec can build ({exc}); retrain") from None


UNVERIFIED_HINT = ("if you trust it (a checkpoint of a genrec before checksums were kept), pass "
                   "--set storage.allow_unverified_checkpoints=true")


def load_checkpoint(path: str | Path, device: str = "cpu", allow_unverified: bool = False) -> LoadedModel:
    """The model, spec and catalogue of a checkpoint folder, its files checked against checksums.json first (a
    folder without one is refused unless allow_unverified)."""
    path = Path(path)
    for name in (CHECKPOINT_WEIGHTS, CHECKPOINT_SPEC, CHECKPOINT_ITEMS):
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: missing; is {path} a genrec checkpoint folder?")
    try:
        verified = verify_checksums(path, CheckpointError)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; serve another checkpoint of the run (checkpoint=PATH) or retrain") from None
    if not verified and not allow_unverified:
        raise CheckpointError(f"{path / CHECKSUMS}: missing, so nothing shows the checkpoint is as genrec wrote it; "
                              f"refused. {UNVERIFIED_HINT[0].upper()}{UNVERIFIED_HINT[1:]}")
    info = json.loads((path / CHECKPOINT_SPEC).read_text())
    try:
        spec = ModelSpec.from_dict(info["spec"])
    except TypeError as exc:
        raise CheckpointError(f"{path / CHECKPOINT_SPEC}: not a spec this genrec can build ({exc}); retrain") from None
    state = torch.load(path / CHECKPOINT_WEIGHTS, map_location=device, weights_only=True)
    model = GenRec(spec)
    # bf16 training saves bf16 weights; serve in fp32 on CPU.
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model.eval().to(device)
    loaded = LoadedModel(model, spec, pq.read_table(path / CHECKPOINT_ITEMS), info, path)
    loaded.refresh_catalogue()
    return loaded


def load_last_good(path: str | Path, device: str = "cpu", store=None,
                   allow_unverified: bool = False) -> tuple[LoadedModel, str | None]:
    """Load the checkpoint at `path`; when it is corrupt or incomplete, the newest other checkpoint of the same run
    that passes its checks (Ray Train keeps the best two and the latest in the run folder). Returns the model and,
    when it is not the one asked for, why (the file at fault and the checkpoint served instead), for the caller to
    report: serving degrades to the last good state, loudly, instead of going down. Raises the original error when
    no checkpoint of the run is usable.

    With a URI storage's `store`, `path` names a checkpoint there (its path or scheme://... name): it is copied to
    the local cache and checked there; a copy that fails its checks is copied again once (the cache is not trusted
    over the store)."""
    if store is not None and store.remote:
        from genrec.storage import StorageError

        try:
            located = store.locate(path)
        except StorageError as exc:
            raise CheckpointError(str(exc)) from None
        return _load_last_good_remote(store, located, device, allow_unverified)
    path = Path(path)
    try:
        return load_checkpoint(path, device, allow_unverified), None
    except CheckpointError as exc:
        error = exc
    from genrec.storage import local_store

    asked = os.path.abspath(path)
    for other in checkpoint_folders(local_store(), os.path.dirname(asked)):
        if other == asked:
            continue
        try:
            return (load_checkpoint(other, device, allow_unverified),
                    f"{error}; serving {Path(other).name} of the same run instead")
        except CheckpointError:
            continue
    raise error


def fetch_checkpoint(store, path: str, use):
    """use(local folder) on a local copy of the store's checkpoint `path` -> its result. Only the serving files are
    copied (weights, spec, items, checksums; not the optimizer state under resume/). A cached copy that fails
    (CheckpointError from `use`) is copied again once: the cache is not trusted over the store. Errors name the
    store's URI, not the cache."""
    names = (CHECKPOINT_WEIGHTS, CHECKPOINT_SPEC, CHECKPOINT_ITEMS, CHECKSUMS)
    try:
        try:
            return use(store.fetch(path, only=names))
        except CheckpointError:
            return use(store.fetch(path, fresh=True, only=names))
    except FileNotFoundError as exc:
        if not store.is_dir(path):
            raise CheckpointError(f"{store.uri(path)}: no such checkpoint folder") from None
        raise CheckpointError(f"{store.uri(path)}: {exc}") from None
    except OSError as exc:  # the store unreachable, a cache folder replaced under us
        raise CheckpointError(f"{store.uri(path)}: could not be copied ({exc})") from None
    except CheckpointError as exc:
        raise CheckpointError(str(exc).replace(str(store.fetch_dir(path)), store.uri(path))) from None


def _fetch_and_load(store, path: str, device: str, allow_unverified: bool) -> LoadedModel:
    return fetch_checkpoint(store, path, lambda local: load_checkpoint(local, device, allow_unverified))


def _load_last_good_remote(store, path: str, device: str,
                           allow_unverified: bool) -> tuple[LoadedModel, str | None]:
    try:
        return _fetch_and_load(store, path, device, allow_unverified), None
    except CheckpointError as exc:
        error = exc
    for other in (f for f in checkpoint_folders(store, path.rsplit("/", 1)[0]) if f != path):
        try:
            return (_fetch_and_load(store, other, device, allow_unverified),
                    f"{error}; serving {other.rsplit('/', 1)[-1]} of the same run instead")
        except CheckpointError:
            continue
    raise error
