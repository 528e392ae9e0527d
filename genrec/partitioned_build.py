"""Sequence shards from event logs larger than memory: a user-partitioned build driven by Ray.

`genrec.shards.write_shards` sorts the whole event table in memory; that is fine up to a few 10^7 events. This
module builds the same shard set (the same rows, manifest counts and cutoff; rows ordered by user inside each
partition's files rather than across all files) from a folder of Parquet event files of any size, holding at most
one record batch of input or one user partition in memory per task:

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
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.console import say
from genrec.data.schema import (_MAX_PLAUSIBLE_SECONDS, EVENT_SCHEMA, EXTERNAL_ID, ITEM_SCHEMA, DataError, Origin,
                                 _conform, _no_nulls)
from genrec.ray_session import init_ray
from genrec.shards import (SPLITS, ShardSet, check_cutoffs, cold_stats, finish_shards, no_training_rows, open_shards,
                           split_sorted, split_stats, train_end, write_part)

HOUR = 3600
EVENTS_PER_PARTITION = 2_000_000  # default partition size: a few hundred MB of numpy arrays while one is split
BATCH_ROWS = 1_000_000  # input record batch
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: consecutive user ids spread over the buckets
_BUCKET_SCHEMA = pa.schema([("user_id", pa.int64()), ("idx", pa.int32()), ("ts", pa.int64()), ("action", pa.int8()),
                            ("utility", pa.float32())])


def event_files(folder: str | Path) -> list[Path]:
    """The Parquet event files of a folder, as Arrow's dataset reader sees them: files and folders whose names start
    with '.' or '_' are skipped (Spark's _SUCCESS, hidden files); sorted by path string, so the scatter keeps the
    input order of same-second events."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        files += [Path(root, n) for n in names if not n.startswith((".", "_")) and n.endswith(".parquet")]
    if not files:
        raise DataError(f"{folder}: no .parquet event files in it; point data.path at a folder of event files "
                        f"({', '.join(EVENT_SCHEMA.names)})")
    return sorted(files, key=lambda f: f.as_posix())


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
    """(rows, min timestamp, max timestamp) from the Parquet footer, with the checks that need no data read."""
    f = pq.ParquetFile(path)
    schema = f.schema_arrow
    missing = [c for c in EVENT_SCHEMA.names if c not in schema.names]
    if missing:
        raise DataError(f"{path}: event file lacks column(s) {', '.join(missing)}; expected "
                        f"{', '.join(EVENT_SCHEMA.names)} (genrec's event schema)")
    if not pa.types.is_integer(schema.field("timestamp").type):
        raise DataError(f"{path}: field 'timestamp' is {schema.field('timestamp').type}; genrec reads integer Unix "
                        "seconds: convert the column (e.g. pc.cast(pc.divide(ts, 1000), pa.int64()) for ms)")
    if f.metadata.num_rows == 0:
        return 0, None, None
    col = schema.names.index("timestamp")
    lo = hi = None
    for g in range(f.metadata.num_row_groups):
        if f.metadata.row_group(g).num_rows == 0:
            continue
        st = f.metadata.row_group(g).column(col).statistics
        if st is None or not st.has_min_max:
            raise DataError(f"{path}: no timestamp statistics in the file's footer; rewrite it with pyarrow "
                            "(statistics are on by default)")
        lo = st.min if lo is None else min(lo, st.min)
        hi = st.max if hi is None else max(hi, st.max)
    if hi >= _MAX_PLAUSIBLE_SECONDS:
        raise DataError(f"{path}: field 'timestamp': {hi} looks like milliseconds, not Unix seconds; convert the "
                        "timestamps to seconds")
    return f.metadata.num_rows, lo, hi


def _scatter(file_no: int, path: str, item_ids: np.ndarray, t0: int, hours: int, partitions: int, out: str,
             batch_rows: int) -> dict:
    """Pass 1 over one input file (see the module docstring): one bucket file per partition it has users in."""
    num_items = len(item_ids)
    hist = np.zeros(hours, np.int64)
    first_seen = np.full(num_items + 1, np.iinfo(np.int64).max)
    writers: dict[int, pq.ParquetWriter] = {}
    row = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=EVENT_SCHEMA.names):
            t = pa.Table.from_batches([batch])
            # Errors as the in-memory validation words them, at the row's place in the whole file.
            origin = Origin(path, lambda i, first=row: f"row {first + i + 1}")
            for name in EVENT_SCHEMA.names:
                _no_nulls(t, name, origin)
            try:
                t = t.cast(EVENT_SCHEMA)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:  # e.g. text in a number column
                raise DataError(f"{path}: columns do not convert to genrec's event schema ({exc}); expected "
                                f"{EVENT_SCHEMA}") from None
            users = t.column("user_id").to_numpy()
            raw = t.column("item_id").to_numpy()
            ts = t.column("timestamp").to_numpy()
            utility = t.column("utility").to_numpy()
            bad = np.flatnonzero(~np.isfinite(utility))
            if bad.size:
                raise origin.error(f"{utility[bad[0]]} is not a finite number", "fix or drop this row",
                                   row=int(bad[0]), column="utility")
            idx = np.searchsorted(item_ids, raw)
            unknown = (idx >= num_items) | (item_ids[np.minimum(idx, num_items - 1)] != raw)
            if unknown.any():
                i = int(np.flatnonzero(unknown)[0])
                raise origin.error(f"item_id {raw[i]} is not in the item table",
                                   "add the title to the items file or drop its events", row=i)
            idx = (idx + 1).astype(np.int32)
            hist += np.bincount((ts - t0) // HOUR, minlength=hours)[:hours]
            np.minimum.at(first_seen, idx, ts)
            part = partition_of(users, partitions)
            order = np.argsort(part, kind="stable")  # stable: each user's events keep their input order
            bounds = np.searchsorted(part[order], np.arange(partitions + 1))
            t = pa.table([users, idx, ts, t.column("action").to_numpy().astype(np.int8), utility],
                         schema=_BUCKET_SCHEMA).take(pa.array(order))
            for p in np.flatnonzero(np.diff(bounds)):
                if p not in writers:
                    folder = Path(out, f"p-{p:05d}")
                    folder.mkdir(parents=True, exist_ok=True)
                    writers[p] = pq.ParquetWriter(folder / f"f-{file_no:06d}.parquet", _BUCKET_SCHEMA,
                                                  compression="lz4")
                writers[p].write_table(t.slice(bounds[p], bounds[p + 1] - bounds[p]))
            row += t.num_rows
    finally:
        for w in writers.values():
            w.close()
    return {"hist": hist, "first_seen": first_seen, "events": row}


def _hour_values(folder: str, lo: int, hi: int) -> np.ndarray:
    """Timestamps in [lo, hi) of one bucket (the hour that holds the cutoff quantile)."""
    out = [np.zeros(0, np.int64)]
    for f in sorted(Path(folder).glob("*.parquet")):
        ts = pq.read_table(f, columns=["ts"]).column("ts").to_numpy()
        out.append(ts[(ts >= lo) & (ts < hi)])
    return np.concatenate(out)


def _split_bucket(p: int, folder: str, num_items: int, cutoff: int | None, valid_cutoff: int | None,
                  min_train_events: int, split: str, users_per_shard: int, out: str) -> dict:
    """Pass 2 over one bucket: sort, split, write its shard files; returns their manifest entries and counts."""
    files = sorted(Path(folder).glob("*.parquet"))  # f-<input file number>: input order, for same-second events
    t = pa.concat_tables([pq.read_table(f) for f in files]).sort_by([("user_id", "ascending"), ("ts", "ascending")])
    tables, counts, seen, target_counts = split_sorted(
        t.column("user_id").to_numpy(), t.column("idx").to_numpy(), t.column("ts").to_numpy(),
        t.column("action").to_numpy(), t.column("utility").to_numpy(), num_items, cutoff, min_train_events, split,
        valid_cutoff)
    del t
    entries = [write_part(out, table.slice(start, users_per_shard), f"{name}/part-{p:05d}-{k:03d}.parquet", name)
               for name, table in tables.items()
               for k, start in enumerate(range(0, table.num_rows, users_per_shard))]
    shutil.rmtree(folder, ignore_errors=True)  # the bucket is consumed: disk stays near one copy of the data
    return {"entries": entries, "counts": counts, "seen": seen, "target_counts": target_counts}


def _gather(refs: list, each, echo, what: str, start: float) -> None:
    """Results of Ray tasks as they finish, passed to `each`. On the first failure the other tasks are cancelled and
    waited for (so none writes into a folder being removed) and the task's own error is raised, not Ray's wrapper."""
    import ray
    from ray.exceptions import RayTaskError

    pending, done, total = list(refs), 0, len(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            each(ray.get(ready[0]))
            done += 1
            if done % max(1, total // 10) == 0 or not pending:
                echo(f"  {what} {done}/{total} ({time.perf_counter() - start:.0f} s)")
    except BaseException as exc:
        for r in pending:
            ray.cancel(r, force=True)
        ray.wait(pending, num_returns=len(pending), timeout=60)
        if isinstance(exc, RayTaskError) and isinstance(exc.cause, Exception):
            raise exc.cause from None
        raise


def build_shards(events: str | Path, items_path: str | Path, out_dir: str | Path, *, cutoff_ts: int | None = None,
                 cutoff_quantile: float = 0.9, valid_cutoff_ts: int | None = None,
                 valid_quantile: float | None = 0.8, min_train_events: int = 2, split: str = "time",
                 partitions: int | None = None, users_per_shard: int = 20_000, extra: dict | None = None,
                 name: str = "parquet", batch_rows: int = BATCH_ROWS, echo=say) -> ShardSet:
    """Shards from Parquet event files of any size (see the module docstring). Runs its tasks on the Ray cluster
    this process is connected to, or on an embedded local one it starts."""
    import ray

    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    files = event_files(events)
    items = _conform(pq.read_table(items_path), ITEM_SCHEMA, (EXTERNAL_ID,), Origin(str(items_path)), "items")
    items = items.sort_by("item_id")
    item_ids = items.column("item_id").to_numpy(zero_copy_only=False)
    if len(item_ids) == 0 or items.column("item_id").null_count:
        raise DataError(f"{items_path}: the item table is empty or has rows without item_id; one row per title")
    if len(np.unique(item_ids)) != len(item_ids):
        raise DataError(f"{items_path}: item_id repeats; keep one row per title")
    vocab = items.append_column("index", pa.array(np.arange(1, len(item_ids) + 1), pa.int32()))
    metas = [(f, *_file_meta(f)) for f in files]
    metas = [m for m in metas if m[1] > 0]  # empty part files (Spark writes them) hold nothing to scatter
    total = sum(m[1] for m in metas)
    if total == 0:
        raise DataError(f"{events}: the event files hold no rows")
    t0 = min(m[2] for m in metas) // HOUR * HOUR
    hours = (max(m[3] for m in metas) - t0) // HOUR + 1
    partitions = partitions or max(1, math.ceil(total / EVENTS_PER_PARTITION))
    out_dir = Path(out_dir).resolve()
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    buckets = tmp / "_buckets"
    buckets.mkdir(parents=True)
    try:
        if not ray.is_initialized():
            init_ray()
        start = time.perf_counter()
        echo(f"scatter: {total:,} events in {len(metas)} file(s) -> {partitions} user partitions ...")
        scatter = ray.remote(_scatter).options(num_cpus=1, max_retries=0)
        ids_ref = ray.put(item_ids)
        hist = np.zeros(hours, np.int64)
        first_seen = np.full(len(item_ids) + 1, np.iinfo(np.int64).max)

        def add_scatter(r: dict) -> None:
            np.add(hist, r["hist"], out=hist)
            np.minimum(first_seen, r["first_seen"], out=first_seen)

        _gather([scatter.remote(i, str(m[0]), ids_ref, t0, hours, partitions, str(buckets), batch_rows)
                 for i, m in enumerate(metas)], add_scatter, echo, "scattered files", start)
        def quantile(q: float) -> int:
            """numpy's "higher" q-quantile of every timestamp, exactly: the histogram finds its hour, the events of
            that hour give the value."""
            b, rank = quantile_from_histogram(hist, q)
            lo = t0 + b * HOUR
            hour = ray.remote(_hour_values).options(num_cpus=1)
            vals = np.sort(np.concatenate(ray.get([hour.remote(str(d), lo, lo + HOUR)
                                                   for d in sorted(buckets.iterdir())])))
            return int(vals[rank])

        cutoff = valid_cutoff = None
        if split == "time":
            cutoff = cutoff_ts if cutoff_ts is not None else quantile(cutoff_quantile)
            valid_cutoff = valid_cutoff_ts if valid_cutoff_ts is not None else (
                None if valid_quantile is None else quantile(valid_quantile))
            check_cutoffs(cutoff, valid_cutoff)
            echo(f"  cutoff {cutoff} ({time.strftime('%Y-%m-%d %H:%M', time.gmtime(cutoff))} UTC)"
                 + (f", validation from {valid_cutoff}" if valid_cutoff is not None else ""))
        echo(f"split: {partitions} partitions ...")
        task = ray.remote(_split_bucket).options(num_cpus=1, max_retries=0)
        entries, counts = [], {}
        merged = {"seen": None, "target_counts": {k: np.zeros(len(item_ids) + 1, np.int64) for k in ("eval", "valid")}}

        def add_split(r: dict) -> None:
            entries.extend(r["entries"])
            for k, v in r["counts"].items():
                counts[k] = counts.get(k, 0) + v
            if split == "leave_one_out":  # in a training row of any partition (the time split's first event
                # times came from the scatter already)
                merged["seen"] = r["seen"] if merged["seen"] is None else merged["seen"] | r["seen"]
            for k, v in r["target_counts"].items():
                merged["target_counts"][k] += v

        _gather([task.remote(int(d.name[2:]), str(d), len(item_ids), cutoff, valid_cutoff, min_train_events, split,
                             users_per_shard, str(tmp)) for d in sorted(buckets.iterdir())],
                add_split, echo, "split partitions", start)
        shutil.rmtree(buckets, ignore_errors=True)
        if counts.get("train_users", 0) == 0:
            raise no_training_rows(str(events), split, min_train_events, train_end(split, cutoff, valid_cutoff))
        # A split no partition has rows for still gets one (empty) file, as the in-memory build writes.
        empty, _, _, _ = split_sorted(*(np.zeros(0, t) for t in (np.int64, np.int32, np.int64, np.int8, np.float32)),
                                      len(item_ids), cutoff, min_train_events, split, valid_cutoff)
        for split_name, table in empty.items():
            if not any(e["split"] == split_name for e in entries):
                entries.append(write_part(tmp, table, f"{split_name}/part-00000-000.parquet", split_name))
        seen = first_seen if split == "time" else merged["seen"]
        stats = {**split_stats(split, cutoff, valid_cutoff), "items": int(len(item_ids)), **counts,
                 **cold_stats(split, seen, train_end(split, cutoff, valid_cutoff), merged["target_counts"])}
        order = {"train": 0, "valid": 1, "eval": 2}
        files_meta = [write_part(tmp, vocab, "items.parquet", "items"),
                      *sorted(entries, key=lambda e: (order.get(e["split"], 3), e["path"]))]
        finish_shards(tmp, out_dir, name, stats, files_meta,
                      {"build": {"partitions": partitions, "input_files": len(metas)}, **(extra or {})})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    echo(f"shards: {stats['train_users']:,} training users, {stats['eval_users']:,} evaluation users -> {out_dir} "
         f"({time.perf_counter() - start:.0f} s)")
    return open_shards(out_dir)
