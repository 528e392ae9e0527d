"""Defaults that scale with the data: the config's "auto" values, resolved from the shards before a run starts.

`genrec pipeline --data DIR` with no other flag must give a model worth serving on whatever data it is pointed at,
so the shape of the run follows the data instead of fixed numbers:

* model.max_seq_len: the 90th percentile of the users' training events, rounded up to a multiple of 16, within
  [16, MAX_LEN_AUTO]: most histories fit whole, a few long ones do not pay for everyone;
* model.preset: by training events (PRESET_BY_EVENTS): small data overfits a large backbone and trains it slowly;
* model.decoding: the full softmax up to FULL_SOFTMAX_TITLES titles (exact, and cheap there), sampled above;
* model.projection_ratio: 8 (the paper's d -> d/8 head) from width PROJECT_FROM_WIDTH up, 1 below, where d/8 leaves
  too few dimensions to tell titles apart;
* train.batch_size: BATCH_AUTO windows a step, or SMALL_DATA_BATCH when an epoch would have fewer than
  MIN_STEPS_PER_EPOCH steps per worker: within a time budget, small data learns more from more, smaller steps (the
  ML-100K search picked 32 of 32/64/128, and the defaults ablation gave it +5.6% over 64); never more than a
  worker's windows.

Training length is not guessed: runs train to early stopping on validation within train.time_budget_s. Each choice
is printed with its reason when a run starts and kept in its config (checkpoints, winner manifest, recipe).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genrec.build import count_windows, targets_from, train_window
from genrec.console import say
from genrec.config import GenrecConfig
from genrec.model import resolve_shape
from genrec.shards import ShardSet

AUTO = "auto"
MAX_LEN_AUTO = 200
# (largest number of training events, preset): the first row whose bound the data stays under.
PRESET_BY_EVENTS = ((2_000_000, "100k"), (20_000_000, "1m"), (math.inf, "2m"))
FULL_SOFTMAX_TITLES = 20_000
PROJECT_FROM_WIDTH = 512
BATCH_AUTO = 64
SMALL_DATA_BATCH = 32
MIN_STEPS_PER_EPOCH = 64


def training_lengths(shards: ShardSet) -> np.ndarray:
    files = shards.files("train")
    if not files:
        return np.zeros(0, np.int64)
    return pc.list_value_length(pq.read_table(files, columns=["items"], filesystem=shards.fs).column("items")
                                ).to_numpy()


def auto_max_seq_len(lengths: np.ndarray) -> int:
    if not len(lengths):
        return 16
    p90 = float(np.quantile(lengths, 0.9))
    return int(min(MAX_LEN_AUTO, max(16, 16 * math.ceil(p90 / 16))))


def auto_preset(train_events: int) -> str:
    return next(name for bound, name in PRESET_BY_EVENTS if train_events < bound)


def auto_batch_size(windows_per_worker: int) -> int:
    """BATCH_AUTO, or SMALL_DATA_BATCH when BATCH_AUTO would leave an epoch under MIN_STEPS_PER_EPOCH steps; at most
    the largest power of two within a worker's windows (at least 1)."""
    batch = BATCH_AUTO if windows_per_worker >= BATCH_AUTO * MIN_STEPS_PER_EPOCH else SMALL_DATA_BATCH
    return min(batch, 1 << max(0, int(windows_per_worker).bit_length() - 1))


def resolve(cfg: GenrecConfig, shards: ShardSet, echo=say) -> GenrecConfig:
    """`cfg` with every "auto" model value and train.batch_size chosen from the shards (said, with the reason,
    through `echo`)."""
    m = cfg.model
    if AUTO not in (m.preset, m.max_seq_len, m.decoding, m.projection_ratio, cfg.train.batch_size):
        return cfg
    out = cfg.model_copy(deep=True)
    counts = shards.manifest["counts"]
    said = []
    if m.max_seq_len == AUTO:
        lengths = training_lengths(shards)
        out.model.max_seq_len = auto_max_seq_len(lengths)
        said.append(f"max_seq_len {out.model.max_seq_len} (90% of the {len(lengths):,} training histories have "
                    f"{int(np.quantile(lengths, 0.9)) if len(lengths) else 0} events or fewer)")
    if m.preset == AUTO:
        out.model.preset = auto_preset(int(counts["train_events"]))
        said.append(f"preset {out.model.preset} ({counts['train_events']:,} training events)")
    if m.decoding == AUTO:
        out.model.decoding = "full" if counts["items"] <= FULL_SOFTMAX_TITLES else "sampled"
        said.append(f"decoding {out.model.decoding} ({counts['items']:,} titles)")
    if m.projection_ratio == AUTO:
        _, width, _ = resolve_shape(out.model.preset, m.layers, m.width, m.heads, m.block)
        out.model.projection_ratio = 8 if width >= PROJECT_FROM_WIDTH and not m.tie_embeddings else 1
        said.append(f"projection_ratio {out.model.projection_ratio} (width {width}"
                    + (", tied embeddings" if m.tie_embeddings else "") + ")")
    if cfg.train.batch_size == AUTO:
        windows = count_windows(shards, out.model.max_seq_len, train_window(cfg, shards), targets_from(cfg, shards))
        per_worker = windows // cfg.train.workers
        out.train.batch_size = auto_batch_size(per_worker)
        said.append(f"batch_size {out.train.batch_size} ({per_worker:,} training windows per worker: "
                    f"{per_worker // out.train.batch_size:,} steps an epoch)")
    if said:
        echo("chosen for this data: " + "; ".join(said))
    return out

