"""Sequence shards from event logs larger than memory: a user-partitioned build driven by Ray (issue #8).

`genrec.shards.write_shards` sorts the whole event table in memory; that is fine up to a few 10^7 events. This
module builds the same shard set (same rows, same manifest counts, same cutoff) from a folder of Parquet event files
of any size, holding at most one record batch of input or one user partition in memory per task:

1. **Scatter** (one Ray task per input file, record batch by record batch): item ids -> catalogue indices, an
   hourly histogram of timestamps, each title's first event time, and the events written out again grouped into
   `partitions` buckets by a hash of the user id, so every user's events land in one bucket.
2. **Cutoff** (time split): the quantile is found exactly from the histogram, then the timestamps of the one hour
   that holds it (numpy's "higher" quantile, as `resolve_cutoff` computes it in memory).
3. **Split** (one Ray task per bucket): the bucket's events sorted by (user, time), split by the same code as the
   in-memory path (`genrec.shards.split_sorted`), written as train/eval(/valid) shard files with their checksums.
4. The manifest is written and the folder swapped into place atomically, as `write_shards` does.

Input: Parquet files in the canonical event schema (`genrec.data.schema.EVENT_SCHEMA`: user_id, item_id, timestamp,
action, utility) and an item table (`items.parquet`, ITEM_SCHEMA). `genrec.data.synthetic.write_events` writes such a
folder at any size; `data.source: parquet` with `data.partitions: N` points the pipeline at one.
"""

from __future__ import annotations

import math
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genrec.data.schema import EVENT_SCHEMA, DataError
from genrec.shards import (MANIFEST, SCHEMA_VERSION, SPLITS, ShardError, ShardSet, _swap_into_place, atomic_write_json,
                           cold_stats, sha256_file, split_sorted)

HOUR = 3600
EVENTS_PER_PARTITION = 2_000_000  # default partition size: a few hundred MB of numpy arrays while one is split
BATCH_ROWS = 1_000_000  # input record batch
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: consecutive user ids spread over the buckets


def event_files(folder: str | Path) -> list[Path]:
    """The Parquet event files of a folder (sorted, so the scatter keeps the input order of same-second events)."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    files = sorted(p for p in folder.rglob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        raise DataError(f"{folder}: no .parquet event files in it; point data.path at a folder of event files "
                        f"({', '.join(EVENT_SCHEMA.names)})")
    return files


def partition_of(users: np.ndarray, partitions: int) -> np.ndarray:
    """Bucket of each user id: a multiplicative hash, so users of one input chunk spread over every bucket."""
    return ((users.astype(np.uint64) * _GOLDEN) >> np.uint64(32)) % np.uint64(partitions)


def quantile_from_histogram(hist: np.ndarray, q: float) -> tuple[int, int]:
    """(bin, rank inside the bin) of numpy's "higher" q-quantile of the values a histogram counts."""
    n = int(hist.sum())
    k = int(np.ceil((n - 1) * q))  # numpy: virtual index q x (n - 1), "higher" rounds it up
    cum = np.cumsum(hist)
    b = int(np.searchsorted(cum, k, side="right"))
    return b, k - (int(cum[b - 1]) if b else 0)


def _file_meta(path: Path) -> tuple[int, int | None, int | None]:
    """(rows, min timestamp, max timestamp) from the Parquet footer; None when a row group has no statistics."""
    f = pq.ParquetFile(path)
    names = f.schema_arrow.names
    missing = [c for c in EVENT_SCHEMA.names if c not in names]
    if missing:
        raise DataError(f"{path}: event file lacks column(s) {', '.join(missing)}; expected "
                        f"{', '.join(EVENT_SCHEMA.names)} (genrec's event schema)")
    col = names.index("timestamp")
    lo = hi = None
    for g in range(f.metadata.num_row_groups):
        st = f.metadata.row_group(g).column(col).statistics
        if st is None or not st.has_min_max:
            return f.metadata.num_rows, None, None
        lo = st.min if lo is None else min(lo, st.min)
        hi = st.max if hi is None else max(hi, st.max)
    return f.metadata.num_rows, lo, hi


def _scatter(file_no: int, path: str, item_ids: np.ndarray, t0: int, hours: int, partitions: int, out: str) -> dict:
    """Pass 1 over one input file (see the module docstring)."""
    num_items = len(item_ids)
    hist = np.zeros(hours, np.int64)
    first_seen = np.full(num_items + 1, np.iinfo(np.int64).max)
    events, row = 0, 0
    for b, batch in enumerate(pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=EVENT_SCHEMA.names)):
        t = pa.Table.from_batches([batch])
        for name in EVENT_SCHEMA.names:
            if t.column(name).null_count:
                bad = int(np.flatnonzero(t.column(name).is_null().to_numpy(zero_copy_only=False))[0])
                raise DataError(f"{path}: row {row + bad + 1}: '{name}' is empty; every event needs "
                                f"{', '.join(EVENT_SCHEMA.names)}")
        try:
            t = t.cast(EVENT_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataError(f"{path}: columns do not convert to genrec's event schema ({exc}); expected "
                            f"{EVENT_SCHEMA}") from None
        users = t.column("user_id").to_numpy()
        raw = t.column("item_id").to_numpy()
        ts = t.column("timestamp").to_numpy()
        idx = np.searchsorted(item_ids, raw)
        unknown = (idx >= num_items) | (item_ids[np.minimum(idx, num_items - 1)] != raw)
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise DataError(f"{path}: row {row + i + 1}: item_id {raw[i]} is not in the item table; add the title to "
                            "items.parquet or drop its events")
        idx = (idx + 1).astype(np.int32)
        hist += np.bincount((ts - t0) // HOUR, minlength=hours)[:hours]
        np.minimum.at(first_seen, idx, ts)
        part = partition_of(users, partitions)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(partitions + 1))
        t = pa.table({"user_id": users, "idx": idx, "ts": ts, "action": t.column("action").to_numpy().astype(np.int8),
                      "utility": t.column("utility").to_numpy()}).take(pa.array(order))
        for p in range(partitions):
            if bounds[p + 1] > bounds[p]:
                folder = Path(out, f"p-{p:05d}")
                folder.mkdir(parents=True, exist_ok=True)
                pq.write_table(t.slice(bounds[p], bounds[p + 1] - bounds[p]),
                               folder / f"f-{file_no:06d}-{b:05d}.parquet", compression="lz4")
        events += t.num_rows
        row += t.num_rows
    return {"hist": hist, "first_seen": first_seen, "events": events}


def _hour_values(folder: str, lo: int, hi: int) -> np.ndarray:
    """Timestamps in [lo, hi) of one bucket (the hour that holds the cutoff quantile)."""
    out = []
    for f in sorted(Path(folder).glob("*.parquet")):
        ts = pq.read_table(f, columns=["ts"]).column("ts").to_numpy()
        out.append(ts[(ts >= lo) & (ts < hi)])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _split_bucket(p: int, folder: str, num_items: int, cutoff: int | None, min_train_events: int, split: str,
                  users_per_shard: int, out: str) -> dict:
    """Pass 2 over one bucket: sort, split, write its shard files; returns their manifest entries and counts."""
    files = sorted(Path(folder).glob("*.parquet"))
    t = pa.concat_tables([pq.read_table(f) for f in files]).sort_by([("user_id", "ascending"), ("ts", "ascending")])
    tables, counts, seen, eval_counts = split_sorted(
        t.column("user_id").to_numpy(), t.column("idx").to_numpy(), t.column("ts").to_numpy(),
        t.column("action").to_numpy(), t.column("utility").to_numpy(), num_items, cutoff, min_train_events, split)
    del t
    entries = []
    for name, table in tables.items():
        for k, start in enumerate(range(0, table.num_rows, users_per_shard)):
            rel = f"{name}/part-{p:05d}-{k:03d}.parquet"
            path = Path(out, rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.slice(start, users_per_shard), path, compression="zstd")
            entries.append({"path": rel, "split": name, "rows": min(users_per_shard, table.num_rows - start),
                            "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    shutil.rmtree(folder, ignore_errors=True)  # the bucket is consumed: disk stays near one copy of the data
    return {"entries": entries, "counts": counts, "seen": seen, "eval_counts": eval_counts}


def build_shards(events: str | Path, items_path: str | Path, out_dir: str | Path, *, cutoff_ts: int | None = None,
                 cutoff_quantile: float = 0.9, min_train_events: int = 2, split: str = "time",
                 partitions: int | None = None, users_per_shard: int = 20_000, extra: dict | None = None,
                 name: str = "parquet", echo=print) -> ShardSet:
    """Shards from Parquet event files of any size (see the module docstring). Runs its tasks on the Ray cluster
    this process is connected to (`ray.init` first), or on a local one it starts."""
    import ray

    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    files = event_files(events)
    items = pq.read_table(items_path).sort_by("item_id")
    item_ids = items.column("item_id").to_numpy()
    if len(np.unique(item_ids)) != len(item_ids):
        raise DataError(f"{items_path}: item_id repeats; every title needs one row")
    vocab = items.append_column("index", pa.array(np.arange(1, len(item_ids) + 1), pa.int32()))
    metas = [_file_meta(f) for f in files]
    total = sum(m[0] for m in metas)
    if total == 0:
        raise DataError(f"{events}: the event files hold no rows")
    if any(m[1] is None for m in metas):
        raise DataError(f"{events}: an event file has no timestamp statistics in its footer; rewrite it with "
                        "pyarrow (statistics are on by default)")
    t0 = min(m[1] for m in metas) // HOUR * HOUR
    hours = (max(m[2] for m in metas) - t0) // HOUR + 1
    partitions = partitions or max(1, math.ceil(total / EVENTS_PER_PARTITION))
    out_dir = Path(out_dir).resolve()
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    buckets = tmp / "_buckets"
    buckets.mkdir(parents=True)
    if not ray.is_initialized():
        from genrec.runtime import init_ray

        init_ray()
    try:
        start = time.perf_counter()
        echo(f"scatter: {total:,} events in {len(files)} file(s) -> {partitions} user partitions ...")
        scatter = ray.remote(_scatter).options(num_cpus=1, max_retries=0)
        ids_ref = ray.put(item_ids)
        pending = [scatter.remote(i, str(f), ids_ref, t0, hours, partitions, str(buckets)) for i, f in enumerate(files)]
        hist = np.zeros(hours, np.int64)
        first_seen = np.full(len(item_ids) + 1, np.iinfo(np.int64).max)
        done = 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            r = ray.get(ready[0])
            hist += r["hist"]
            np.minimum(first_seen, r["first_seen"], out=first_seen)
            done += 1
            if done % max(1, len(files) // 10) == 0 or not pending:
                echo(f"  scattered {done}/{len(files)} files ({time.perf_counter() - start:.0f} s)")
        cutoff = None
        if split == "time":
            cutoff = cutoff_ts
            if cutoff is None:
                b, rank = quantile_from_histogram(hist, cutoff_quantile)
                lo = t0 + b * HOUR
                hour = ray.remote(_hour_values).options(num_cpus=1)
                vals = np.sort(np.concatenate(ray.get([hour.remote(str(d), lo, lo + HOUR)
                                                       for d in sorted(buckets.iterdir())])))
                cutoff = int(vals[rank])
            echo(f"  cutoff {cutoff} ({time.strftime('%Y-%m-%d %H:%M', time.gmtime(cutoff))} UTC)")
        echo(f"split: {partitions} partitions ...")
        task = ray.remote(_split_bucket).options(num_cpus=1, max_retries=0)
        folders = sorted(buckets.iterdir())
        pending = [task.remote(int(d.name[2:]), str(d), len(item_ids), cutoff, min_train_events, split,
                               users_per_shard, str(tmp)) for d in folders]
        entries, counts, done = [], {}, 0
        seen = None
        eval_counts = np.zeros(len(item_ids) + 1, np.int64)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            r = ray.get(ready[0])
            entries += r["entries"]
            for k, v in r["counts"].items():
                counts[k] = counts.get(k, 0) + v
            if split == "leave_one_out":
                seen = r["seen"] if seen is None else seen | r["seen"]
            eval_counts += r["eval_counts"]
            done += 1
            if done % max(1, len(folders) // 10) == 0 or not pending:
                echo(f"  split {done}/{len(folders)} partitions ({time.perf_counter() - start:.0f} s)")
        shutil.rmtree(buckets, ignore_errors=True)
        if counts.get("train_users", 0) == 0:
            raise ShardError(f"{events}: no user has {min_train_events}+ training events; move the cutoff later "
                             "(data.cutoff_quantile / data.cutoff_ts) or lower data.min_train_events")
        stats = {"split": split, "cutoff": cutoff, "items": int(len(item_ids)), **counts,
                 **cold_stats(split, first_seen if split == "time" else seen, cutoff, eval_counts)}
        pq.write_table(vocab, tmp / "items.parquet", compression="zstd")
        files_meta = [{"path": "items.parquet", "split": "items", "rows": vocab.num_rows,
                       "bytes": (tmp / "items.parquet").stat().st_size, "sha256": sha256_file(tmp / "items.parquet")}]
        order = {"train": 0, "valid": 1, "eval": 2}
        files_meta += sorted(entries, key=lambda e: (order.get(e["split"], 3), e["path"]))
        manifest = {"schema_version": SCHEMA_VERSION, "dataset": name, "created_at": time.time(), "counts": stats,
                    "files": files_meta, "build": {"partitions": partitions, "input_files": len(files)},
                    **(extra or {})}
        atomic_write_json(tmp / MANIFEST, manifest)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    echo(f"shards: {stats['train_users']:,} training users, {stats['eval_users']:,} evaluation users -> {out_dir} "
         f"({time.perf_counter() - start:.0f} s)")
    return ShardSet(out_dir, manifest)
