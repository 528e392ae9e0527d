"""What a recommender replica does, without Ray: rank a catalogue for a history or for a user's cached state, grow the
catalogue while serving, keep per-user state. `serving/app.py` wires these into Ray Serve.

* :class:`Ranker`: one loaded checkpoint with its catalogue (item ids <-> indices, titles, genres, launch times, the
  output embedding matrix), batched history encoding and scoring, candidate filters.
* :class:`UserState` and :meth:`Ranker.extend_state`: the paper's cached serving. A user's encoded state (the decoding
  head's query and each block's keys/values) is kept, and new events are encoded on top of it without re-encoding the
  history; the answer equals a full recompute while the history fits the model's window (tested to 1e-5).
* Catalogue updates: titles added while serving are written as one Parquet file per update under storage
  (:func:`write_titles`, atomic), and every replica applies the files it has not seen (:meth:`Ranker.sync_titles`), so
  an added title survives restarts and reaches every replica.
"""

from __future__ import annotations

import io
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from genrec.checkpoint import LoadedModel
from genrec.data.schema import ITEM_SCHEMA
from genrec.storage import Store, local_store
from genrec.windows import context_window, gap_buckets

UPDATE_SUFFIX = ".parquet"


@dataclass
class Events:
    """A user's events resolved against one catalogue: indices, Unix seconds, actions, utilities."""
    items: list[int]
    ts: list[int | None]
    actions: list[int]
    utils: list[float]

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class UserState:
    """A user's encoded history for one checkpoint: what a request by user id is scored from."""
    version: int  # how many events (ever appended to the user) this state encodes
    query: torch.Tensor  # (out_dim,) the decoding head's output after the last event
    cache: list | None  # per block (keys, values) of the encoded window; None when the window is full
    tokens: int  # events in the encoded window
    last_ts: int
    seen: set[int] = field(default_factory=set)  # indices of titles in the history (excluded from rankings)
    updated_at: float = field(default_factory=time.time)


class Ranker:
    def __init__(self, loaded: LoadedModel, name: str):
        self.loaded, self.name = loaded, name
        self.model, self.spec = loaded.model, loaded.spec
        self.applied: set[str] = set()  # catalogue update files already applied
        self.polled_at = 0.0  # when the serving replica last looked for catalogue updates (time.monotonic)
        self._index()

    def _index(self) -> None:
        items = self.loaded.items
        ids = items.column("item_id").to_numpy()
        index = items.column("index").to_numpy()
        self.index_of = dict(zip(ids.tolist(), index.tolist()))
        size = int(index.max()) + 1
        self.id_at = np.zeros(size, dtype=np.int64)
        self.id_at[index] = ids
        self.title_at = [""] * size
        for i, t in zip(index.tolist(), items.column("title").to_pylist()):
            self.title_at[i] = t or ""
        # Per genre, the indices of its titles (built once per catalogue): a request's genre filter then costs the
        # size of the genres it names, not a Python loop over the whole catalogue.
        members: dict[str, list[int]] = {}
        for i, g in zip(index.tolist(), items.column("genres").to_pylist()):
            for name in set(g or ()):
                members.setdefault(name, []).append(i)
        self.titles_of_genre = {name: torch.tensor(ix, dtype=torch.long) for name, ix in members.items()}
        self.launch = torch.from_numpy(np.asarray(self.model.items.f_launch.cpu()))
        with torch.no_grad():  # the catalogue's output embeddings do not depend on the request: computed once
            self.item_matrix = self.model.item_matrix()

    @property
    def size(self) -> int:
        return len(self.index_of)

    # -- catalogue -----------------------------------------------------------------------------------------------
    def add_titles(self, table: pa.Table) -> list[int]:
        """Add the titles not already in the catalogue (a replica can meet an update twice); returns their ids."""
        new = [i not in self.index_of for i in table.column("item_id").to_pylist()]
        table = table.filter(pa.array(new))
        if table.num_rows:
            self.loaded.add_items(table)
            self._index()
        return table.column("item_id").to_pylist()

    def sync_titles(self, folder: str | Path | None, store: Store | None = None) -> int:
        """Apply the catalogue updates under folder (local, or a path in a URI storage's `store`) this ranker has
        not applied yet (in file-name order)."""
        added = 0
        for name in list_updates(folder, store):
            if name not in self.applied:
                fs = store.fs if store is not None else None
                added += len(self.add_titles(pq.read_table(f"{folder}/{name}", filesystem=fs)))
                self.applied.add(name)
        return added

    # -- encoding ------------------------------------------------------------------------------------------------
    def resolve(self, history: list[dict]) -> tuple[Events, list[int]]:
        """Catalogue indices of a history's titles; unknown item ids are left out and returned sorted."""
        known = [e for e in history if e["item_id"] in self.index_of]
        unknown = sorted({e["item_id"] for e in history if e["item_id"] not in self.index_of})
        return Events([self.index_of[e["item_id"]] for e in known], [e.get("timestamp") for e in known],
                      [e.get("action", 0) for e in known], [e.get("utility", 1.0) for e in known]), unknown

    def window(self, ev: Events):
        """The model inputs (1, max_seq_len) of a history's last window and its real length."""
        # Missing timestamps count as back-to-back events (gap bucket of a zero gap).
        ts = np.zeros(len(ev), np.int64) if any(t is None for t in ev.ts) else np.asarray(ev.ts, np.int64)
        x_items, x_actions, x_gaps, x_utils, x_ts, n = context_window(ev.items, ts, ev.actions,
                                                                      self.spec.max_seq_len, ev.utils)
        return tuple(torch.from_numpy(a)[None] for a in (x_items, x_actions, x_gaps, x_utils, x_ts)), n

    @torch.no_grad()
    def queries(self, windows: list[tuple]) -> torch.Tensor:
        """Decoding-head queries (B, out_dim) for windows from :meth:`window`, in one forward pass."""
        lengths = torch.tensor([w[1] for w in windows])
        # Right padding past the longest history changes nothing (causal attention, positions from 0) but costs a
        # full max_seq_len forward: a 50-event history under max_seq_len 256 would pay 5x.
        span = int(lengths.max())
        x = [torch.cat([w[0][j][:, :span] for w in windows]) for j in range(5)]
        h = self.model.hidden(*x[:4], ts=x[4])
        return self.model.head(h[torch.arange(len(windows)), lengths - 1])

    @torch.no_grad()
    def scores(self, queries: torch.Tensor, request_ts: list[int]) -> torch.Tensor:
        return self.model.score_queries(queries, self.item_matrix, torch.tensor(request_ts, dtype=torch.long))

    # -- cached user state ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_state(self, ev: Events, version: int) -> UserState:
        """A user's state from the whole history: the last window encoded with its key/value cache."""
        (items, actions, gaps, utils, ts), n = self.window(ev)
        q, cache = self.model.encode_step(items[:, :n], actions[:, :n], gaps[:, :n], utils[:, :n], ts=ts[:, :n])
        last = ev.ts[-1] if ev.ts and ev.ts[-1] is not None else 0
        return UserState(version, q[0], cache if n < self.spec.max_seq_len else None, n, last, set(ev.items))

    @torch.no_grad()
    def extend_state(self, state: UserState, new: Events, version: int) -> UserState | None:
        """The state after `new` events, encoded on top of the cache; None when it cannot be (the window would
        slide, or the state has no cache): the caller re-encodes the whole history."""
        if not len(new):
            return UserState(version, state.query, state.cache, state.tokens, state.last_ts, state.seen)
        if state.cache is None or state.tokens + len(new) > self.spec.max_seq_len or any(t is None for t in new.ts):
            return None
        ts = np.asarray([state.last_ts, *new.ts], np.int64)
        gaps = gap_buckets(ts)[1:].astype(np.int64)  # the first new event's gap is to the last cached one
        t = lambda a, dt: torch.as_tensor(np.asarray(a), dtype=dt)[None]  # noqa: E731
        q, cache = self.model.encode_step(t(new.items, torch.long), t(np.clip(new.actions, 0, None), torch.long),
                                          t(gaps, torch.long), t(new.utils, torch.float32), state.cache,
                                          ts=t(new.ts, torch.long))
        n = state.tokens + len(new)
        return UserState(version, q[0], cache if n < self.spec.max_seq_len else None, n, int(new.ts[-1]),
                         state.seen | set(new.items))

    # -- ranking -------------------------------------------------------------------------------------------------
    def candidates(self, genres: list[str] | None = None, launched_after: int | None = None,
                   launched_before: int | None = None) -> torch.Tensor | None:
        """Which titles may be recommended (bool over indices), or None for all of them."""
        if not genres and launched_after is None and launched_before is None:
            return None
        ok = torch.ones(len(self.title_at), dtype=torch.bool)
        if genres:
            in_genre = torch.zeros_like(ok)
            for name in set(genres):  # unknown genres select nothing
                if name in self.titles_of_genre:
                    in_genre[self.titles_of_genre[name]] = True
            ok &= in_genre
        launch = self.launch[:len(ok)]
        known_launch = launch != torch.iinfo(torch.long).max
        if launched_after is not None:
            ok &= known_launch & (launch >= launched_after)
        if launched_before is not None:
            ok &= known_launch & (launch < launched_before)
        return ok

    def top(self, scores: torch.Tensor, k: int, exclude: set[int], allowed: torch.Tensor | None) -> list[dict]:
        """The k best titles of one score row, leaving out `exclude` (indices) and titles not `allowed`."""
        scores = scores.clone()
        if exclude:
            scores[torch.tensor(sorted(exclude))] = float("-inf")
        if allowed is not None:
            scores[~allowed[:len(scores)]] = float("-inf")
        k = min(k, int(torch.isfinite(scores).sum()))
        top = torch.topk(scores, k)
        return [{"item_id": int(self.id_at[i]), "title": self.title_at[i], "score": float(s)}
                for s, i in zip(top.values.tolist(), top.indices.tolist())]


def titles_table(rows: list[dict], now: int | None = None) -> pa.Table:
    """New titles as an item table (:data:`ITEM_SCHEMA`). A title without launch_ts launches when it is added: fixed
    here, once, so every replica that applies the update scores the title at the same age. (One second back: a title
    counts as launched strictly before a request, and one sent in the same second must already be on offer.)"""
    now = int(time.time()) - 1 if now is None else now
    cols = {f.name: [r.get(f.name) for r in rows] for f in ITEM_SCHEMA}
    cols["launch_ts"] = [now if t is None else t for t in cols["launch_ts"]]
    cols["text"] = [t or "" for t in cols["text"]]
    cols["title"] = [t or "" for t in cols["title"]]
    cols["genres"] = [g or [] for g in cols["genres"]]
    return pa.table(cols, schema=ITEM_SCHEMA)


def write_titles(folder: str | Path, table: pa.Table, store: Store | None = None) -> str:
    """Write one catalogue update atomically (Store.write_bytes: a temporary file renamed into place, or one PUT on
    a URI storage's `store`; default the local disk); returns its file name. Names sort in time order and never
    collide, so concurrent replicas cannot overwrite each other's updates."""
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{UPDATE_SUFFIX}"
    buf = io.BytesIO()
    pq.write_table(table, buf)
    (store or local_store()).write_bytes(f"{folder}/{name}", buf.getvalue())
    return name


def list_updates(folder: str | Path | None, store: Store | None = None) -> list[str]:
    """Catalogue update files under folder, oldest first (temporary files of unfinished writes are skipped)."""
    if folder is None:
        return []
    return sorted(e.base_name for e in (store or local_store()).list(str(folder))
                  if e.base_name.endswith(UPDATE_SUFFIX) and not e.base_name.startswith("."))
