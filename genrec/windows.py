"""Fixed-length windows over per-user event sequences (pure numpy; used by Ray Data, evaluation and serving).

Layout: right-padded with item index 0. A training window holds `max_seq_len + 1` events so that inputs are
`w[:-1]` and next-event targets `w[1:]`; long sequences are cut from the end into windows that overlap by one event,
so every event is a target exactly once and the most recent history is always a full window.
"""

from __future__ import annotations

import numpy as np

# The event token's vocabularies (the model's embedding tables are this size). Here, not in genrec.model: Ray Data's
# windowing tasks import this module, and a new worker process that imports torch spends seconds doing it.
NUM_GAP_BUCKETS = 32  # bucket 0 = first event / padding; 1..31 = 1 + floor(log2(1 + gap seconds)), clipped
NUM_ACTIONS = 8


def gap_buckets(ts: np.ndarray) -> np.ndarray:
    """Log2 time-gap buckets of a 1-d array of Unix seconds; the first event gets bucket 0.

    bucket = 1 + floor(log2(1 + gap)), clipped to [1, NUM_GAP_BUCKETS - 1]: seconds apart -> 1..6, a day -> 17.
    """
    ts = np.asarray(ts, dtype=np.int64)
    if ts.size == 0:
        return np.zeros(0, dtype=np.int8)
    gaps = np.clip(np.diff(ts, prepend=ts[:1]), 0, None)
    b = 1 + np.floor(np.log2(1.0 + gaps)).astype(np.int64)
    b = np.clip(b, 1, NUM_GAP_BUCKETS - 1)
    b[0] = 0
    return b.astype(np.int8)


def window_bounds(n: int, max_seq_len: int) -> list[tuple[int, int]]:
    """[start, end) slices of a length-n sequence into training windows of up to max_seq_len + 1 events,
    cut from the end and overlapping by one event. Sequences shorter than 2 events give no window."""
    if n < 2:
        return []
    span = max_seq_len + 1
    bounds = []
    end = n
    while end >= 2:
        start = max(0, end - span)
        bounds.append((start, end))
        if start == 0:
            break
        end = start + 1  # the first event of this window is the last input of the previous one
    return bounds[::-1]


def in_window(ts: np.ndarray, ts_min: int | None, ts_max: int | None) -> np.ndarray:
    """Which events fall in the training window [ts_min, ts_max) (None = unbounded)."""
    keep = np.ones(len(ts), bool)
    if ts_min is not None:
        keep &= ts >= ts_min
    if ts_max is not None:
        keep &= ts < ts_max
    return keep


def window_count(ts: np.ndarray, max_seq_len: int, ts_min: int | None = None, ts_max: int | None = None,
                 targets_from: int | None = None) -> int:
    """How many windows training_windows cuts from one user's event times (sorted): ceil((n - 1) / max_seq_len) for
    the n events in [ts_min, ts_max); with targets_from, ceil(min(m, n - 1) / max_seq_len) for the m of them from
    then on (windows are cut from the end, so those holding a new target are the last ones)."""
    ts = np.asarray(ts, np.int64)
    ts = ts[in_window(ts, ts_min, ts_max)]
    targets = len(ts) - 1 if targets_from is None else min(int((ts >= targets_from).sum()), len(ts) - 1)
    return -(-max(targets, 0) // max_seq_len)


def training_windows(batch: dict[str, np.ndarray], max_seq_len: int, ts_min: int | None = None,
                     ts_max: int | None = None, targets_from: int | None = None) -> dict[str, np.ndarray]:
    """Ray Data `map_batches` UDF: a batch of user rows (list columns items/ts/actions/utils) -> a batch of windows.

    Output columns, each (n_windows, max_seq_len + 1): items, actions, gaps, utils, ts. The model reads the first
    max_seq_len events as inputs and the events after each position as its (multi-token) targets. Events outside
    the training window [ts_min, ts_max) are dropped first (a retrain on a window moved in time). With targets_from
    only the windows holding an event from then on are kept (a retrain on its new window: the objective makes the
    older events context only, genrec.objectives.mtp_targets).
    """
    rows = []
    utils_col = batch.get("utils")
    for r, (items, ts, actions) in enumerate(zip(batch["items"], batch["ts"], batch["actions"])):
        items = np.asarray(items, dtype=np.int32)
        ts = np.asarray(ts, dtype=np.int64)
        actions = np.asarray(actions, dtype=np.int8)
        utils = (np.ones(len(items), np.float32) if utils_col is None
                 else np.asarray(utils_col[r], dtype=np.float32))
        if ts_min is not None or ts_max is not None:
            keep = in_window(ts, ts_min, ts_max)
            items, ts, actions, utils = items[keep], ts[keep], actions[keep], utils[keep]
        gaps = gap_buckets(ts)
        for s, e in window_bounds(len(items), max_seq_len):
            if targets_from is not None and ts[e - 1] < targets_from:  # the window's newest event is its last
                continue
            rows.append((items[s:e], actions[s:e], gaps[s:e], utils[s:e], ts[s:e]))
    n, span = len(rows), max_seq_len + 1
    out = {"items": np.zeros((n, span), np.int32), "actions": np.zeros((n, span), np.int8),
           "gaps": np.zeros((n, span), np.int8), "utils": np.zeros((n, span), np.float32),
           "ts": np.zeros((n, span), np.int64)}
    for i, (it, ac, gp, ut, t) in enumerate(rows):
        m = len(it)
        out["items"][i, :m] = it
        out["actions"][i, :m] = np.clip(ac, 0, NUM_ACTIONS - 1)
        out["gaps"][i, :m] = gp
        out["utils"][i, :m] = ut
        out["ts"][i, :m] = t
        if m:
            out["ts"][i, m:] = t[-1]  # padding keeps the last time, so no dt is ever negative
    return out


def context_window(items, ts, actions, max_seq_len: int, utils=None):
    """The last `max_seq_len` events of a history as right-padded model inputs, plus the real length.

    Returns (items, actions, gaps, utils, ts, length); padding repeats the last event's time, as in
    :func:`training_windows`. Gaps are taken on the whole history, so a window's first event keeps the gap to its
    real predecessor."""
    items = np.asarray(items, dtype=np.int64)
    ts = np.asarray(ts, dtype=np.int64)
    gaps = gap_buckets(ts)
    actions = np.clip(np.asarray(actions, dtype=np.int64), 0, NUM_ACTIONS - 1)
    utils = np.ones(len(items), np.float32) if utils is None else np.asarray(utils, dtype=np.float32)
    n = min(len(items), max_seq_len)
    out = np.zeros((4, max_seq_len), dtype=np.int64)
    u = np.zeros(max_seq_len, dtype=np.float32)
    if n:
        out[0, :n] = items[-n:]
        out[1, :n] = actions[-n:]
        out[2, :n] = gaps[-n:]
        u[:n] = utils[-n:]
        out[3, :n] = ts[-n:]
        out[3, n:] = ts[-1]
    return out[0], out[1], out[2], u, out[3], n
