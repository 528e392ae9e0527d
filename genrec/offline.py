"""Top-k lists for many users at once, as offline candidate generation does: `genrec recommend`.

Each user's **context** is their events at or before the request time `at` (by default the data's last timestamp), or,
with `context="training"`, only the events the model trained on (before the training window's end: the time split's
validation cutoff; leave-one-out's held-out last two events left out). Every user is ranked at `at`, by the Serve
app's own ranker (genrec.recommend.Ranker): the same window of the last events, scores at the request time (title
age), the context's titles excluded, the same candidate filters. A user none of whose titles the model knows gets an
empty list.

Users travel through Ray Data in blocks; an actor pool scores them, each actor holding the checkpoint (loaded once).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data
import torch

from genrec.checkpoint import CheckpointError, load_last_good
from genrec.config import GenrecConfig
from genrec.data.schema import DataError
from genrec.recommend import Ranker
from genrec.storage import Store

USERS_PER_BLOCK = 256


@dataclass(frozen=True)
class ListSpec:
    """What every list is: its length, the request time, whether the context's titles are left out, and the Serve
    app's candidate filters (genres, launch window)."""

    k: int
    at: int
    exclude_seen: bool = True
    genres: tuple[str, ...] = ()
    launched_after: int | None = None
    launched_before: int | None = None


def user_contexts(events: pa.Table, at: int, until: int | None = None, users: np.ndarray | None = None,
                  leave_one_out: bool = False) -> pa.Table:
    """One row per user (ascending user_id): their events at or before `at` (and before `until` when given) as lists
    item_ids, ts, actions, utils, oldest first (equal times keep the events' order). `leave_one_out`: never the last
    two events of a user who has 3 or more in the whole log (leave-one-out's test and validation targets, never
    trained on), whatever `at` is. `users`: only these, in that order (a user without such events gets empty lists)."""
    ts_all = events.column("timestamp").to_numpy()
    user_all = events.column("user_id").to_numpy()
    order = np.lexsort((np.arange(len(user_all)), ts_all, user_all))  # by user, then time, then file order
    user, ts = user_all[order], ts_all[order]
    keep = ts <= at if until is None else (ts <= at) & (ts < until)
    if leave_one_out:  # each event's position from its user's end, over the whole log
        first = np.r_[True, user[1:] != user[:-1]] if len(user) else np.zeros(0, bool)
        starts_all = np.flatnonzero(first)
        counts = np.diff(np.r_[starts_all, len(user)])
        from_end = np.repeat(starts_all + counts, counts) - np.arange(len(user))  # 1 for a user's last event
        keep &= ~((np.repeat(counts, counts) >= 3) & (from_end <= 2))
    user, ts = user[keep], ts[keep]
    cols = {name: events.column(name).to_numpy()[order][keep] for name in ("item_id", "action", "utility")}
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]) if len(user) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(user)].astype(np.int64)
    ids = user[starts]
    if users is not None:  # each asked-for user's range, empty when they have no events
        row = {int(u): j for j, u in enumerate(ids)}
        picked = [row.get(int(u)) for u in users]
        starts = np.asarray([starts[j] if j is not None else 0 for j in picked], np.int64)
        ends = np.asarray([ends[j] if j is not None else 0 for j in picked], np.int64)
        ids = np.asarray(users, np.int64)
    take = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)] + [np.zeros(0, np.int64)])
    offsets = pa.array(np.r_[0, np.cumsum(ends - starts)].astype(np.int32), pa.int32())

    def lists(values: np.ndarray, type_: pa.DataType) -> pa.ListArray:
        return pa.ListArray.from_arrays(offsets, pa.array(values[take], type_))

    return pa.table({"user_id": pa.array(ids, pa.int64()), "item_ids": lists(cols["item_id"], pa.int64()),
                     "ts": lists(ts, pa.int64()), "actions": lists(cols["action"], pa.int64()),
                     "utils": lists(cols["utility"], pa.float32())})


class TopK:
    """A Ray Data actor: ranks blocks of user contexts with one checkpoint, as a Serve replica does: loaded through
    the storage (a URI root is copied to this node's cache and checked there), with the titles added live
    (`POST /titles`, under `catalogue`) applied."""

    def __init__(self, checkpoint: str, spec: ListSpec, threads: int, storage_root: str, storage_cache: str | None,
                 catalogue: str, allow_unverified: bool = False):
        torch.set_num_threads(threads)
        store = Store(storage_root, storage_cache)
        loaded, degraded = load_last_good(checkpoint, store=store, allow_unverified=allow_unverified)
        if degraded:  # a batch job must not quietly rank with another checkpoint than the one asked for
            raise CheckpointError(degraded)
        self.ranker = Ranker(loaded, checkpoint)
        self.ranker.sync_titles(catalogue, store)
        self.spec = spec
        self.allowed = self.ranker.candidates(list(spec.genres), spec.launched_after, spec.launched_before)

    def __call__(self, batch: dict) -> pa.Table:
        return rank_contexts(self.ranker, self.spec, self.allowed, batch)


def rank_contexts(ranker: Ranker, spec: ListSpec, allowed: torch.Tensor | None, batch: dict) -> pa.Table:
    """Each user's top-k of a block (columns of user_contexts), as the endpoint answers a history sent in full."""
    resolved = [ranker.resolve([{"item_id": int(i), "timestamp": int(t), "action": int(a), "utility": float(u)}
                                for i, t, a, u in zip(items, ts, actions, utils)])[0]
                for items, ts, actions, utils in zip(batch["item_ids"], batch["ts"], batch["actions"], batch["utils"])]
    scored = [j for j, ev in enumerate(resolved) if len(ev)]
    item_ids: list[list[int]] = [[] for _ in resolved]
    scores: list[list[float]] = [[] for _ in resolved]
    if scored:
        queries = ranker.queries([ranker.window(resolved[j]) for j in scored])
        for j, row in zip(scored, ranker.scores(queries, [spec.at] * len(scored))):
            top = ranker.top(row, spec.k, set(resolved[j].items) if spec.exclude_seen else set(), allowed)
            item_ids[j] = [t["item_id"] for t in top]
            scores[j] = [t["score"] for t in top]
    return pa.table({"user_id": pa.array(np.asarray(batch["user_id"], np.int64)),
                     "request_ts": pa.array(np.full(len(resolved), spec.at, np.int64)),
                     "context_events": pa.array([len(ev) for ev in resolved], pa.int64()),
                     "item_ids": pa.array(item_ids, pa.list_(pa.int64())),
                     "scores": pa.array(scores, pa.list_(pa.float32()))})


def recommend_all(contexts: pa.Table, cfg: GenrecConfig, checkpoint: str, spec: ListSpec, out: str,
                  actors: int = 1, cpus_per_actor: float = 1.0, filesystem=None) -> int:
    """Rank every row of `contexts` (user_contexts) through Ray Data with `actors` actors, each loading `checkpoint`
    (a path or URI in the config's storage) once, as the Serve app does; the lists are written as Parquet files under
    the folder `out` (in `filesystem`, a pyarrow filesystem, when given). Returns the users ranked."""
    blocks = [contexts.slice(a, USERS_PER_BLOCK) for a in range(0, contexts.num_rows, USERS_PER_BLOCK)]
    store = cfg.storage.store()
    ranked = ray.data.from_arrow(blocks or [contexts]).map_batches(TopK, fn_constructor_kwargs={
        "checkpoint": checkpoint, "spec": spec, "threads": max(1, int(cpus_per_actor)),
        "storage_root": cfg.storage.root, "storage_cache": cfg.storage.cache,
        "catalogue": store.path("catalogue", cfg.name),
        "allow_unverified": cfg.storage.allow_unverified_checkpoints}, batch_size=USERS_PER_BLOCK,
        batch_format="numpy", concurrency=actors, num_cpus=cpus_per_actor)
    ranked.write_parquet(out, filesystem=filesystem)
    return contexts.num_rows


def training_end(split: str, counts: dict) -> int | None:
    """The time a shard set's training events end before (its manifest's counts): the time split's validation
    cutoff (its cutoff without one); None for leave-one-out, whose end is per user (user_contexts)."""
    if split == "leave_one_out":
        return None
    end = counts.get("valid_cutoff") or counts.get("cutoff")
    return int(end) if end is not None else None


def last_timestamp(events: pa.Table) -> int:
    return int(pc.max(events.column("timestamp")).as_py())


def read_users(path: str) -> np.ndarray:
    """User ids to rank: a Parquet file's user_id column, or a text file with one id per line ('#' comments and
    blank lines skipped). DataError naming the file and line for anything else."""
    if path.endswith(".parquet"):
        table = pq.read_table(path)
        if "user_id" not in table.column_names:
            raise DataError(f"{path}: no user_id column (columns: {', '.join(table.column_names)})")
        return table.column("user_id").to_numpy().astype(np.int64)
    ids = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                ids.append(int(text))
            except ValueError:
                raise DataError(f"{path}, line {number}: {text!r} is not a user id (one integer per line)") from None
    return np.asarray(ids, np.int64)


def request_time(text: str) -> int:
    """--at: Unix seconds, or an ISO 8601 date or time (UTC unless it names a zone)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--at {text!r}: give Unix seconds or an ISO 8601 date/time, e.g. 2016-10-16 or "
                         "2016-10-16T18:00:00") from None
    return int((when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp())
