"""Time or leave-one-out split and per-user sequence shards in Parquet, written atomically, with a manifest.

Layout of a shard set (one folder, renamed into place only once complete, so no half-written set is ever visible):

    manifest.json          schema version, split, cutoff, counts, cold-start share, every file with rows and sha256
    items.parquet          the item vocabulary: item_id -> index (1..n; 0 is padding) plus metadata
    train/part-NNNNN.parquet   one row per user: events before the cutoff (items, ts, actions, utils lists)
    eval/part-NNNNN.parquet    one row per user with events after the cutoff: history before it, then the targets
    valid/part-NNNNN.parquet   like eval, one step earlier: what every choice (epoch, early stop, trial) is made on

Splits (`split=`):

- "time": two global cutoffs. Events at or after the cutoff are the evaluation (test) targets, with every earlier
  event as history; events in [valid_cutoff, cutoff) are the validation targets, with the events before
  valid_cutoff as history; training sees only the events before valid_cutoff. A model is not retrained on the
  validation window: at test time it reads those events as context, as leave-one-out's test request reads the
  validation event. A user new in a window (no event before it) has a row with an empty history: its requests are
  its later session starts in the window, with its own earlier events there as context (genrec.tasks).
- "leave_one_out" (SASRec / HSTU, RecBole's LS valid_and_test): per user with 3+ events, the last event is the
  eval (test) target with every earlier event as history, the second-to-last is the valid target with the events
  before it as history, and training sees everything before the last two. Users with fewer than 3 events are not
  evaluated; all their events train (as SASRec's data_partition does). Eval and valid rows have the time split's
  eval schema with exactly one target each.

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
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from genrec.data.loaders import with_tag_text
from genrec.data.schema import Dataset
from genrec.errors import GenrecError
from genrec.storage import Store, atomic_write_json, local_store, relative_inside

SCHEMA_VERSION = 3  # 2: evaluation rows carry the history's utilities; 3: the time split has a validation window
MANIFEST = "manifest.json"


class ShardError(GenrecError, RuntimeError):
    """A shard set that is missing, incomplete or of another schema version."""


@dataclass(frozen=True)
class ShardSet:
    root: Path | PurePosixPath  # a local folder, or (store set) the folder's path in the store's filesystem
    manifest: dict
    store: Store | None = None  # None: the local disk

    @property
    def fs(self) -> pafs.FileSystem:
        """For readers: pq.read_table(path, filesystem=shards.fs), ray.data.read_parquet(..., filesystem=...)."""
        return self.store.fs if self.store else pafs.LocalFileSystem()

    def uri(self, path: str | Path | None = None) -> str:
        """How a person names `path` (default: the set's folder): a local path or scheme://bucket/key."""
        path = self.root if path is None else path
        return self.store.uri(str(path)) if self.store else str(path)

    @property
    def num_items(self) -> int:
        return int(self.manifest["counts"]["items"])

    @property
    def items_path(self) -> str:
        return str(self.root / next((f["path"] for f in self.manifest["files"] if f["split"] == "items"),
                                    "items.parquet"))

    def files(self, split: str) -> list[str]:
        return [str(self.root / f["path"]) for f in self.manifest["files"] if f["split"] == split]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


CHECKSUMS = "checksums.json"


def write_checksums(folder: str | Path, names: list[str], listing: str = CHECKSUMS) -> None:
    """`checksums.json` (or `listing`) beside the files it names (paths relative to `folder`): {name: {bytes,
    sha256}}, written last and atomically, so a folder whose checksums exist was complete when they were taken."""
    folder = Path(folder)
    atomic_write_json(folder / listing, {n: {"bytes": (folder / n).stat().st_size, "sha256": sha256_file(folder / n)}
                                         for n in names})


def verify_checksums(folder: str | Path, error=ValueError, listing: str = CHECKSUMS,
                     store: Store | None = None, hashes: bool = True) -> bool:
    """Raise `error` naming the first file whose size or sha256 differs from `checksums.json` (or `listing`):
    truncated, bit-flipped or missing. False when the folder has no such listing (written before genrec kept it).
    `folder`: a path in `store`'s filesystem (default the local disk). hashes=False checks sizes only (no file is
    read: cheap on an object store, and enough to tell a write cut short)."""
    store = store or local_store()
    if not store.remote:
        folder = os.path.abspath(folder)  # pyarrow's local filesystem takes absolute paths only
    listed_in = f"{folder}/{listing}"
    if not store.is_file(listed_in):
        return False
    try:
        wanted = json.loads(store.read_text(listed_in))
    except ValueError:  # a listing cut short (a failed upload): the folder cannot be trusted
        raise error(f"{store.uri(listed_in)}: not readable JSON (written only in part)") from None
    for name, want in wanted.items():
        relative_inside(name, store.uri(listed_in), error)
        _check_file(f"{folder}/{name}", want.get("bytes"), want["sha256"] if hashes else None, store.uri(listed_in),
                    error, store)
    return True


def _check_file(path: Path, size: int | None, sha: str | None, listed_in: Path | str, error,
                store: Store | None = None) -> None:
    """`path` (in `store`'s filesystem; default the local disk) against its listed size and sha256."""
    store = store or local_store()
    shown, have = store.uri(str(path)), store.size(str(path))
    if have is None:
        raise error(f"{shown}: listed in {listed_in} but missing")
    if size is not None and have != size:
        raise error(f"{shown}: {have:,} bytes, {listed_in} says {size:,} (truncated or overwritten)")
    if sha is not None and store.sha256(str(path)) != sha:
        raise error(f"{shown}: its sha256 differs from the one in {listed_in} (corrupted)")


def resolve_cutoff(timestamps: np.ndarray, cutoff_ts: int | None, quantile: float | None) -> int | None:
    """A fixed time, else numpy's "higher" quantile of every timestamp (None when neither is given)."""
    if cutoff_ts is not None:
        return int(cutoff_ts)
    if quantile is None:
        return None
    return int(np.quantile(timestamps, quantile, method="higher"))


def check_cutoffs(cutoff: int, valid_cutoff: int | None) -> None:
    """A validation window must end where the test window starts and hold some time."""
    if valid_cutoff is not None and valid_cutoff >= cutoff:
        raise ShardError(f"the validation window would start at {valid_cutoff}, not before the cutoff {cutoff}: "
                         "lower data.valid_quantile (or data.valid_cutoff_ts), or raise data.cutoff_quantile "
                         "(data.cutoff_ts)")


def _lists(values: np.ndarray, offsets: np.ndarray, type_: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, type_))


def _user_rows(users, items, ts, actions, utils, keep: np.ndarray, row_users: np.ndarray | None = None) -> pa.Table:
    """Group sorted events (by user ascending, then time) into one row per user, keeping only events where `keep`.
    With `row_users` (ascending): one row for each of those users instead, empty where none of its events is kept."""
    if row_users is not None:
        keep = keep & np.isin(users, row_users)
    u, it, t, a, w = users[keep], items[keep], ts[keep], actions[keep], utils[keep]
    if row_users is not None:
        starts = np.searchsorted(u, row_users, side="left")
        ids = np.asarray(row_users, np.int64)
    else:
        starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if u.size else np.zeros(0, dtype=np.int64)
        ids = u[starts]
    offsets = np.r_[starts, u.size].astype(np.int32)
    return pa.table({
        "user_id": pa.array(ids, pa.int64()),
        "items": _lists(it, offsets, pa.int32()),
        "ts": _lists(t, offsets, pa.int64()),
        "actions": _lists(a, offsets, pa.int8()),
        "utils": _lists(w, offsets, pa.float32()),
    })


def _eval_rows(hist: pa.Table, targets: pa.Table) -> pa.Table:
    """History rows and target rows of the same users, in the same (user) order, as one evaluation table."""
    return pa.table({
        "user_id": hist.column("user_id"),
        "items": hist.column("items"), "ts": hist.column("ts"), "actions": hist.column("actions"),
        "utils": hist.column("utils"), "targets": targets.column("items"), "target_ts": targets.column("ts"),
        "target_actions": targets.column("actions"), "target_utils": targets.column("utils"),
    })


SPLITS = ("time", "leave_one_out")


def split_sequences(ds: Dataset, cutoff: int | None, min_train_events: int = 2, split: str = "time",
                    valid_cutoff: int | None = None):
    """-> (vocab table, train rows, eval rows, stats). Pure: no I/O, so it is unit-tested directly.

    The validation rows come through :func:`split_tables`."""
    vocab, tables, stats = split_tables(ds, cutoff, min_train_events, split, valid_cutoff)
    return vocab, tables["train"], tables["eval"], stats


def split_tables(ds: Dataset, cutoff: int | None, min_train_events: int = 2, split: str = "time",
                 valid_cutoff: int | None = None):
    """-> (vocab table, {split name: rows} in writing order, stats): "train", "valid" (leave_one_out, or a time
    split given a valid_cutoff) and "eval". `cutoff` and `valid_cutoff` are used by the time split only
    (leave_one_out ignores them; None is fine); a time split without valid_cutoff has no validation rows and trains
    up to the cutoff."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    if split == "time" and cutoff is None:
        raise ValueError("the time split needs a cutoff (see resolve_cutoff)")
    if split == "time":
        check_cutoffs(cutoff, valid_cutoff)
    ds = with_tag_text(ds, tags_before(ds, split, cutoff, valid_cutoff))
    items = ds.items.sort_by("item_id")
    item_ids = items.column("item_id").to_numpy()
    vocab = items.append_column("index", pa.array(np.arange(1, len(item_ids) + 1), pa.int32()))

    ev = ds.events.sort_by([("user_id", "ascending"), ("timestamp", "ascending")])
    raw_items = ev.column("item_id").to_numpy()
    idx = np.searchsorted(item_ids, raw_items).astype(np.int32) + 1  # validated: every event's item is known
    tables, counts, seen, target_counts = split_sorted(
        ev.column("user_id").to_numpy(), idx, ev.column("timestamp").to_numpy(),
        ev.column("action").to_numpy().astype(np.int8), ev.column("utility").to_numpy().astype(np.float32),
        len(item_ids), cutoff, min_train_events, split, valid_cutoff)
    stats = {**split_stats(split, cutoff, valid_cutoff), "items": int(len(item_ids)), **counts,
             **cold_stats(split, seen, train_end(split, cutoff, valid_cutoff), target_counts)}
    return vocab, tables, stats


def tags_before(ds: Dataset, split: str, cutoff: int | None, valid_cutoff: int | None) -> int | None:
    """The time before which tags may describe titles: where training ends. A time split's training window ends at
    its validation cutoff; leave-one-out's just after its last training event (the time of the latest event no user
    holds out). None when the dataset has no tags."""
    if ds.tags is None:
        return None
    if split == "time":
        return train_end(split, cutoff, valid_cutoff)
    users = ds.events.column("user_id").to_numpy()
    ts = ds.events.column("timestamp").to_numpy()  # validate() sorted them by (user, time)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, users.size])
    last_trained = np.where(counts >= 3, starts + counts - 3, starts + counts - 1)  # index of each user's last one
    return int(ts[last_trained].max()) + 1


def train_end(split: str, cutoff: int | None, valid_cutoff: int | None) -> int | None:
    """Where a time split's training events end: the validation cutoff, else the cutoff (None: leave_one_out)."""
    if split != "time":
        return None
    return int(valid_cutoff if valid_cutoff is not None else cutoff)


def split_stats(split: str, cutoff: int | None, valid_cutoff: int | None) -> dict:
    """The manifest's record of how events were held out."""
    time_split = split == "time"
    return {"split": split, "cutoff": int(cutoff) if time_split else None,
            "valid_cutoff": int(valid_cutoff) if time_split and valid_cutoff is not None else None}


def split_sorted(users, idx, ts, actions, utils, num_items: int, cutoff: int | None, min_train_events: int,
                 split: str, valid_cutoff: int | None = None):
    """The split of events sorted by (user, time), with item indices -> ({split name: rows}, counts, seen,
    target_counts). Shared by the in-memory build and the partitioned one (genrec.partitioned_build), which calls it once per
    user partition and adds up the counts. `seen` is what cold start is decided from once every partition is in:
    each title's first event time (time split; merged by minimum) or whether it is in a training row
    (leave_one_out; merged by or); target_counts: {"eval": evaluation targets per title, "valid": validation
    targets per title} (merged by sum)."""
    if split == "leave_one_out":
        return _leave_one_out(users, idx, ts, actions, utils, num_items, min_train_events)
    end = cutoff if valid_cutoff is None else valid_cutoff
    trained = ts < end
    train_all = _user_rows(users, idx, ts, actions, utils, trained)
    lengths = pc.list_value_length(train_all.column("items")).to_numpy()
    train = train_all.filter(pa.array(lengths >= min_train_events))
    before = ts < cutoff
    tables = {"train": train}
    if valid_cutoff is not None:
        tables["valid"] = _history_and_targets(users, idx, ts, actions, utils, trained, before & ~trained)
    tables["eval"] = _history_and_targets(users, idx, ts, actions, utils, before, ~before)

    first_seen = np.full(num_items + 1, np.iinfo(np.int64).max)
    np.minimum.at(first_seen, idx, ts)
    counts = {
        "users": int(np.unique(users).size),
        "events": int(len(users)),
        "train_events": int(trained.sum()),
        "train_users": train.num_rows,
        **({"valid_events": int((before & ~trained).sum()), "valid_users": tables["valid"].num_rows,
            "valid_new_users": _new_users(tables["valid"])} if valid_cutoff is not None else {}),
        "eval_events": int((~before).sum()),
        "eval_users": tables["eval"].num_rows,
        "eval_new_users": _new_users(tables["eval"]),
    }
    return (tables, counts, first_seen,
            {"eval": np.bincount(idx[~before], minlength=num_items + 1),
             "valid": np.bincount(idx[before & ~trained], minlength=num_items + 1)})


def _history_and_targets(users, idx, ts, actions, utils, history: np.ndarray, targets: np.ndarray) -> pa.Table:
    """Evaluation-schema rows of every user with `targets` events: the user's `history` events (none for a user new
    in the window: its requests then read its own earlier events in the window, genrec.tasks), then the targets."""
    after = _user_rows(users, idx, ts, actions, utils, targets)
    hist = _user_rows(users, idx, ts, actions, utils, history, row_users=after.column("user_id").to_numpy())
    return _eval_rows(hist, after)


def _flat(rows: pa.Table, cols: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """A table's list columns `cols` (one list per user row) as flat arrays, with each event's user_id first."""
    lengths = pc.list_value_length(rows.column(cols[0])).fill_null(0).to_numpy()
    users = np.repeat(rows.column("user_id").to_numpy(), lengths)
    return (users, *(pc.list_flatten(rows.column(c)).to_numpy() for c in cols))


def shifted_window_rows(train: pa.Table, valid: pa.Table, start: int, end: int) -> pa.Table:
    """Evaluation-schema rows of a validation window moved back in time to [start, end), from a time split's training
    rows (events before the validation cutoff) and validation rows (history, then the window's events): every user
    with an event in [start, end), its events before `start` as history, the window's as targets; later events are
    not read. What a retrain whose training window ends at `start` is validated on. A user with fewer training events
    than data.min_train_events and none in the shared window has no row here (at the default of 2 such a user has no
    request: a new member's first session is its context)."""
    hist = _flat(valid, ("items", "ts", "actions", "utils"))
    later = _flat(valid, ("targets", "target_ts", "target_actions", "target_utils"))
    # The training rows of users with no validation row and an event in the moved window (their last is in it):
    # only those are flattened, not the whole training split.
    ts = train.column("ts").combine_chunks()
    offsets, values = ts.offsets.to_numpy(), ts.values.to_numpy()
    last = np.full(len(ts), np.iinfo(np.int64).min)
    filled = offsets[1:] > offsets[:-1]
    last[filled] = values[offsets[1:][filled] - 1]
    alone = train.filter(pa.array((last >= start)
                                  & ~np.isin(train.column("user_id").to_numpy(), valid.column("user_id").to_numpy())))
    rest = _flat(alone, ("items", "ts", "actions", "utils"))
    users, items, ts, actions, utils = (np.concatenate(parts) for parts in zip(hist, later, rest))
    order = np.lexsort((ts, users))  # stable: equal times keep their order in the row
    users, items, ts, actions, utils = (a[order] for a in (users, items, ts, actions, utils))
    return _history_and_targets(users, items.astype(np.int32), ts.astype(np.int64), actions.astype(np.int8),
                                utils.astype(np.float32), ts < start, (ts >= start) & (ts < end))


def _new_users(rows: pa.Table) -> int:
    """Evaluation rows of users new in the window (no event before it)."""
    return int((pc.list_value_length(rows.column("items")).to_numpy() == 0).sum())


def cold_stats(split: str, seen: np.ndarray, end: int | None, target_counts: dict[str, np.ndarray]) -> dict:
    """Cold-start titles: no training event, i.e. first seen at or after the training end `end` (time split), or in
    no training row (leave_one_out, including titles with no events at all, as the time split counts them). Their
    share of validation targets (`cold_start_valid_share`: measured before the test window, so it may set the
    collaborative-embedding masking rate) and of evaluation targets (`cold_start_eval_share`, reported only)."""
    cold = seen >= end if split == "time" else ~seen

    def share(counts: np.ndarray) -> float:
        total = int(counts.sum())
        return float(counts[cold].sum() / total) if total else 0.0

    return {"cold_start_items": int(cold[1:].sum()), "cold_start_eval_share": share(target_counts["eval"]),
            "cold_start_valid_share": share(target_counts["valid"])}


def _leave_one_out(users, idx, ts, actions, utils, num_items: int, min_train_events: int):
    """Leave-one-out over events already sorted by (user, timestamp) -> ({split: rows}, counts, seen, eval_counts).

    "Last" follows that sort order, which is stable: events of one user in the same second keep the order the
    loader gave them (file order, which validate() also keeps), so of several same-second final events the one
    listed last in the source is the test target."""
    n = users.size
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if n else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, n])
    per_event_count = np.repeat(counts, counts)
    from_end = per_event_count - 1 - (np.arange(n) - np.repeat(starts, counts))  # 0 = the user's last event
    evaluated = per_event_count >= 3
    test_ev = evaluated & (from_end == 0)
    valid_ev = evaluated & (from_end == 1)
    train_ev = ~(test_ev | valid_ev)

    def rows(keep):
        return _user_rows(users, idx, ts, actions, utils, keep)

    train_all = rows(train_ev)
    lengths = pc.list_value_length(train_all.column("items")).to_numpy()
    train = train_all.filter(pa.array(lengths >= min_train_events))
    # Every evaluated user has 1+ history events before each target, so the history and target tables hold the
    # same users in the same order and line up row by row.
    eval_rows = _eval_rows(rows(evaluated & (from_end >= 1)), rows(test_ev))
    valid_rows = _eval_rows(rows(evaluated & (from_end >= 2)), rows(valid_ev))

    seen = np.zeros(num_items + 1, bool)
    seen[train.column("items").combine_chunks().flatten().to_numpy()] = True
    stats = {
        "users": int(starts.size),
        "events": int(n),
        "train_events": int(train_ev.sum()),
        "train_users": train.num_rows,
        "eval_events": int(test_ev.sum()),
        "eval_users": eval_rows.num_rows,
        "valid_events": int(valid_ev.sum()),
        "valid_users": valid_rows.num_rows,
    }
    return ({"train": train, "valid": valid_rows, "eval": eval_rows}, stats, seen,
            {"eval": np.bincount(idx[test_ev], minlength=num_items + 1),
             "valid": np.bincount(idx[valid_ev], minlength=num_items + 1)})


def write_shards(ds: Dataset, out_dir: str | Path, cutoff: int | None, min_train_events: int = 2,
                 users_per_shard: int = 20_000, extra: dict | None = None, split: str = "time",
                 valid_cutoff: int | None = None) -> ShardSet:
    """Split, write every file into a temporary sibling folder, then swap it into place.

    `split` is "time" (needs `cutoff`; `valid_cutoff` adds a validation window before it) or "leave_one_out"
    (ignores both). `extra` is merged into the manifest (e.g. the data config the shards were built from)."""
    out_dir = Path(out_dir).resolve()
    vocab, tables, stats = split_tables(ds, cutoff, min_train_events, split, valid_cutoff)
    if tables["train"].num_rows == 0:
        raise no_training_rows(ds.name, split, min_train_events, train_end(split, cutoff, valid_cutoff))
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        files = [write_part(tmp, vocab, "items.parquet", "items")]
        for name, table in tables.items():
            for i, start in enumerate(range(0, max(table.num_rows, 1), users_per_shard)):
                files.append(write_part(tmp, table.slice(start, users_per_shard), f"{name}/part-{i:05d}.parquet", name))
        finish_shards(tmp, out_dir, ds.name, stats, files, extra)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_shards(out_dir)


def no_training_rows(name: str, split: str, min_train_events: int, end: int | None) -> ShardError:
    """`end`: where training events end (the validation cutoff of a time split)."""
    if split == "leave_one_out":
        return ShardError(f"{name}: leave-one-out left no training row (no user has {min_train_events}+ "
                          "events before their last two); lower data.min_train_events or use data.split: time")
    return ShardError(f"{name}: no user has {min_train_events}+ events before {end}, where training ends (the "
                      "validation window's start); move it later (data.valid_quantile / data.valid_cutoff_ts, and "
                      "data.cutoff_quantile / data.cutoff_ts after it)")


def write_part(folder: Path, table: pa.Table, rel: str, split: str) -> dict:
    """One shard file under `folder` and its manifest entry (rows, bytes, sha256)."""
    path = Path(folder, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    return {"path": rel, "split": split, "rows": table.num_rows, "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def finish_shards(tmp: Path, out_dir: Path, dataset: str, stats: dict, files: list[dict],
                  extra: dict | None = None) -> None:
    """Write the manifest of a complete temporary shard folder and swap it into place."""
    manifest = {"schema_version": SCHEMA_VERSION, "dataset": dataset, "created_at": time.time(),
                "counts": stats, "files": files, **(extra or {})}
    atomic_write_json(tmp / MANIFEST, manifest)
    _swap_into_place(tmp, out_dir)


def _swap_into_place(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.rename(tmp, final)
        return
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(final, old)  # the window between the two renames has no manifest at `final`: readers retry or fail
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def open_shards(root: str | Path, store: Store | None = None) -> ShardSet:
    """The shard set at `root`: a local folder, or (with a remote `store`) a folder in the store's filesystem.
    Every file's size is checked against the manifest (cheap enough for every worker that opens the set)."""
    if store is not None and not store.remote:
        store = None
    root = PurePosixPath(str(root)) if store else Path(root)
    shards = ShardSet(root, {}, store)
    mpath = str(root / MANIFEST)
    try:
        text = _read(shards, mpath)
    except FileNotFoundError:
        raise ShardError(f"{shards.uri(mpath)}: no shard manifest; build shards first "
                         "(`genrec data prepare --config ...`)") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ShardError(f"{shards.uri(mpath)}: manifest is not valid JSON ({exc}); rebuild the shards") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ShardError(f"{shards.uri(mpath)}: schema_version {manifest.get('schema_version')!r}, this genrec reads "
                         f"{SCHEMA_VERSION}; rebuild the shards")
    for f in manifest.get("files", []):  # a ShardError: data preparation rebuilds such a set from the source data
        relative_inside(f.get("path", ""), shards.uri(mpath), ShardError)
    shards = ShardSet(root, manifest, store)
    _check_files(shards, sha=False)
    return shards


def verify_shards(shards: ShardSet) -> None:
    """Every file against its sha256 in the manifest (a flipped byte keeps the size): ShardError naming the file."""
    _check_files(shards, sha=True)


def _read(shards: ShardSet, path: str) -> str:
    if shards.store:
        if not shards.store.is_file(path):
            raise FileNotFoundError(path)
        return shards.store.read_text(path)
    return Path(path).read_text()


def _check_files(shards: ShardSet, sha: bool) -> None:
    listed_in = shards.uri(shards.root / MANIFEST)
    for f in shards.manifest["files"]:
        try:
            _check_file(shards.root / f["path"], f.get("bytes"), f.get("sha256") if sha else None, listed_in,
                        ShardError, shards.store)
        except ShardError as exc:
            raise ShardError(f"{exc}; rebuild the shards (--rebuild-shards)") from None


def publish_shards(local: ShardSet, store: "Store", root: str) -> ShardSet:
    """Copy a complete local shard set to `root` in a remote store, atomically for readers.

    An object store cannot rename a folder, so the files go under a fresh version folder (root/v-<time>-<id>/) and
    the manifest, whose file paths name that folder, is written last in one PUT: a reader sees the old set or the
    new one, whole. Older version folders are deleted afterwards (a reader still inside one fails on a missing file,
    naming it, as a reader of a local set does during its swap)."""
    version = f"v-{time.time_ns()}-{uuid.uuid4().hex[:8]}"
    store.ensure_root()
    for f in local.manifest["files"]:
        with open(local.root / f["path"], "rb") as src, \
                store.fs.open_output_stream(f"{root}/{version}/{f['path']}") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    manifest = {**local.manifest, "version": version,
                "files": [{**f, "path": f"{version}/{f['path']}"} for f in local.manifest["files"]]}
    store.write_json(f"{root}/{MANIFEST}", manifest)
    # Older versions go, only while the manifest still names this one: a publisher that lost a race to a newer
    # one must not delete the set that is live now. Version names sort by time.
    if json.loads(store.read_text(f"{root}/{MANIFEST}")).get("version") == version:
        for entry in store.list(root):
            if entry.type == pafs.FileType.Directory and entry.base_name.startswith("v-") and \
                    entry.base_name < version:
                store.delete_dir(entry.path)
    return open_shards(root, store)
