"""Time split and per-user sequence shards in Parquet, written atomically, with a manifest.

Layout of a shard set (one folder, renamed into place only once complete, so no half-written set is ever visible):

    manifest.json          schema version, cutoff, counts, cold-start share, every file with rows and sha256
    items.parquet          the item vocabulary: item_id -> index (1..n; 0 is padding) plus metadata
    train/part-NNNNN.parquet   one row per user: events before the cutoff (items, ts, actions, utils lists)
    eval/part-NNNNN.parquet    one row per user with events on both sides: history before, targets after the cutoff

Item indices are assigned over the whole catalogue, including titles that first appear after the cutoff (the
cold-start titles), so evaluation and serving can rank them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genrec.data.schema import Dataset

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class ShardError(RuntimeError):
    """A shard set that is missing, incomplete or of another schema version."""


@dataclass(frozen=True)
class ShardSet:
    root: Path
    manifest: dict

    @property
    def num_items(self) -> int:
        return int(self.manifest["counts"]["items"])

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def items_path(self) -> Path:
        return self.root / "items.parquet"

    def files(self, split: str) -> list[str]:
        return [str(self.root / f["path"]) for f in self.manifest["files"] if f["split"] == split]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, fsync, then rename: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def resolve_cutoff(timestamps: np.ndarray, cutoff_ts: int | None, quantile: float) -> int:
    if cutoff_ts is not None:
        return int(cutoff_ts)
    return int(np.quantile(timestamps, quantile, method="higher"))


def _lists(values: np.ndarray, offsets: np.ndarray, type_: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, type_))


def _user_rows(users, items, ts, actions, utils, keep: np.ndarray) -> pa.Table:
    """Group sorted events (by user, then time) into one row per user, keeping only events where `keep`."""
    u, it, t, a, w = users[keep], items[keep], ts[keep], actions[keep], utils[keep]
    if u.size == 0:
        starts = np.zeros(0, dtype=np.int64)
    else:
        starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    offsets = np.r_[starts, u.size].astype(np.int32)
    return pa.table({
        "user_id": pa.array(u[starts], pa.int64()),
        "items": _lists(it, offsets, pa.int32()),
        "ts": _lists(t, offsets, pa.int64()),
        "actions": _lists(a, offsets, pa.int8()),
        "utils": _lists(w, offsets, pa.float32()),
    })


def split_sequences(ds: Dataset, cutoff: int, min_train_events: int = 2):
    """-> (vocab table, train rows, eval rows, stats). Pure: no I/O, so it is unit-tested directly."""
    items = ds.items.sort_by("item_id")
    item_ids = items.column("item_id").to_numpy()
    vocab = items.append_column("index", pa.array(np.arange(1, len(item_ids) + 1), pa.int32()))

    ev = ds.events.sort_by([("user_id", "ascending"), ("timestamp", "ascending")])
    users = ev.column("user_id").to_numpy()
    raw_items = ev.column("item_id").to_numpy()
    idx = np.searchsorted(item_ids, raw_items).astype(np.int32) + 1  # validated: every event's item is known
    ts = ev.column("timestamp").to_numpy()
    actions = ev.column("action").to_numpy().astype(np.int8)
    utils = ev.column("utility").to_numpy().astype(np.float32)

    before = ts < cutoff
    train_all = _user_rows(users, idx, ts, actions, utils, before)
    lengths = pc.list_value_length(train_all.column("items")).to_numpy()
    train = train_all.filter(pa.array(lengths >= min_train_events))

    # Evaluation rows: users with history before the cutoff and targets after it. Both tables are sorted by
    # user, so an isin mask on each lines them up (Arrow joins do not carry list columns).
    after = _user_rows(users, idx, ts, actions, utils, ~before)
    after_users = after.column("user_id").to_numpy()
    hist_users = train_all.column("user_id").to_numpy()
    hist = train_all.filter(pa.array(np.isin(hist_users, after_users)))
    after = after.filter(pa.array(np.isin(after_users, hist_users)))
    eval_rows = pa.table({
        "user_id": hist.column("user_id"),
        "items": hist.column("items"), "ts": hist.column("ts"), "actions": hist.column("actions"),
        "targets": after.column("items"), "target_ts": after.column("ts"),
        "target_actions": after.column("actions"), "target_utils": after.column("utils"),
    })

    # Cold-start titles: first seen at or after the cutoff. Their share of evaluation events is the rate at
    # which collaborative-embedding masking should hide ids during training.
    first_seen = np.full(len(item_ids) + 1, np.iinfo(np.int64).max)
    np.minimum.at(first_seen, idx, ts)
    cold = first_seen >= cutoff
    eval_events = int((~before).sum())
    stats = {
        "cutoff": int(cutoff),
        "users": int(np.unique(users).size),
        "items": int(len(item_ids)),
        "events": int(len(users)),
        "train_events": int(before.sum()),
        "train_users": train.num_rows,
        "eval_events": eval_events,
        "eval_users": eval_rows.num_rows,
        "cold_start_items": int(cold[1:].sum()),
        "cold_start_eval_share": float(cold[idx[~before]].mean()) if eval_events else 0.0,
    }
    return vocab, train, eval_rows, stats


def write_shards(ds: Dataset, out_dir: str | Path, cutoff: int, min_train_events: int = 2,
                 users_per_shard: int = 20_000, extra: dict | None = None) -> ShardSet:
    """Split, write every file into a temporary sibling folder, then swap it into place.

    `extra` is merged into the manifest (e.g. the data config the shards were built from)."""
    out_dir = Path(out_dir).resolve()
    vocab, train, eval_rows, stats = split_sequences(ds, cutoff, min_train_events)
    if train.num_rows == 0:
        raise ShardError(f"{ds.name}: no user has {min_train_events}+ events before the cutoff {cutoff}; "
                         "move the cutoff later (data.cutoff_quantile / data.cutoff_ts)")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        files = []

        def put(table: pa.Table, rel: str, split: str) -> None:
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path, compression="zstd")
            files.append({"path": rel, "split": split, "rows": table.num_rows, "bytes": path.stat().st_size,
                          "sha256": sha256_file(path)})

        put(vocab, "items.parquet", "items")
        for split, table in (("train", train), ("eval", eval_rows)):
            for i, start in enumerate(range(0, max(table.num_rows, 1), users_per_shard)):
                put(table.slice(start, users_per_shard), f"{split}/part-{i:05d}.parquet", split)
        manifest = {"schema_version": SCHEMA_VERSION, "dataset": ds.name, "created_at": time.time(),
                    "counts": stats, "files": files, **(extra or {})}
        atomic_write_json(tmp / MANIFEST, manifest)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ShardSet(out_dir, manifest)


def _swap_into_place(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.rename(tmp, final)
        return
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(final, old)  # the window between the two renames has no manifest at `final`: readers retry or fail
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def open_shards(root: str | Path) -> ShardSet:
    root = Path(root)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ShardError(f"{mpath}: no shard manifest; build shards first (`genrec data prepare --config ...`)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise ShardError(f"{mpath}: manifest is not valid JSON ({exc}); rebuild the shards") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ShardError(f"{mpath}: schema_version {manifest.get('schema_version')!r}, this genrec reads "
                         f"{SCHEMA_VERSION}; rebuild the shards")
    for f in manifest["files"]:
        if not (root / f["path"]).is_file():
            raise ShardError(f"{root / f['path']}: listed in the manifest but missing; rebuild the shards")
    return ShardSet(root, manifest)
