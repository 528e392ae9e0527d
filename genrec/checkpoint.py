"""The checkpoint concern in one module: its format, writing, finding, verifying and loading.

A checkpoint folder holds the consolidated weights, the spec (with the semantic tower's feature vocabulary) and the
item table with each title's training count, their checksums, and (for a run that goes on) DeepSpeed's resume state
under `resume/` with each rank's listing and the trainer state. The trainer writes them (save_for_serving,
save_resume_state: collective calls of its ranks) and reads its resume state back (load_resume_state); `genrec
export` rewrites the serving files with the same writer (write_serving_files); resumes find the newest whole one
(last_resumable); serving, the ranker and the probes load them here with plain torch, weights only (no unpickling
of objects), and import no training code. The catalogue a model ranks is rebuilt from the item table
(catalogue_features), so titles can be added after training (:meth:`LoadedModel.add_items`): they have no trained id
row and are scored from metadata alone.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import safetensors.torch
import torch

from genrec.config import ConfigError, GenrecConfig
from genrec.console import say
from genrec.data.schema import DataError
from genrec.errors import GenrecError
from genrec.features import FeatureVocab, ItemFeatures, item_features
from genrec.model import GenRec, ModelSpec
from genrec.shards import CHECKSUMS, verify_checksums, write_checksums
from genrec.storage import StorageError, local_store


CHECKPOINT_WEIGHTS = "model.safetensors"  # the consolidated weights: tensors only, read without unpickling
CHECKPOINT_SPEC = "model.json"
CHECKPOINT_ITEMS = "items.parquet"
TRAIN_COUNT = "train_count"  # CHECKPOINT_ITEMS column: training events of each title (0 = cold start)
MODEL_CARD = "MODEL_CARD.md"  # written by `genrec export` beside the three files above
# The serving files' format, kept in model.json as "format". 1 (no "format" key): weights as a torch pickle,
# LEGACY_WEIGHTS, still loaded (weights only); `genrec export` rewrites one as 2. 2: safetensors weights.
CHECKPOINT_FORMAT = 2
LEGACY_WEIGHTS = "model.pt"
# Resume state beside the serving files: DeepSpeed's engine checkpoint (weights, optimizer and LR-schedule state, one
# file per rank's ZeRO partition), each rank's RNG states, and the loop's position and history.
RESUME_DIR = "resume"
RESUME_TAG = "state"
TRAINER_STATE = "trainer_state.json"
# TRAINER_STATE's format, kept in it as "format". 1: the first (files without the key read as 1). A newer one is
# refused: its fields may mean something this genrec does not know.
TRAINER_STATE_FORMAT = 1
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints, in its folder
RESUME_CHECKSUMS = "checksums_rank{rank}.json"  # in RESUME_DIR, one per rank: sizes and sha256s of what it wrote
RESUME_RNG = "rng_rank{rank}.pt"  # in RESUME_DIR, one per rank: its RNG states (the sampler's, torch's, CUDA's)
RESUME_AVERAGE = "average_rank{rank}.pt"  # in RESUME_DIR, one per rank, with train.ema_decay: its weight average


class CheckpointError(GenrecError, RuntimeError):
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
        self.model.set_catalogue(*catalogue_features(self.spec, self.items, counts))

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


def catalogue_features(spec: ModelSpec, items: pa.Table,
                       counts: np.ndarray | None) -> tuple[ItemFeatures, torch.Tensor]:
    """The catalogue a model ranks, from an item table (with `index`) and each index's training events: every title's
    features, and which titles have a trained id row (counts above zero; none known without counts)."""
    feats = item_features(items, FeatureVocab.from_dict(spec.features))
    known = torch.zeros(len(feats), dtype=torch.bool)
    if counts is not None:
        counted = min(len(counts), len(feats))
        known[:counted] = torch.from_numpy(counts[:counted] > 0)
    return feats, known


def read_info(folder: str | Path, store=None) -> dict:
    """A checkpoint's model.json: its format, the spec and what the trainer wrote beside them (metrics, preset,
    dataset...), read from `store` (a genrec.storage.Store; default the local disk). CheckpointError names the file."""
    store = store or local_store()
    path = f"{folder}/{CHECKPOINT_SPEC}"
    if not store.is_file(path):
        raise CheckpointError(f"{store.uri(path)}: missing; is {store.uri(folder)} a genrec checkpoint folder?")
    try:
        return json.loads(store.read_text(path))
    except ValueError:
        raise CheckpointError(f"{store.uri(path)}: not readable JSON (written only in part); use another "
                              "checkpoint of the run, or retrain") from None


def spec_of(info: dict, folder: str | Path) -> ModelSpec:
    """The model spec of a checkpoint's model.json (read_info), or CheckpointError naming the file."""
    try:
        return ModelSpec.from_dict(info["spec"])
    except (TypeError, KeyError) as exc:
        raise CheckpointError(f"{folder}/{CHECKPOINT_SPEC}: not a spec this genrec can build ({exc}); "
                              "retrain") from None


def read_spec(path: str | Path) -> ModelSpec:
    """The model spec saved beside a checkpoint's weights."""
    return spec_of(read_info(path), path)


UNVERIFIED_HINT = ("if you trust it (a checkpoint of a genrec before checksums were kept), pass "
                   "--set storage.allow_unverified_checkpoints=true")


def weights_file(path: str | Path) -> Path:
    """The consolidated weights file a checkpoint folder's model.json says it holds: safetensors (format 2 and up), or
    a format-1 checkpoint's torch file (no "format" there). The listing in checksums.json then covers that file."""
    path = Path(path)
    try:
        fmt = read_info(path).get("format", 1)
    except (CheckpointError, OSError, AttributeError):  # no or unreadable spec: its own check says so
        fmt = CHECKPOINT_FORMAT
    return path / (LEGACY_WEIGHTS if fmt == 1 else CHECKPOINT_WEIGHTS)


def read_weights(path: str | Path, device: str = "cpu", as_float: bool = True) -> dict[str, torch.Tensor]:
    """A checkpoint folder's consolidated weights, as float32 tensors (bf16 training saves bf16) unless not
    `as_float` (then as saved). Nothing is unpickled: safetensors, or a format-1 torch file read with weights_only."""
    f = weights_file(path)
    if f.name == CHECKPOINT_WEIGHTS:
        state = safetensors.torch.load_file(str(f), device=device)
    else:
        state = torch.load(f, map_location=device, weights_only=True)
    return {k: v.float() for k, v in state.items()} if as_float else state


def write_weights(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """`state` as a safetensors file. Tensors that share memory (tied embeddings) are written once each: safetensors
    refuses aliases, and loading copies every entry into its parameter anyway."""
    seen, out = set(), {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()  # a view of a seen tensor shares it too
        out[name] = tensor.clone() if storage in seen else tensor
        seen.add(storage)
    safetensors.torch.save_file(out, str(path), metadata={"format": f"genrec-{CHECKPOINT_FORMAT}"})


def load_checkpoint(path: str | Path, device: str = "cpu", allow_unverified: bool = False) -> LoadedModel:
    """The model, spec and catalogue of a checkpoint folder, its files checked against checksums.json first (a
    folder without one is refused unless allow_unverified). Format-1 checkpoints (torch-pickled weights) still load;
    one written by a newer genrec is refused."""
    path = Path(path)
    for name in (weights_file(path).name, CHECKPOINT_SPEC, CHECKPOINT_ITEMS):
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: missing; is {path} a genrec checkpoint folder?")
    try:
        verified = verify_checksums(path, CheckpointError)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; serve another checkpoint of the run (checkpoint=PATH) or retrain") from None
    if not verified and not allow_unverified:
        raise CheckpointError(f"{path / CHECKSUMS}: missing, so nothing shows the checkpoint is as genrec wrote it; "
                              f"refused. {UNVERIFIED_HINT[0].upper()}{UNVERIFIED_HINT[1:]}")
    info = read_info(path)
    if info.get("format", 1) > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path / CHECKPOINT_SPEC}: checkpoint format {info['format']}, written by a newer "
                              f"genrec than this one (format {CHECKPOINT_FORMAT}); upgrade genrec to load it")
    spec = spec_of(info, path)
    model = GenRec(spec)
    model.load_state_dict(read_weights(path, device), strict=True)  # float32: bf16 training saves bf16
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
    names = (CHECKPOINT_WEIGHTS, LEGACY_WEIGHTS, CHECKPOINT_SPEC, CHECKPOINT_ITEMS, CHECKSUMS)
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


# -- finding and verifying a run's checkpoints ------------------------------------------------------------------

def checkpoint_folders(store, run_folder: str) -> list[str]:
    """A run's checkpoint folders (paths in the store), newest first: Ray Train names them checkpoint_<date>_<time>."""
    return sorted((e.path for e in store.list(run_folder)
                   if e.type == pafs.FileType.Directory and e.base_name.startswith("checkpoint_")), reverse=True)

def ranks_read(state: dict, workers: int | None) -> list[int] | None:
    """The ranks whose DeepSpeed state a resume of this checkpoint on `workers` workers reads: all of them on the
    same worker count (or None: unknown), none on another (it starts from the consolidated weights)."""
    return None if workers in (None, state.get("world")) else []

def read_trainer_state(folder: str, store=None) -> dict:
    """A checkpoint's trainer state (epoch, world size, history...), or CheckpointError naming the file."""
    store = store or local_store()
    path = f"{folder}/{TRAINER_STATE}"
    if not store.is_file(path):
        raise CheckpointError(f"{store.uri(path)}: missing (a checkpoint written by a genrec before runs could "
                              "resume, or one whose upload was cut short)")
    try:
        state = json.loads(store.read_text(path))
    except ValueError:
        raise CheckpointError(f"{store.uri(path)}: not readable JSON (written only in part)") from None
    version = state.get("format", TRAINER_STATE_FORMAT) if isinstance(state, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{store.uri(path)}: not a trainer state genrec wrote (a JSON object with an integer "
                              "format); resume from another checkpoint of the run, or start a new run")
    if version > TRAINER_STATE_FORMAT:
        raise CheckpointError(f"{store.uri(path)}: trainer state format {version}, written by a newer genrec than "
                              f"this one (format {TRAINER_STATE_FORMAT}); upgrade genrec to resume from it")
    return state

def verify_resumable(folder: str, state: dict, ranks=None, weights: bool = True, store=None,
                     hashes: bool = True, allow_unverified: bool = False) -> None:
    """CheckpointError naming the first file a resume would read that is not as it was written (truncated by an
    upload cut short, bit-flipped, missing): each rank's DeepSpeed and RNG state (`ranks`; default every rank of the
    run that wrote it) and, with `weights`, the consolidated weights (read on another worker count). A checkpoint
    written before genrec kept these checksums is refused unless allow_unverified (nothing shows it is as written)."""
    store = store or local_store()
    if weights and not verify_checksums(folder, CheckpointError, store=store, hashes=hashes) \
            and state.get("resume_checksums"):  # written by this genrec: its checksums.json must be there
        raise CheckpointError(f"{store.uri(folder + '/' + CHECKSUMS)}: missing (the checkpoint was not written whole)")
    if not state.get("resume_checksums"):
        if allow_unverified:
            return
        raise CheckpointError(f"{store.uri(folder)}: its resume state has no checksums, so nothing shows it is as "
                              f"genrec wrote it; refused. {UNVERIFIED_HINT[0].upper()}{UNVERIFIED_HINT[1:]}")
    resume = f"{folder}/{RESUME_DIR}"
    for r in range(state["world"]) if ranks is None else ranks:
        listing = RESUME_CHECKSUMS.format(rank=r)
        if not verify_checksums(resume, CheckpointError, listing, store, hashes):
            raise CheckpointError(f"{store.uri(resume + '/' + listing)}: missing (rank {r}'s part of the checkpoint "
                                  "was not written whole)")


def last_resumable(store, run_folder: str, hashes: bool = True, workers: int | None = None,
                   allow_unverified: bool = False) -> tuple[str | None, dict | None, str | None]:
    """The newest checkpoint folder of a run that a resume can go on from (every file it would read checked;
    hashes=False: sizes only; `workers`: the worker count it resumes on, default the checkpoint's own), its trainer
    state, and why the newest folder was passed over if it was (None, None, why: none is)."""
    passed_over = None
    for folder in checkpoint_folders(store, run_folder):
        try:
            state = read_trainer_state(folder, store)
            verify_resumable(folder, state, ranks=ranks_read(state, workers), store=store, hashes=hashes,
                             allow_unverified=allow_unverified)
            return folder, state, passed_over
        except CheckpointError as exc:
            passed_over = passed_over or str(exc)
    return None, None, passed_over

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
                          f"storage.root={cfg.storage.root}{why}"
                          + ("" if passed_over else "; name a run listed there"))
    if unusable and store.is_file(snapshot):
        aside = f"{snapshot}.unusable-{time.strftime('%Y%m%d-%H%M%S')}"
        store.fs.move(snapshot, aside)
        unusable += f" (kept as {aside.rsplit('/', 1)[-1]})"
    say(f"--resume {run_name}: {unusable or 'no record of its checkpoints by Ray Train'}; going on from "
        f"{found.rsplit('/', 1)[-1]} (epoch {state['epoch']}), its newest checkpoint whose files all pass their "
        "checks" + (f" (a newer one does not: {passed_over})" if passed_over else ""))
    return found


def last_whole_checkpoint(cfg: GenrecConfig, run_name: str) -> tuple[str | None, int | None]:
    """The run's last whole checkpoint (its URI) and epoch, or (None, None), for a message after a failure or a
    Ctrl-C. Sizes only: a full disk cuts files short, and naming the checkpoint must not read gigabytes back. The
    store's own errors propagate: each caller says them after its own cause."""
    store = cfg.storage.store()
    found, state, _ = last_resumable(store, store.path("runs", run_name), hashes=False,
                                     allow_unverified=cfg.storage.allow_unverified_checkpoints)
    return (None, None) if found is None else (store.uri(found), state["epoch"])


def local_checkpoint(cfg: GenrecConfig, path: str) -> Path:
    """A checkpoint folder on this machine: `path` itself, or, when it lies in a URI storage root (a path in the
    store's filesystem or its scheme://... name), a copy of its serving files in the cache that passes its
    checksums (genrec.checkpoint.fetch_checkpoint)."""
    store = cfg.storage.store()
    if not store.remote:
        return Path(path)

    def checked(local: Path) -> Path:
        verify_checksums(local, CheckpointError)
        return local

    try:
        return fetch_checkpoint(store, store.locate(path), checked)
    except (CheckpointError, StorageError) as exc:
        raise ConfigError(f"checkpoint {path}: {exc}") from None


# -- writing (collective calls of the trainer's ranks) ---------------------------------------------------------

def consolidated_weights(engine) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0 (an empty dict elsewhere). Collective under ZeRO-3: every rank must call
    it. It is the gather DeepSpeed's own save_16bit_model runs, without its torch pickle."""
    if engine.zero_optimization_partition_weights():
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module_state_dict()
    return state if engine.global_rank == 0 else {}


def write_serving_files(out_dir: str | Path, state: dict[str, torch.Tensor], info: dict, items: pa.Table) -> None:
    """The serving files in this genrec's format: weights (safetensors), model.json (`info`: the spec and what goes
    beside it, its "format" set to this genrec's whatever `info` said), the item table (with each title's training
    count), then their checksums. They load without DeepSpeed, Ray or unpickling (load_checkpoint)."""
    write_weights(state, Path(out_dir, CHECKPOINT_WEIGHTS))
    info = {"format": CHECKPOINT_FORMAT, **{k: v for k, v in info.items() if k != "format"}}
    Path(out_dir, CHECKPOINT_SPEC).write_text(json.dumps(info, indent=2))
    pq.write_table(items, Path(out_dir, CHECKPOINT_ITEMS))
    # Last: a checkpoint whose checksums exist was written whole; serving refuses one that changed since.
    write_checksums(out_dir, [CHECKPOINT_WEIGHTS, CHECKPOINT_SPEC, CHECKPOINT_ITEMS])


def save_for_serving(engine, spec: ModelSpec, items: pa.Table, out_dir: str, extra: dict, rank: int) -> None:
    """The serving files (write_serving_files) of the engine's model, with `extra` beside the spec in model.json.
    Collective under ZeRO-3: every rank calls it, rank 0 writes."""
    state = consolidated_weights(engine)
    if rank == 0:
        write_serving_files(out_dir, state, {"spec": spec.to_dict(), **extra}, items)


def save_resume_state(engine, out_dir: str, rank: int, gen: torch.Generator, state: dict, average=None) -> None:
    """What a restarted run needs beside the serving files (see RESUME_DIR), with this rank's weight average
    (genrec.averaging.WeightAverage) when the run keeps one. Collective: every rank calls it."""
    engine.save_checkpoint(str(Path(out_dir, RESUME_DIR)), tag=RESUME_TAG)
    rng = {"sampler": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()  # dropout on the GPU draws from it
    torch.save(rng, Path(out_dir, RESUME_DIR, RESUME_RNG.format(rank=rank)))
    if average is not None:
        torch.save(average.state_dict(), Path(out_dir, RESUME_DIR, RESUME_AVERAGE.format(rank=rank)))
    # Each rank's folder holds only what this rank wrote (Ray merges the ranks' folders into the checkpoint): its
    # listing lets a resume tell a whole checkpoint from one whose upload was cut short (a full disk).
    resume = Path(out_dir, RESUME_DIR)
    write_checksums(resume, sorted(p.relative_to(resume).as_posix() for p in resume.rglob("*")
                                   if p.is_file() and not p.name.startswith("checksums_rank")),
                    RESUME_CHECKSUMS.format(rank=rank))
    if rank == 0:
        Path(out_dir, TRAINER_STATE).write_text(json.dumps({**state, "format": TRAINER_STATE_FORMAT,
                                                            "resume_checksums": True}))


# -- loading resume state (the trainer's ranks, on the worker count that wrote it) -----------------------------

def read_resume_file(path: str | Path, allowed: list | tuple = (), map_location=None):
    """A file of a checkpoint's resume state, loaded with weights_only: tensors, containers and the `allowed` types
    (DeepSpeed's checkpoint types, for its engine's files). Anything else is refused, naming the file and the type,
    and not unpickled: checksums prove integrity, not origin, so whoever can rewrite a resume file (and its checksums
    beside it) could otherwise run code in every trainer."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        why = next((line.strip() for line in str(exc).splitlines() if "Unsupported global" in line),
                   str(exc).splitlines()[0])
        raise CheckpointError(f"{path}: resume state that is not only tensors and the types genrec's checkpoints "
                              f"hold ({why}); refused, not unpickled. Resume from a checkpoint genrec wrote, or "
                              "start a new run") from None


def load_resume_average(average, folder: str | Path, rank: int) -> bool:
    """This rank's saved weight average back into `average` (genrec.averaging.WeightAverage); False when the
    checkpoint has none (written by a run without train.ema_decay): the average then starts from the loaded weights."""
    path = Path(folder, RESUME_DIR, RESUME_AVERAGE.format(rank=rank))
    if not path.is_file():
        return False
    average.load_state_dict(read_resume_file(path))
    return True


def load_resume_state(engine, folder: str | Path, rank: int, gen: torch.Generator) -> None:
    """What save_resume_state wrote, back into a run on the same worker count: DeepSpeed's engine state (weights,
    optimizer, LR schedule; its engine loads through read_resume_file, see genrec.engine) and this rank's RNG states
    (the sampler's generator `gen`, torch's, and CUDA's when `gen` is on the GPU). Collective: every rank calls it."""
    engine.load_checkpoint(str(Path(folder, RESUME_DIR)), tag=RESUME_TAG)
    rng = read_resume_file(Path(folder, RESUME_DIR, RESUME_RNG.format(rank=rank)))
    gen.set_state(rng["sampler"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and gen.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"])
