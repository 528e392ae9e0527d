"""The HSTU block (Zhai et al. 2024, "Actions Speak Louder than Words"): pointwise aggregated attention.

One block, pre-norm and residual like genrec's transformer block (`model.block: hstu`):

    u, v, q, k = SiLU(W1 RMSNorm(x))                          W1: d -> 4d
    A = SiLU(q k^T / sqrt(d_head) + rab(i - j, t_i - t_j)) / L  causal (j <= i), no softmax
    x + W2 Dropout(RMSNorm(A v) * u)                            W2: d -> d

No softmax: each past event contributes by its own (SiLU) weight, so the output keeps how *much* of the history
matches, not only which part; dividing by the window length L (the model's max_seq_len, a constant, so a short
history is not inflated) keeps the sum bounded. `rab` is a learned relative attention bias shared by the heads: one
scalar per bucket of the distance in positions (exact up to 16, log-spaced beyond) plus one per bucket of the time
between the two events (log2 seconds, as the time-gap input buckets). Both use only the context's own events, so a
query never sees a timestamp after its own.

Parameters per block: 5 d^2 (W1, W2) + 2 d (the two norms) + the bias tables (POSITION_BUCKETS + TIME_BUCKETS),
against 12 d^2 + 2 d for the transformer block: at the same width an HSTU preset has about 2.4 times the layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

POSITION_BUCKETS = 32  # relative distance i - j: exact below 16, log-spaced up to MAX_DISTANCE
MAX_DISTANCE = 4096
TIME_BUCKETS = 32  # floor(log2(1 + seconds)), clipped: seconds apart -> 0..6, a day -> 16, years -> 31


def position_buckets(distance: torch.Tensor) -> torch.Tensor:
    """Bucket of each distance i - j >= 0 (T5-style, one direction): 0..15 exact, then 16 log-spaced buckets up to
    MAX_DISTANCE (and the last one beyond)."""
    exact = POSITION_BUCKETS // 2
    d = distance.clamp(min=0)
    log_bucket = exact + (torch.log(d.float().clamp(min=1) / exact) / math.log(MAX_DISTANCE / exact)
                          * (POSITION_BUCKETS - exact)).long()
    return torch.where(d < exact, d, log_bucket.clamp(max=POSITION_BUCKETS - 1))


def time_buckets(seconds: torch.Tensor) -> torch.Tensor:
    """floor(log2(1 + seconds)) of the time between two events (negative times count as 0), clipped."""
    s = seconds.clamp(min=0).double()
    return torch.floor(torch.log2(1.0 + s)).long().clamp(max=TIME_BUCKETS - 1)


class BucketLookup(torch.autograd.Function):
    """weights[idx] for a few buckets and many indices, whose backward is one bincount: an embedding's backward
    sorts its (B x T x T) indices and costs several times the whole attention on CPU."""

    @staticmethod
    def forward(ctx, weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.buckets = weights.shape[0]
        return weights[idx]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        summed = torch.bincount(idx.reshape(-1), weights=grad.reshape(-1).double(), minlength=ctx.buckets)
        return summed.to(grad.dtype), None


class RelativeBias(nn.Module):
    """rab(i, j): a learned scalar per position-distance bucket plus one per time-distance bucket. Its tables are its
    own parameters (not submodules'), so the module that is called is the one that owns them (DeepSpeed ZeRO-3
    gathers a module's parameters in its own forward hook)."""

    def __init__(self):
        super().__init__()
        self.position = nn.Parameter(torch.zeros(POSITION_BUCKETS))
        self.time = nn.Parameter(torch.zeros(TIME_BUCKETS))

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor, q_ts: torch.Tensor, k_ts: torch.Tensor):
        """Positions (Tq,), (Tk,) and event times (B, Tq), (B, Tk) -> bias (B, 1, Tq, Tk)."""
        pos = BucketLookup.apply(self.position, position_buckets(q_pos[:, None] - k_pos[None, :]))  # (Tq, Tk)
        dt = BucketLookup.apply(self.time, time_buckets(q_ts[:, :, None] - k_ts[:, None, :]))  # (B, Tq, Tk)
        return (pos[None] + dt)[:, None]


def hstu_params(width: int) -> int:
    """Exact parameter count of one :class:`HSTUBlock` (tested against the module)."""
    return 5 * width * width + 2 * width + POSITION_BUCKETS + TIME_BUCKETS


class HSTUBlock(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float, max_seq_len: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.max_seq_len, self.dropout = heads, max_seq_len, dropout
        self.norm1 = nn.RMSNorm(width, elementwise_affine=True)
        self.uvqk = nn.Linear(width, 4 * width, bias=False)
        self.norm_av = nn.RMSNorm(width, elementwise_affine=True)
        self.proj = nn.Linear(width, width, bias=False)
        self.rab = RelativeBias()

    def _attend(self, x, q, k, v, u, bias, mask):
        """(B, H, Tq, dh) queries against (B, H, Tk, dh) keys/values -> the block's residual update (B, Tq, d)."""
        b, t, d = x.shape
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
        weights = F.silu(scores).masked_fill(~mask, 0.0) / self.max_seq_len
        drop = self.dropout if self.training else 0.0
        weights = F.dropout(weights, drop, self.training)
        av = (weights @ v).transpose(1, 2).reshape(b, t, d)
        return F.dropout(self.proj(self.norm_av(av) * u), drop, self.training)

    def _uvqk(self, x):
        b, t, d = x.shape
        u, v, q, k = F.silu(self.uvqk(self.norm1(x))).split(d, dim=-1)
        heads = (lambda z: z.view(b, t, self.heads, d // self.heads).transpose(1, 2))
        return u, heads(v), heads(q), heads(k)

    def forward(self, x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        """x (B, T, d), ts (B, T) event times (right padding repeats the last time)."""
        t = x.shape[1]
        u, v, q, k = self._uvqk(x)
        pos = torch.arange(t, device=x.device)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        return x + self._attend(x, q, k, v, u, self.rab(pos, pos, ts, ts), mask)

    def step(self, x: torch.Tensor, ts: torch.Tensor, past: tuple | None):
        """Serving's incremental encoding: new tokens x (B, T, d) at times ts (B, T) after the cached (keys, values,
        times) of P earlier events -> (x, the cache of all P + T events). Equal to forward on the whole window."""
        t = x.shape[1]
        u, v, q, k = self._uvqk(x)
        if past is not None:
            k, v, ts_all = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2), torch.cat([past[2], ts], 1)
        else:
            ts_all = ts
        p = k.shape[2] - t
        q_pos = torch.arange(p, p + t, device=x.device)
        k_pos = torch.arange(p + t, device=x.device)
        mask = torch.ones(t, p + t, dtype=torch.bool, device=x.device).tril(diagonal=p)
        return x + self._attend(x, q, k, v, u, self.rab(q_pos, k_pos, ts, ts_all), mask), (k, v, ts_all)
