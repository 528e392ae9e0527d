"""Item features for the semantic tower, computed from the item table alone (no download, no training state).

A title is described by what exists the day it launches: its genres, its year, and its text (title + free text).
The tower embeds these, so a title never seen in training still gets a representation from metadata.

* genres: indices into a vocabulary fixed at training time (unknown genres of a later title are dropped);
* year: 5-year buckets from 1900 (0 = unknown). Never taken from launch_ts: where a source has no release date,
  launch_ts is the title's first event, which for a cold title lies after the training window;
* text: word unigrams and bigrams of the title and text, hashed into `text_buckets` buckets with CRC32 (stable across
  processes and machines, unlike Python's `hash`); a title's year in parentheses is dropped, the year bucket has it;
* dense: an optional precomputed text embedding column (`text_embedding`, e.g. from a sentence-embedding model, see
  `genrec data embed-text`), used when the item table has one;
* launch: the title's `launch_ts` (unknown: int64 max), for its age at the request (:func:`title_age_buckets`): what
  is popular depends on when, and a title in its launch weeks is watched far more than its metadata alone says.

The vocabulary (:class:`FeatureVocab`) is saved with every checkpoint, so serving turns a new title's metadata into the
same feature ids the model was trained on.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import torch

YEAR_MIN, YEAR_STEP, YEAR_BUCKETS = 1900, 5, 32  # bucket 0 = unknown; 1..31 cover 1900..2054
MAX_GENRES = 8
MAX_TOKENS = 32
LAUNCH_UNKNOWN = np.iinfo(np.int64).max  # a title without launch_ts never counts as launched
# Title age at the request: bucket 0 = not launched before the request (or unknown); 1.. = 1 + floor(2 log2(1 +
# age in hours)), half-octaves, so launch week is resolved to about a day and ages of years still differ (48 = 2^23 h).
NUM_AGE_BUCKETS = 48
TEXT_EMBEDDING = "text_embedding"
_WORD = re.compile(r"[a-z0-9]+")
_TRAILING_YEAR = re.compile(r"\(\s*\d{4}\s*\)\s*$")


@dataclass(frozen=True)
class FeatureVocab:
    genres: tuple[str, ...] = ()
    text_buckets: int = 16384
    text_dim: int = 0  # width of the optional dense text embedding; 0 = none

    def to_dict(self) -> dict:
        return asdict(self) | {"genres": list(self.genres)}  # JSON-shaped, so a reloaded spec compares equal

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureVocab":
        return cls(genres=tuple(d.get("genres", ())), text_buckets=int(d.get("text_buckets", 16384)),
                   text_dim=int(d.get("text_dim", 0)))


@dataclass
class ItemFeatures:
    """Row i describes item index i (row 0 = padding, all zeros). Index tensors use 0 for 'none'."""

    genres: torch.Tensor  # (n + 1, MAX_GENRES) int64, genre vocabulary index + 1
    year: torch.Tensor  # (n + 1,) int64 year bucket
    tokens: torch.Tensor  # (n + 1, MAX_TOKENS) int64 hashed n-gram bucket + 1
    dense: torch.Tensor | None = field(default=None)  # (n + 1, text_dim) float32
    launch: torch.Tensor | None = field(default=None)  # (n + 1,) int64 launch_ts, LAUNCH_UNKNOWN where none

    def __len__(self) -> int:
        return self.year.shape[0]

    def to(self, device) -> "ItemFeatures":
        return ItemFeatures(self.genres.to(device), self.year.to(device), self.tokens.to(device),
                            None if self.dense is None else self.dense.to(device),
                            None if self.launch is None else self.launch.to(device))


def build_vocab(items: pa.Table, text_buckets: int = 16384) -> FeatureVocab:
    """The genre vocabulary of a catalogue (sorted, so it does not depend on row order)."""
    genres = sorted({g for gs in items.column("genres").to_pylist() for g in (gs or [])})
    text_dim = 0
    if TEXT_EMBEDDING in items.column_names:
        first = next((v for v in items.column(TEXT_EMBEDDING).to_pylist() if v), None)
        text_dim = len(first) if first else 0
    return FeatureVocab(genres=tuple(genres), text_buckets=text_buckets, text_dim=text_dim)


def year_bucket(year: int | None) -> int:
    if year is None or year <= 0:
        return 0
    return int(np.clip((year - YEAR_MIN) // YEAR_STEP + 1, 1, YEAR_BUCKETS - 1))


# First second of each age bucket 1..NUM_AGE_BUCKETS-1: bucket b starts at (2^((b - 1) / 2) - 1) hours, i.e. bucket =
# 1 + floor(2 log2(1 + hours)), in whole seconds so bucketing is exact integer comparison.
AGE_EDGES_S = torch.tensor([1] + [math.ceil((2.0 ** ((b - 1) / 2) - 1.0) * 3600) for b in range(2, NUM_AGE_BUCKETS)],
                           dtype=torch.int64)


def title_age_buckets(request_ts: torch.Tensor, launch: torch.Tensor) -> torch.Tensor:
    """Age buckets (int32, broadcast shape) of titles launched at `launch` (Unix s) seen at `request_ts` (Unix s).

    A title counts as launched only strictly before the request. That keeps a launch time derived from the title's
    first event (MovieLens has no release dates) from leaking the future: a title first watched at the request
    itself, or later, looks exactly like one not launched yet, which is all a service knows at that moment.
    One int64 temporary and an int32 result: full-softmax training scores every (position, title) pair."""
    age = request_ts - launch  # LAUNCH_UNKNOWN makes it very negative, never positive
    return torch.bucketize(age, AGE_EDGES_S.to(age.device), right=True, out_int32=True)


def launched_by_edge(request_ts: torch.Tensor, launch_sorted: torch.Tensor) -> torch.Tensor:
    """(P, K): how many of the launch-sorted titles launched by request_ts - edge_k, for each request and age edge k
    (a title is in bucket >= k + 1 exactly when it is among them)."""
    edges = AGE_EDGES_S.to(request_ts.device)
    return torch.searchsorted(launch_sorted, request_ts[:, None] - edges[None, :], right=True)


def catalogue_age_bias(weights: torch.Tensor, request_ts: torch.Tensor, launch_sorted: torch.Tensor,
                       order_inverse: torch.Tensor) -> torch.Tensor:
    """weights[title_age_buckets(request_ts[:, None], launch[None, :])] for every title at once: (P, titles), equal
    to the direct lookup, without bucketing P x titles ages one by one (the step's cost would grow many-fold with
    the catalogue under full softmax).

    With titles sorted by launch time (`launch_sorted`; `order_inverse[i]` = title i's place in that order), a title
    is in bucket >= k + 1 at request r exactly when it launched by r - edge_k: the first `count(p, k)` sorted titles
    (one searchsorted per request and edge). The bias is then weights[0] plus, for each edge the title passed, the
    step weights[k + 1] - weights[k]: the last weight less the steps of the edges it did not pass, a prefix sum over
    the sorted titles. Differentiable in `weights`."""
    counts = launched_by_edge(request_ts, launch_sorted)
    steps = (weights[1:] - weights[:-1]).expand(len(request_ts), -1)  # (P, K)
    jumps = torch.zeros(len(request_ts), len(launch_sorted) + 1, dtype=weights.dtype, device=weights.device)
    jumps = jumps.scatter_add(1, counts, steps)
    # bias of sorted title j: weights[0] + the steps whose count exceeds j = weights[-1] - those whose count is <= j
    # (one prefix sum; the suffix sum it replaces took two flips more over every (request, title))
    return (weights[-1] - jumps.cumsum(1)[:, :-1]).index_select(1, order_inverse)


def catalogue_age_bias_grad(grad: torch.Tensor, request_ts: torch.Tensor, launch_sorted: torch.Tensor,
                            order_inverse: torch.Tensor) -> torch.Tensor:
    """The gradient of sum(grad x catalogue_age_bias(weights, request_ts, launch_sorted, order_inverse)) in the
    weights (NUM_AGE_BUCKETS,), float32, in closed form: two passes over grad (P, titles) instead of autograd's
    through the scatter, the suffix sum and the permutation.

    The bias is weights[0] plus step k (weights[k + 1] - weights[k]) for each sorted title before count(p, k); so
    step k's gradient is the sum over requests of grad over the first count(p, k) sorted titles, a prefix sum read
    at count(p, k), and weights[0]'s is the sum of grad."""
    counts = launched_by_edge(request_ts, launch_sorted)
    order = torch.empty_like(order_inverse).scatter_(0, order_inverse, torch.arange(len(order_inverse),
                                                                                     device=order_inverse.device))
    prefix = grad.float().index_select(1, order).cumsum_(1)  # prefix[p, j]: grad summed over sorted titles 0..j
    before = torch.where(counts > 0, prefix.gather(1, (counts - 1).clamp_(min=0)), torch.zeros((), device=grad.device))
    steps = before.sum(0)  # (K,)
    out = torch.zeros(counts.shape[1] + 1, dtype=torch.float32, device=grad.device)
    out[0] = prefix[:, -1].sum()
    out[1:] += steps
    out[:-1] -= steps
    return out


def age_bucket_counts(request_ts: np.ndarray, launch: np.ndarray) -> np.ndarray:
    """(NUM_AGE_BUCKETS,) how many (request, title) pairs fall in each age bucket, over every request and every
    title, counted exactly without the (requests x titles) grid: a title is in bucket >= j + 1 at request r when
    launch <= r - edge_j, so sorted launch times and one searchsorted per (request, edge) give every count."""
    launch = np.sort(np.asarray(launch, np.int64))
    edges = AGE_EDGES_S.numpy()
    at_least = np.searchsorted(launch, np.asarray(request_ts, np.int64)[:, None] - edges[None, :], side="right")
    per_request = np.concatenate([len(launch) - at_least[:, :1], at_least[:, :-1] - at_least[:, 1:],
                                  at_least[:, -1:]], axis=1)
    return per_request.sum(axis=0)


def age_log_lift(target_counts: np.ndarray, candidate_counts: np.ndarray, clip: float = 8.0) -> np.ndarray:
    """(NUM_AGE_BUCKETS,) log(share of watched titles in each age bucket / share of the titles on offer in it): how
    much more often than chance a title of that age is the one watched. The title-age bias starts from it, because
    a few hundred optimizer steps cannot move a bias by the log 10 that launch hype is worth. Half a count smooths a
    bucket no target fell in. An age bucket no candidate fell in (older than anything in the training window, say)
    takes the value of the nearest one that had candidates, so serving later than training extrapolates flat."""
    t = np.asarray(target_counts, float)[:NUM_AGE_BUCKETS]
    c = np.asarray(candidate_counts, float)[:NUM_AGE_BUCKETS]
    if not t.sum() or not c.sum():
        return np.zeros(NUM_AGE_BUCKETS)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.clip(np.log((t + 0.5) / t.sum()) - np.log(c / c.sum()), -clip, clip)
    lift[0] = lift[0] if c[0] > 0 else 0.0
    seen = np.flatnonzero(c[1:] > 0) + 1
    if len(seen):
        for b in np.flatnonzero(c[1:] == 0) + 1:
            lift[b] = lift[seen[np.argmin(np.abs(seen - b) - 0.5 * (seen > b))]]  # ties: the older neighbour
    else:
        lift[1:] = 0.0
    return lift


def text_tokens(text: str, buckets: int) -> list[int]:
    """Hashed word unigrams then bigrams, 1..buckets (0 is padding), first MAX_TOKENS kept."""
    words = _WORD.findall(_TRAILING_YEAR.sub("", text or "").lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    return [zlib.crc32(g.encode()) % buckets + 1 for g in grams[:MAX_TOKENS]]


def item_features(items: pa.Table, vocab: FeatureVocab) -> ItemFeatures:
    """Features for an item table with an `index` column (1..n, as in a shard set's items.parquet)."""
    index = items.column("index").to_numpy().astype(np.int64)
    n = int(index.max()) if len(index) else 0
    genre_ix = {g: i + 1 for i, g in enumerate(vocab.genres)}
    genres = np.zeros((n + 1, MAX_GENRES), np.int64)
    year = np.zeros(n + 1, np.int64)
    tokens = np.zeros((n + 1, MAX_TOKENS), np.int64)
    launches = np.full(n + 1, LAUNCH_UNKNOWN, np.int64)
    years = items.column("year").to_pylist()
    launch = items.column("launch_ts").to_pylist() if "launch_ts" in items.column_names else [None] * len(index)
    for row, (i, gs, title, text, y, lt) in enumerate(zip(
            index, items.column("genres").to_pylist(), items.column("title").to_pylist(),
            items.column("text").to_pylist(), years, launch)):
        ids = [genre_ix[g] for g in (gs or []) if g in genre_ix][:MAX_GENRES]
        genres[i, :len(ids)] = ids
        year[i] = year_bucket(y)
        if lt is not None:
            launches[i] = int(lt)
        toks = text_tokens(f"{title or ''} {text or ''}", vocab.text_buckets)
        tokens[i, :len(toks)] = toks
    dense = None
    if vocab.text_dim:
        dense = np.zeros((n + 1, vocab.text_dim), np.float32)
        if TEXT_EMBEDDING in items.column_names:
            for i, v in zip(index, items.column(TEXT_EMBEDDING).to_pylist()):
                if v is not None:
                    if len(v) != vocab.text_dim:
                        raise ValueError(f"items: {TEXT_EMBEDDING} of index {i} has {len(v)} values, the model was "
                                         f"trained with {vocab.text_dim}; embed new titles with the same model")
                    dense[i] = v
        dense = torch.from_numpy(dense)
    return ItemFeatures(torch.from_numpy(genres), torch.from_numpy(year), torch.from_numpy(tokens), dense,
                        torch.from_numpy(launches))
