"""The training windows handed to Ray Train: cut from the shards' training split (in this process for small data, by
Ray Data tasks otherwise), materialised or streamed, with room left on the cluster for Ray Data to read."""

from __future__ import annotations

import pyarrow as pa
import ray
import ray.data
from ray.data.extensions import ArrowTensorArray

from genrec.build import all_windows, count_windows, targets_from, train_window
from genrec.config import ConfigError, GenrecConfig
from genrec.shards import ShardSet
from genrec.windows import training_windows

WINDOW_BYTES_PER_EVENT = 18  # items int32 + actions int8 + gaps int8 + utils float32 + ts int64
# Materialised windows up to this size are cut in the driver: Ray Data's read and windowing tasks start new worker
# processes, seconds of start-up for milliseconds of work on small data.
DRIVER_WINDOWS_BYTES = 64 * 2**20
WINDOWS_PER_BLOCK = 2048


def windows_by_ray_data(shards: ShardSet, max_seq_len: int, window: tuple[int | None, int | None],
                        task_cpus: float, since: int | None = None):
    """The training windows as a Ray Data pipeline: the shards read and windowed by tasks (streamed every epoch,
    or materialised once)."""
    return ray.data.read_parquet(shards.files("train"), columns=["items", "ts", "actions", "utils"],
                                 filesystem=shards.fs, num_cpus=task_cpus).map_batches(
        training_windows, fn_kwargs={"max_seq_len": max_seq_len, "ts_min": window[0], "ts_max": window[1],
                                     "targets_from": since},
        batch_format="numpy", batch_size=256, num_cpus=task_cpus)


def windows_in_driver(shards: ShardSet, max_seq_len: int, window: tuple[int | None, int | None],
                      since: int | None = None):
    """The training windows cut in this process (genrec.build.all_windows, the same windowing the Ray Data tasks
    run), handed to Ray Data as in-memory blocks of WINDOWS_PER_BLOCK windows."""
    out = all_windows(shards, max_seq_len, window, since)
    return ray.data.from_arrow([pa.table({k: ArrowTensorArray.from_numpy(v[a:a + WINDOWS_PER_BLOCK])
                                          for k, v in out.items()})
                                for a in range(0, len(out["items"]), WINDOWS_PER_BLOCK)])


def check_ingest_room(cfg: GenrecConfig, reserved: float = 0.0) -> None:
    """Refuse a run whose training workers would leave Ray Data no whole CPU: it would hang, not fail."""
    total = ray.cluster_resources().get("CPU", 0.0)
    free = total - reserved - cfg.train.workers * cfg.train.cpus_per_worker
    if free < 1.0:
        raise ConfigError(
            f"train.workers={cfg.train.workers} x train.cpus_per_worker={cfg.train.cpus_per_worker} leaves "
            f"{free:.2f} of the cluster's {total:g} CPUs for Ray Data, which needs at least 1 to read the shards; "
            "lower train.cpus_per_worker or train.workers (or add CPU nodes)")


def training_dataset(cfg: GenrecConfig, shards: ShardSet) -> tuple[ray.data.Dataset, int]:
    """(the run's training windows as a Ray Data dataset, how many there are). Small data is windowed once: in this
    process up to DRIVER_WINDOWS_BYTES, else by Ray Data tasks and kept in the object store (train.ingest: auto,
    materialize or stream)."""
    t = cfg.train
    window, since = train_window(cfg, shards), targets_from(cfg, shards)
    windows = count_windows(shards, cfg.model.max_seq_len, window, since)
    if windows // t.workers < t.batch_size:
        raise ConfigError(f"train.batch_size={t.batch_size} is larger than the {windows // t.workers} training "
                          f"windows each of the {t.workers} workers gets; lower train.batch_size or train.workers"
                          + (" (or the training-window shift)" if window != (None, None) or since else ""))
    window_bytes = windows * (cfg.model.max_seq_len + 1) * WINDOW_BYTES_PER_EVENT
    object_store = ray.cluster_resources().get("object_store_memory", 0.0)
    materialize = t.ingest == "materialize" or (t.ingest == "auto" and window_bytes < 0.25 * object_store)
    if materialize and window_bytes <= DRIVER_WINDOWS_BYTES:
        return windows_in_driver(shards, cfg.model.max_seq_len, window, since), windows
    streamed = windows_by_ray_data(shards, cfg.model.max_seq_len, window, t.data_task_cpus, since)
    # Windowed once, kept in the object store: each epoch then only shuffles and splits blocks, instead of
    # re-reading and re-windowing the shards (seconds per epoch on a small box).
    return (streamed.materialize() if materialize else streamed), windows
