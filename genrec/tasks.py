"""Downstream tasks: requests, targets, candidate sets and serving delays over the evaluation shards.

A **request** is a user arriving at time r: the first event after the training cutoff, then the user's next session
starts (an event at least `eval.session_gap_h` after the previous one), up to `eval.requests_per_user` of them. A
user new in the window (no event before the cutoff) is a new member: its first session is its context, and its
requests are its later session starts. On leave-one-out shards the one request is the held-out last event (the
SASRec/HSTU protocol).

For every request and every **serving delay** d (`eval.delays_h`, 0 always), the model reads the user's events up
to r - d (for d = 0: every event before the request), as a cache that stale would. Targets are fixed per request
(from the fresh context), so the delays score the same targets and differ only in what the model saw.

A **task** (`eval.tasks`, see `genrec.config.TaskConfig`) says which future events are relevant and which titles
compete:

* targets "next": the first title at or after r that is not in the context (task B);
* targets "horizon": every title engaged with in [r + start_h, r + end_h) after the next `skip` events (task A);
* targets "cold": the first title at or after r with no training event (cold start);
* candidates "all": the whole catalogue minus the titles in the context (the context actually given, so a stale
  cache may recommend what the user watched since);
* candidates "popular": the `pool_size` most-watched titles of the `window_days` before r that had launched by r
  (task C); requests whose target is not in that pool are not scored. Popularity counts every event in the shards
  (training and evaluation rows) before the start of r's hour: what a service knows when the request comes.

MRR is the reciprocal rank of the best-ranked relevant title in the task's candidate set; HR@k and NDCG@k (binary
relevance, ideal DCG over min(relevant, k) titles) sit beside it (see `genrec.metrics.multi_rank_sums`).

Distinct contexts are scored once: when a stale cache holds the same events as a fresh one, one forward pass serves
every delay. Everything here is numpy/torch on one process: the trainer, the report's generator reference and the
tests share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from genrec.config import EvalConfig, TaskConfig
from genrec.metrics import from_sums, multi_rank_sums, relevant_ranks
from genrec.shards import ShardError, ShardSet, shifted_window_rows
from genrec.windows import context_window

DAY = 86_400
HOUR = 3_600


@dataclass
class Request:
    user: int  # user_id
    ts: int  # request time r (Unix seconds)
    seq: int  # index of the user's whole sequence in EvalPlan.seqs
    ends: dict[float, int]  # delay (hours) -> end (exclusive) of the context in the sequence
    targets: dict[str, np.ndarray] = field(default_factory=dict)  # task -> relevant item indices (never empty)
    pools: dict[str, np.ndarray] = field(default_factory=dict)  # task -> candidate item indices (popular tasks)


@dataclass
class EvalPlan:
    tasks: dict[str, TaskConfig]
    delays: list[float]  # hours, 0 first
    seqs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]  # (items, ts, actions, utils) per user
    requests: list[Request]

    def counts(self) -> dict[str, int]:
        return {t: sum(t in r.targets for r in self.requests) for t in self.tasks}


def delay_suffix(delay_h: float) -> str:
    return "" if delay_h == 0 else f"_{delay_h:g}h"


class PopularPools:
    """The most-watched titles of the `window_days` before a request, among titles launched by then.

    Causal: only events before the request count (the window ends at the start of the request's hour, so requests
    of the same hour share one count)."""

    def __init__(self, items: np.ndarray, ts: np.ndarray, launch: np.ndarray):
        order = np.argsort(ts, kind="stable")
        self.items, self.ts = items[order], ts[order]
        self.launch = launch  # per item index; int64 max for titles never available
        self._ranked: dict[tuple[int, float], np.ndarray] = {}

    def ranked(self, end: int, window_days: float) -> np.ndarray:
        """Titles with events in [end - window, end), most events first (ties: lower index first)."""
        key = (end, window_days)
        if key not in self._ranked:
            lo, hi = np.searchsorted(self.ts, [end - window_days * DAY, end])
            counts = np.bincount(self.items[lo:hi], minlength=len(self.launch))
            counts[0] = 0
            nz = np.flatnonzero(counts)
            self._ranked[key] = nz[np.lexsort((nz, -counts[nz]))]
        return self._ranked[key]

    def pool(self, r: int, size: int, window_days: float) -> np.ndarray:
        end = int(r // HOUR * HOUR)
        ranked = self.ranked(end, window_days)
        return ranked[self.launch[ranked] <= r][:size]


def _all_events(shards: ShardSet, eval_table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Every event in the shards once: each evaluation (test) user's history and targets, which hold all of their
    events; for every other user, their training row and validation targets."""
    parts_i, parts_t = [], []
    eval_users = set(eval_table.column("user_id").to_pylist())

    def add(table: pa.Table, items: str, ts: str) -> None:
        parts_i.append(pc.list_flatten(table.column(items)).to_numpy())
        parts_t.append(pc.list_flatten(table.column(ts)).to_numpy())

    def others(table: pa.Table) -> pa.Table:
        return table.filter(pa.array([u not in eval_users for u in table.column("user_id").to_pylist()], pa.bool_()))

    add(eval_table, "items", "ts")
    add(eval_table, "targets", "target_ts")
    for path in shards.files("train"):
        add(others(pq.read_table(path, columns=["user_id", "items", "ts"], filesystem=shards.fs)), "items", "ts")
    if shards.files("valid"):
        valid = pq.read_table(shards.files("valid"), columns=["user_id", "targets", "target_ts"], filesystem=shards.fs)
        add(others(valid), "targets", "target_ts")
    return (np.concatenate(parts_i).astype(np.int64) if parts_i else np.zeros(0, np.int64),
            np.concatenate(parts_t).astype(np.int64) if parts_t else np.zeros(0, np.int64))


def launch_times(shards: ShardSet, items: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Launch time per item index: the catalogue's launch_ts, else the title's first event (never: int64 max)."""
    never = np.iinfo(np.int64).max
    first = np.full(shards.num_items + 1, never, np.int64)
    if items.size:
        np.minimum.at(first, items, ts)
    vocab = pq.read_table(shards.items_path, filesystem=shards.fs)
    if "launch_ts" in vocab.column_names:
        col = vocab.column("launch_ts")
        known = col.is_valid().to_numpy(zero_copy_only=False)
        idx = vocab.column("index").to_numpy()[known]
        first[idx] = np.minimum(first[idx], col.fill_null(0).to_numpy()[known].astype(np.int64))
    return first


def request_positions(ts: np.ndarray, start: int, gap_s: float, limit: int) -> list[int]:
    """The first event at or after `start` and the following session starts (gap >= gap_s), at most `limit`. With
    no event before `start` (a user new in the window) the first session is the context, not a request."""
    if start >= len(ts):
        return []
    later = np.flatnonzero(np.diff(ts[start:]) >= gap_s) + start + 1
    first = [start] if start else []
    return [*first, *later.tolist()][:limit]


def task_targets(task: TaskConfig, items: np.ndarray, ts: np.ndarray, pos: int, seen: set, cold: np.ndarray
                 ) -> np.ndarray:
    """Relevant item indices of one request at sequence position `pos` (empty: the task does not score it)."""
    if task.targets == "horizon":
        r = ts[pos]
        sel = np.flatnonzero((ts[pos + task.skip:] >= r + task.start_h * HOUR)
                             & (ts[pos + task.skip:] < r + task.end_h * HOUR)) + pos + task.skip
        out = [t for t in dict.fromkeys(items[sel].tolist()) if t not in seen]
        return np.asarray(out, np.int64)
    for k in range(pos, len(items)):
        t = int(items[k])
        if t not in seen and (task.targets == "next" or cold[t]):
            return np.asarray([t], np.int64)
    return np.zeros(0, np.int64)


SPLIT_NAMES = {"valid": "validation", "eval": "test"}


def build_plan(shards: ShardSet, ecfg: EvalConfig, cold: np.ndarray, split: str = "valid",
               shift_h: float = 0.0) -> EvalPlan:
    """Every request of a held-out split ("valid": every choice is made on it; "eval": the test split, read once
    for a selected model) with its per-delay contexts and per-task targets and pools.

    `cold` (per item index): titles with no training event in this run's training window. Validation users are
    sampled (eval.max_users) with eval.seed only, so retrains with other seeds score the same requests; the test
    split is scored whole. `shift_h` (time split, "valid"): the validation window moved back that many hours, as
    for a retrain whose training window ends that much before the validation cutoff (train.window_shift_h)."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLIT_NAMES)}")
    files = shards.files(split)
    if not files:
        raise ShardError(f"{shards.uri()}: no {SPLIT_NAMES[split]} split in these shards (built by an older genrec); "
                         "rebuild them (--rebuild-shards)")
    # By user: the in-memory build writes rows in user order, the partitioned one (genrec.partitioned_build) by partition; the
    # sampled users below must not depend on which build made the shards.
    table = pq.read_table(files, filesystem=shards.fs).sort_by("user_id")
    if shift_h:
        counts = shards.manifest["counts"]
        if split != "valid" or counts.get("valid_cutoff") is None:
            raise ValueError("a shifted validation window needs a time split's validation rows (data.split: time)")
        train = pq.read_table(shards.files("train"), filesystem=shards.fs)
        table = shifted_window_rows(train, table, int(counts["valid_cutoff"] - shift_h * HOUR),
                                    int(counts["cutoff"] - shift_h * HOUR))
    n = table.num_rows
    users = np.arange(n)
    if split == "valid" and ecfg.max_users is not None and n > ecfg.max_users:
        users = np.sort(np.random.default_rng(ecfg.seed).choice(n, ecfg.max_users, replace=False))
    delays = [0.0, *sorted({float(d) for d in ecfg.delays_h if d > 0})]
    pools = None
    if any(t.candidates == "popular" for t in ecfg.tasks.values()):
        eval_table = table if split == "eval" else pq.read_table(shards.files("eval"), filesystem=shards.fs)
        ev_items, ev_ts = _all_events(shards, eval_table)
        pools = PopularPools(ev_items, ev_ts, launch_times(shards, ev_items, ev_ts))
    cols = {c: table.column(c).to_pylist() for c in ("user_id", "items", "ts", "actions", "utils", "targets",
                                                     "target_ts", "target_actions", "target_utils")}
    seqs, requests = [], []
    for i in users:
        items = np.asarray(cols["items"][i] + cols["targets"][i], np.int64)
        ts = np.asarray(cols["ts"][i] + cols["target_ts"][i], np.int64)
        actions = np.asarray(cols["actions"][i] + cols["target_actions"][i], np.int64)
        utils = np.asarray(cols["utils"][i] + cols["target_utils"][i], np.float32)
        start = len(cols["items"][i])
        mine = []
        for pos in request_positions(ts, start, ecfg.session_gap_h * HOUR, ecfg.requests_per_user):
            r = int(ts[pos])
            ends = {d: pos if d == 0 else int(np.searchsorted(ts[:pos], r - d * HOUR, side="right"))
                    for d in delays}
            if min(ends.values()) == 0:
                continue  # nothing old enough for the stalest cache: left out of every delay, so they stay paired
            seen = set(items[:pos].tolist())
            req = Request(int(cols["user_id"][i]), r, len(seqs), ends)
            for name, task in ecfg.tasks.items():
                rel = task_targets(task, items, ts, pos, seen, cold)
                if rel.size and task.candidates == "popular":
                    pool = pools.pool(r, task.pool_size, task.window_days)
                    rel = rel[np.isin(rel, pool)]
                    if rel.size:
                        req.pools[name] = pool
                if rel.size:
                    req.targets[name] = rel
            if req.targets:
                mine.append(req)
        if mine:
            seqs.append((items, ts, actions, utils))
            requests.extend(mine)
    return EvalPlan(dict(ecfg.tasks), delays, seqs, requests)


@dataclass
class Use:
    """One (request, delay) scored from a context: the row of the context's scores it reads."""

    request: Request
    delay: float


def contexts(plan: EvalPlan) -> list[tuple[int, int, list[Use]]]:
    """The distinct contexts to score, as (sequence, end, uses). A stale cache often holds the same events as a fresh
    one (users whose last session is days old), and then one forward pass serves every delay that sees them. Two
    requests never share one: scores depend on the request time (titles' age)."""
    by_key: dict[tuple[int, int, int], list[Use]] = {}
    for req in plan.requests:
        for d in plan.delays:
            by_key.setdefault((req.seq, req.ends[d], req.ts), []).append(Use(req, d))
    return [(seq, end, uses) for (seq, end, _), uses in by_key.items()]


def context_batches(plan: EvalPlan, max_seq_len: int, rank: int, world: int, batch_size: int
                    ) -> Iterator[tuple[list[list[Use]], dict[str, torch.Tensor]]]:
    """This rank's batches of distinct contexts, as model inputs, with the uses each context serves.

    Every rank yields the same number of batches (padded with empty ones), because a ZeRO-3 forward is a collective:
    a rank that stopped early would hang the others."""
    ctx = contexts(plan)
    per_rank = math.ceil(len(ctx) / world)
    mine = ctx[rank::world]
    for b in range(math.ceil(per_rank / batch_size)):
        chunk = mine[b * batch_size:(b + 1) * batch_size]
        n = max(len(chunk), 1)
        items = np.zeros((n, max_seq_len), np.int64)
        actions, gaps, ts = np.zeros_like(items), np.zeros_like(items), np.zeros_like(items)
        utils = np.zeros((n, max_seq_len), np.float32)
        lengths = np.ones(n, np.int64)
        request_ts = np.zeros(n, np.int64)
        ex_rows, ex_cols = [], []
        for i, (seq, end, uses) in enumerate(chunk):
            request_ts[i] = uses[0].request.ts
            s_items, s_ts, s_actions, s_utils = plan.seqs[seq]
            items[i], actions[i], gaps[i], utils[i], ts[i], lengths[i] = context_window(
                s_items[:end], s_ts[:end], s_actions[:end], max_seq_len, s_utils[:end])
            ex_rows += [i] * end
            ex_cols += s_items[:end].tolist()
        batch = dict(items=items, actions=actions, gaps=gaps, utils=utils, ts=ts, lengths=lengths, request_ts=request_ts,
                     exclude_rows=np.asarray(ex_rows, np.int64), exclude_cols=np.asarray(ex_cols, np.int64))
        yield [uses for _, _, uses in chunk], {k: torch.from_numpy(v) for k, v in batch.items()}


def _task_tensors(uses: list[Use], name: str, popular: bool, device):
    """Relevant titles (U, R), their mask, and the candidate pool as (row, column) pairs, for one task."""
    width = max([len(u.request.targets.get(name, ())) for u in uses] + [1])
    rel = np.zeros((len(uses), width), np.int64)
    valid = np.zeros((len(uses), width), bool)
    for i, u in enumerate(uses):
        t = u.request.targets.get(name)
        if t is not None:
            rel[i, :len(t)], valid[i, :len(t)] = t, True
    pool = None
    if popular:
        pools = [u.request.pools.get(name, ()) for u in uses]
        rows = np.repeat(np.arange(len(uses)), [len(p) for p in pools])
        cols = np.concatenate([np.asarray(p, np.int64) for p in pools]) if rows.size else np.zeros(0, np.int64)
        pool = (torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device))
    return torch.from_numpy(rel).to(device), torch.from_numpy(valid).to(device), pool


Scorer = Callable[[list[list[Use]], dict[str, torch.Tensor]], torch.Tensor]


def evaluate_plan(plan: EvalPlan, scorer: Scorer, max_seq_len: int, rank: int = 0, world: int = 1,
                  batch_size: int = 256, device="cpu", topk: int = 0, k: int = 10):
    """-> ({(task, delay): summed rank statistics (5,) float64}, top-k rows at delay 0 for this rank's requests).

    `scorer(uses, batch)` returns scores (B, catalogue + 1) for the batch's contexts (padding rows included; `uses`
    lists the (request, delay) pairs each context serves); titles in the context and padding are set to -inf here.
    Top-k rows: (user, request ts, [item indices])."""
    sums = {(t, d): torch.zeros(5, dtype=torch.float64) for t in plan.tasks for d in plan.delays}
    top_rows = []
    for uses_per_row, batch in context_batches(plan, max_seq_len, rank, world, batch_size):
        batch = {key: v.to(device) for key, v in batch.items()}
        scores = scorer(uses_per_row, batch).float()
        scores[batch["exclude_rows"], batch["exclude_cols"]] = float("-inf")
        scores[:, 0] = float("-inf")
        row_of = [i for i, uses in enumerate(uses_per_row) for _ in uses]
        uses = [u for us in uses_per_row for u in us]
        if not uses:
            continue
        for delay in plan.delays:
            sel = [j for j, u in enumerate(uses) if u.delay == delay]
            if not sel:
                continue
            du = [uses[j] for j in sel]
            s_all = scores[torch.tensor([row_of[j] for j in sel], device=scores.device)]
            if delay == 0 and topk:
                best = s_all.topk(min(topk, s_all.shape[1] - 1), dim=1)
                for u, v, i in zip(du, best.values.cpu(), best.indices.cpu()):
                    top_rows.append((u.request.user, u.request.ts, i[torch.isfinite(v)].tolist()))  # few candidates
            for name, task in plan.tasks.items():
                rel, valid, pool = _task_tensors(du, name, task.candidates == "popular", scores.device)
                s = s_all
                if pool is not None:
                    allowed = torch.zeros_like(s_all, dtype=torch.bool)
                    allowed[pool] = True
                    s = s_all.masked_fill(~allowed, float("-inf"))
                rows = valid.any(1)
                if rows.any():
                    ranks = relevant_ranks(s[rows], rel[rows], valid[rows])
                    sums[(name, delay)] += multi_rank_sums(ranks.cpu(), k)
    return sums, top_rows


def plan_metrics(sums: dict, primary: str, k: int = 10) -> dict[str, float]:
    """Metric names: mrr_<task>, hr@10_<task>, ndcg@10_<task>, mrr@10_<task>, requests_<task>, suffixed _24h for a
    delay; the primary task at delay 0 is also reported unsuffixed (mrr, hr@10, ...)."""
    out = {}
    for (task, delay), v in sums.items():
        m = from_sums(v, k)
        out |= {f"{name}_{task}{delay_suffix(delay)}": x for name, x in m.items()}
        if task == primary and delay == 0:
            out |= m
    return out


def count_scorer(counts, device="cpu") -> Scorer:
    """Popularity: every context scores each title by its training events (the bar beside a model's figures)."""
    row = torch.as_tensor(counts, dtype=torch.float64, device=device)

    def score(_uses, b):
        return row.expand(b["items"].shape[0], -1).clone()

    return score


def model_scorer(model, item_matrix: torch.Tensor) -> Scorer:
    def score(_uses, b):
        return model.score_last(b["items"], b["actions"], b["gaps"], b["utils"], b["lengths"], item_matrix,
                                b["request_ts"], b["ts"])

    return score
