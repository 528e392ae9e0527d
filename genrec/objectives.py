"""The training objective as pure tensor functions: multi-token targets, (sampled) softmax, logQ, id masking,
the context's titles left out of the softmax.

Kept apart from the network so each piece is tested on hand-computed cases (tests/test_objectives.py).

Multi-token prediction (MTP): position t of a window is trained to put probability on each of the next k events,
event t + j weighted by ``utility x exp(-ln2 x dt / half_life)`` with dt the time from event t (the context's last
event) to event t + j. The weights of a position are normalised to sum to 1, so k = 1 is exactly next-token
cross-entropy. A model trained this way ranks well even when serving reads a context that is a day or two stale.
"""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)
NEG_INF = float("-inf")


def mtp_targets(items: torch.Tensor, ts: torch.Tensor, utils: torch.Tensor, k: int,
                half_life_s: float | None, skip: int = 0, min_dt_s: float = 0.0,
                max_dt_s: float | None = None,
                targets_from: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and unnormalised weights for windows of T + 1 events (right-padded with item 0).

    items, ts, utils: (B, T + 1). Returns targets (B, T, k) (0 = none) and weights (B, T, k) for the T input
    positions: target j of position t is event t + 1 + skip + j when it lies in the window. A long-horizon task's
    objective skips the next `skip` events and keeps only events with min_dt_s <= dt < max_dt_s, dt measured from
    event t + 1 (the request, as evaluation measures it: the event a user arrives with). The half-life decay counts
    from event t, the context's last event. targets_from: only events at or after this Unix time are targets (a
    retrain on its new window: older events are context only).
    """
    b, span = items.shape
    t = span - 1
    targets = items.new_zeros(b, t, k)
    weights = torch.zeros(b, t, k, dtype=torch.float32, device=items.device)
    ctx_ts = ts[:, :t].double()
    for j in range(k):
        o = 1 + skip + j  # offset of this target from its position
        n = t + 1 - o  # positions whose target is still inside the window
        if n <= 0:
            break
        tgt = items[:, o:o + n]
        w = utils[:, o:o + n].float().clamp(min=0.0)
        if half_life_s:
            dt = (ts[:, o:o + n].double() - ctx_ts[:, :n]).clamp(min=0.0)
            w = w * torch.exp(-LN2 * dt / half_life_s).float()
        valid = (tgt > 0) & (items[:, :n] > 0)
        if targets_from is not None:
            valid &= ts[:, o:o + n] >= targets_from
        if min_dt_s > 0 or max_dt_s is not None:
            since_request = ts[:, o:o + n].double() - ts[:, 1:1 + n].double()
            if min_dt_s > 0:
                valid &= since_request >= min_dt_s
            if max_dt_s is not None:
                valid &= since_request < max_dt_s
        targets[:, :n, j] = torch.where(valid, tgt, torch.zeros_like(tgt))
        weights[:, :n, j] = torch.where(valid, w, torch.zeros_like(w))
    return targets, weights


def merge_duplicate_targets(targets: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A title that occurs twice among a position's k targets is one label with the summed weight.

    targets, weights: (P, k). Later duplicates get target 0 and weight 0 (so a title enters the softmax once).
    """
    k = targets.shape[-1]
    if k == 1:
        return targets, weights
    same = targets[:, :, None] == targets[:, None, :]  # (P, k, k): [p, i, j] target i == target j
    earlier = torch.tril(torch.ones(k, k, dtype=torch.bool, device=targets.device), diagonal=-1)  # j < i
    dup = (same & earlier).any(-1) | (targets == 0)  # i repeats an earlier target
    # Weight of the first occurrence = sum of the weights of every occurrence of that title.
    summed = (same.float() * weights[:, None, :]).sum(-1)
    weights = torch.where(dup, torch.zeros_like(weights), summed)
    targets = torch.where(dup, torch.zeros_like(targets), targets)
    return targets, weights


def normalise(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, k) weights -> (rows with any weight, weights of those rows summing to 1)."""
    total = weights.sum(-1)
    keep = total > 0
    return keep, weights[keep] / total[keep, None]


def multilabel_loss(pos_logits: torch.Tensor, weights: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Mean over positions of -sum_j w_j log p_j, with log p_j = pos_logit_j - lse (lse: the log partition)."""
    logp = pos_logits - lse[:, None]
    return -(weights * torch.where(weights > 0, logp, torch.zeros_like(logp))).sum(-1).mean()


def full_softmax_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """logits (P, n + 1) over the whole catalogue (column 0, padding, already -inf); targets/weights (P, k).

    The definition, on materialised logits: training computes it in chunks (chunked_full_softmax_loss), which the
    tests and benchmarks/full_softmax.py hold to this."""
    logits = logits.float()
    return multilabel_loss(logits.gather(1, targets), weights, torch.logsumexp(logits, dim=-1))


# Logits scored at once by chunked_full_softmax_loss. On CPU 2^22 (16 MiB of float32) ran fastest of 2^20-2^26 at
# 1.7k-24k titles (benchmarks/full_softmax.py's shape). An accelerator gets 2^26: a chunk costs a dozen kernel launches
# there, so fewer, larger chunks; with the age bias and its backward a chunk holds several temporaries of that size
# (a few GiB in all). Not measured on one yet.
CHUNK_LOGITS_CPU = 1 << 22
CHUNK_LOGITS_ACCELERATOR = 1 << 26


class _ChunkedFullSoftmax(torch.autograd.Function):
    """full_softmax_loss of q @ items.T (+ a bias, - blocked titles), one chunk of rows at a time, its gradients
    computed on the way (as fused linear-cross-entropy kernels do): the (P, n + 1) logits never exist whole, and the
    softmax's backward is one in-place exp and a scatter instead of autograd's passes over every logit.

    Every row must have a title it may score (its weighted targets are known titles): a row with all titles blocked
    has no softmax, and its NaN would reach every title's gradient."""

    @staticmethod
    def forward(ctx, q, items, bias_weights, targets, weights, blocked, row_blocked, row_bias, row_bias_grad,
                chunk_rows, want):
        want_q, want_items, want_bias = want  # which gradients the caller's graph needs
        rows = q.shape[0]
        g_q = torch.empty_like(q) if want_q else None
        # Sums over many chunks, kept in float32 (bfloat16 would lose the small ones).
        g_items = torch.zeros(items.shape, dtype=torch.float32, device=items.device) if want_items else None
        g_bias = torch.zeros(bias_weights.shape, dtype=torch.float32, device=q.device) if want_bias else None
        loss_sum = torch.zeros((), dtype=torch.float32, device=q.device)
        valid = weights > 0
        # -inf for blocked titles, added by the matmul itself (addmm) where no per-row bias needs a pass of its own.
        column_bias = torch.zeros(items.shape[0], dtype=torch.float32, device=q.device).masked_fill_(blocked, NEG_INF)
        for start in range(0, rows, chunk_rows):
            stop = min(start + chunk_rows, rows)
            q_chunk = q[start:stop]
            logit_bias = column_bias
            if row_bias is not None:
                logit_bias = row_bias(start, stop, bias_weights).float() + column_bias
            if q.dtype == torch.float32:
                logits = torch.addmm(logit_bias, q_chunk, items.t())
            else:  # half precision: the bias and the softmax in float32
                logits = (q_chunk @ items.t()).float().add_(logit_bias)
            if row_blocked is not None:
                logits.masked_fill_(row_blocked(start, stop), NEG_INF)
            w, t = weights[start:stop].float(), targets[start:stop]
            target_logits = logits.gather(1, t)
            top = logits.amax(-1, keepdim=True)
            probs = logits.sub_(top).exp_()  # unnormalised: softmax x partition
            partition = probs.sum(-1, keepdim=True)
            logp = target_logits - top - partition.log()
            loss_sum -= (w * torch.where(valid[start:stop], logp, torch.zeros_like(logp))).sum()
            if not any(want):
                continue
            # d(mean loss)/d logit = (softmax x sum_j w_j - w at the targets) / P; a blocked title's softmax is 0.
            probs.mul_(w.sum(-1, keepdim=True) / (rows * partition)).scatter_add_(1, t, -w / rows)
            g = probs.to(q.dtype)
            if want_q:
                torch.mm(g, items, out=g_q[start:stop])
            if want_items and q.dtype == torch.float32:
                g_items.addmm_(g.t(), q_chunk)
            elif want_items:  # the half-precision matmul, summed in float32
                g_items += (g.t() @ q_chunk).float()
            if want_bias:
                g_bias += row_bias_grad(start, stop, probs)
        ctx.save_for_backward(g_q, g_items, g_bias)
        ctx.dtypes = (q.dtype, items.dtype, None if bias_weights is None else bias_weights.dtype)
        return loss_sum / rows

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        # The gradients of q, items and bias_weights found in forward, times the upstream one, in the inputs' dtypes;
        # the other inputs (targets, weights, masks, callables, chunk size, flags) get none.
        found = tuple(None if g is None else (g * grad).to(dtype) for g, dtype in zip(ctx.saved_tensors, ctx.dtypes))
        return (*found, None, None, None, None, None, None, None, None)


def chunked_full_softmax_loss(q: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                              blocked: torch.Tensor, row_blocked=None, bias_weights: torch.Tensor | None = None,
                              row_bias=None, row_bias_grad=None, chunk_logits: int | None = None) -> torch.Tensor:
    """full_softmax_loss(q @ items.T + bias, with blocked titles at -inf), the same value and gradients, in chunks of
    rows (memory O(chunk x titles) instead of O(P x titles)).

    q (P, e) queries; items (n + 1, e) the catalogue's output embeddings; targets/weights (P, k); blocked (n + 1,) bool,
    titles no row may score (padding, titles without training events); row_blocked(start, stop) -> (rows, n + 1)
    bool, titles blocked for those rows only (their context); row_bias(start, stop, bias_weights) -> (rows, n + 1),
    a score bias (the title-age bias), and row_bias_grad(start, stop, g) -> the gradient of sum(g x that bias) in
    bias_weights, for g (rows, n + 1).
    """
    if (row_bias is None) != (row_bias_grad is None) or (row_bias is None) != (bias_weights is None):
        raise ValueError("a row bias needs its weights, its values and its gradient: all three or none")
    if chunk_logits is None:
        chunk_logits = CHUNK_LOGITS_CPU if q.device.type == "cpu" else CHUNK_LOGITS_ACCELERATOR
    chunk_rows = max(1, chunk_logits // max(items.shape[0], 1))
    # The gradients are computed in forward, so only those a backward will ask for (none under torch.no_grad).
    graph = torch.is_grad_enabled()
    want = (graph and q.requires_grad, graph and items.requires_grad,
            graph and bias_weights is not None and bias_weights.requires_grad)
    return _ChunkedFullSoftmax.apply(q, items, bias_weights, targets, weights, blocked, row_blocked, row_bias,
                                     row_bias_grad, chunk_rows, want)


def logq_correction(neg_logits: torch.Tensor, log_q: torch.Tensor, num_draws: int) -> torch.Tensor:
    """Negatives' logits minus log(expected draws) = log(num_draws x q): the importance weights that make the sampled
    partition function an estimate of the full one (Bengio & Senecal 2008; Yi et al. 2019 for in-batch negatives).

    With a uniform sampler over n titles this shifts every negative by log(n / num_draws): sampled softmax then
    estimates the full-softmax loss instead of a much easier one.
    """
    return neg_logits - (log_q + math.log(num_draws))[None, :]


def sampled_softmax_loss(pos_logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                         neg_logits: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """pos_logits/targets/weights (P, k); neg_logits (P, S) for negative ids (S,) shared by the batch.

    A negative that is one of the row's own targets (an accidental hit) is masked out, so a title is never pushed
    down for being the answer. The partition runs over the row's targets and the negatives.
    """
    pos_logits = pos_logits.float()
    hit = (negatives[None, :, None] == targets[:, None, :]).any(-1)  # (P, S)
    neg = neg_logits.float().masked_fill(hit, NEG_INF)
    pos_in = pos_logits.masked_fill(weights <= 0, NEG_INF)
    lse = torch.logsumexp(torch.cat([pos_in, neg], dim=1), dim=-1)
    return multilabel_loss(pos_logits, weights, lse)


def context_titles(items: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The titles in each row's context: items (B, T) windows, rows (P,) flat indices b x T + t (as (B, T) flattened)
    -> (P, T), events 0..t of window b, padding (0) after position t."""
    width = items.shape[1]
    ctx = items[rows // width]
    after = torch.arange(width, device=items.device)[None, :] > (rows % width)[:, None]
    return ctx.masked_fill(after, 0)


def seen_in_context(ctx: torch.Tensor, num_titles: int, columns: torch.Tensor | None = None) -> torch.Tensor:
    """(P, C) True where a column's title is in the row's context (ctx: (P, T) from context_titles; padding 0 is
    never seen). Columns are every title id 0..num_titles - 1 (the full softmax's catalogue), or the given ids
    `columns` (C,), repeats allowed (sampled negatives): found by binary search, so memory stays O(P x (T + C))."""
    p = ctx.shape[0]
    if columns is None:
        seen = torch.zeros(p, num_titles, dtype=torch.bool, device=ctx.device).scatter_(1, ctx, True)
        seen[:, 0] = False
        return seen
    ids = torch.sort(columns).values
    slot = torch.searchsorted(ids, ctx).clamp(max=len(ids) - 1)  # where each context title would sit among ids
    hit = (ids[slot] == ctx) & (ctx > 0)
    found = torch.zeros(p, len(ids) + 1, dtype=torch.bool, device=ctx.device)
    found.scatter_(1, torch.where(hit, slot, len(ids)), True)  # a miss lands in the spare last column
    return found[:, torch.searchsorted(ids, columns)]  # each column read at its id's first sorted slot


def draw_id_mask(num_rows: int, rate: float, generator: torch.Generator | None = None,
                 device="cpu") -> torch.Tensor | None:
    """Collaborative-embedding masking: a (num_rows,) bool mask, each title hidden with probability `rate`.

    One draw per training step and per title (not per occurrence), so a masked title is cold everywhere in the
    batch, on the input and the output side, as a title launched after the cutoff is. Row 0 (padding) is never masked.
    """
    if rate <= 0:
        return None
    mask = torch.rand(num_rows, generator=generator, device=device) < rate
    mask[0] = False
    return mask


def utility_buckets(utils: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Half-unit utility buckets: a 1-5 star rating -> 2..10, a watch fraction -> 0..2; clipped."""
    return torch.round(utils.float().clamp(min=0.0) * 2).long().clamp(max=num_buckets - 1)

