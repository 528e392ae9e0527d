import math

import pytest
import torch

from genrec.features import LAUNCH_UNKNOWN, NUM_AGE_BUCKETS, catalogue_age_bias, catalogue_age_bias_grad
from genrec.flops import comparison, training_flops_per_token
from genrec.objectives import (chunked_full_softmax_loss, context_titles, draw_id_mask, full_softmax_loss,
                               logq_correction, merge_duplicate_targets, mtp_targets, normalise,
                               sampled_softmax_loss, seen_in_context, utility_buckets)

HOUR = 3600.0


def test_mtp_weights_on_a_hand_made_sequence():
    # Events at 0 h, 1 h, 3 h, 3 h (utility 2), then padding. k = 3, half-life 2 h.
    items = torch.tensor([[11, 12, 13, 14, 0]])
    ts = torch.tensor([[0, 3600, 3 * 3600, 3 * 3600, 3 * 3600]])
    utils = torch.tensor([[1.0, 1.0, 1.0, 2.0, 0.0]])
    targets, weights = mtp_targets(items, ts, utils, k=3, half_life_s=2 * HOUR)
    assert targets[0].tolist() == [[12, 13, 14], [13, 14, 0], [14, 0, 0], [0, 0, 0]]
    w = weights[0]
    # position 0 (t = 0 h): 1 h -> 2^-0.5; 3 h -> 2^-1.5; 3 h with utility 2 -> 2 * 2^-1.5
    assert w[0].tolist() == pytest.approx([2 ** -0.5, 2 ** -1.5, 2 * 2 ** -1.5])
    # position 1 (t = 1 h): 2 h -> 0.5; 2 h with utility 2 -> 1.0; nothing third
    assert w[1].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert w[2].tolist() == pytest.approx([2.0, 0.0, 0.0]) and w[3].tolist() == [0, 0, 0]
    # k = 1 is next-event prediction: one target per position, weight normalised to 1
    t1, w1 = mtp_targets(items, ts, utils, k=1, half_life_s=2 * HOUR)
    keep, wn = normalise(w1.flatten(0, 1))
    assert t1[0, :, 0].tolist() == [12, 13, 14, 0] and keep.tolist() == [True, True, True, False]
    assert wn.flatten().tolist() == [1.0, 1.0, 1.0]


def test_mtp_without_decay_and_duplicate_targets_merge():
    items = torch.tensor([[1, 2, 2, 3]])
    ts = torch.tensor([[0, 10, 20, 30]])
    targets, weights = mtp_targets(items, ts, torch.ones(1, 4), k=3, half_life_s=None)
    assert weights[0, 0].tolist() == [1, 1, 1]
    t, w = merge_duplicate_targets(targets[0], weights[0])
    assert t[0].tolist() == [2, 0, 3] and w[0].tolist() == [2.0, 0.0, 1.0]  # title 2 once, with both weights


def test_horizon_objective_skips_the_next_events_and_keeps_its_time_window():
    # Events at 0, 1, 2, 30, 50, 80 h; a task looking 24-72 h ahead, after skipping the next event.
    items = torch.tensor([[1, 2, 3, 4, 5, 6]])
    ts = torch.tensor([[0, 1, 2, 30, 50, 80]]) * HOUR
    targets, weights = mtp_targets(items, ts, torch.ones(1, 6), k=3, half_life_s=None, skip=1,
                                   min_dt_s=24 * HOUR, max_dt_s=72 * HOUR)
    # dt counts from the request, the event after the position. Position 0 (request: 2 at 1 h): skips 2; 3 (1 h
    # later) is too soon, 4 (29 h) and 5 (49 h) count. Position 1 (request: 3 at 2 h): 4 (28 h) and 5 (48 h) count,
    # 6 (78 h) is too late. Position 2 (request: 4 at 30 h): 5 (20 h) too soon, 6 (50 h) counts. Position 3
    # (request: 5 at 50 h): 6 (30 h) counts. Position 4: nothing after the skip.
    assert targets[0].tolist() == [[0, 4, 5], [4, 5, 0], [0, 6, 0], [6, 0, 0], [0, 0, 0]]
    assert weights[0].tolist() == [[0, 1, 1], [1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]]


def test_a_retrain_on_its_new_window_targets_only_the_new_events():
    # Events at 0, 1, 2, 3, 4 h; the new window starts at 2 h: the events before it are context only.
    items, ts = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[0, 1, 2, 3, 4]]) * HOUR
    targets, weights = mtp_targets(items, ts, torch.ones(1, 5), k=2, half_life_s=None, targets_from=2 * HOUR)
    # Position 0 (context: title 1) would predict 2 and 3: only 3 (at 2 h) is new. Positions 1-3 predict from 3 on.
    assert targets[0].tolist() == [[0, 3], [3, 4], [4, 5], [5, 0]]
    assert weights[0].tolist() == [[0, 1], [1, 1], [1, 1], [1, 0]]
    everything, _ = mtp_targets(items, ts, torch.ones(1, 5), k=2, half_life_s=None)
    assert everything[0, 0].tolist() == [2, 3]


def test_full_softmax_multilabel_by_hand():
    logits = torch.tensor([[float("-inf"), 1.0, 2.0, 0.0]])
    targets, weights = torch.tensor([[1, 2]]), torch.tensor([[0.25, 0.75]])
    lse = math.log(math.e + math.e ** 2 + 1)
    expected = -(0.25 * (1 - lse) + 0.75 * (2 - lse))
    assert full_softmax_loss(logits, targets, weights).item() == pytest.approx(expected)


@pytest.mark.parametrize("chunk_logits", [1, 7 * 9, 1 << 24])  # a row a chunk, 7 rows, every row at once
def test_chunked_full_softmax_equals_the_materialised_one_with_its_gradients(chunk_logits):
    # 10 positions, 8 titles + padding, 2 targets each (one with no weight), the title-age bias, titles blocked for
    # every row (padding, title 5: no training events) and per row (the context, never the row's own target).
    g = torch.Generator().manual_seed(0)
    rows, titles, dim = 10, 9, 4
    q = torch.randn(rows, dim, generator=g, requires_grad=True)
    items = torch.randn(titles, dim, generator=g, requires_grad=True)
    age = torch.randn(NUM_AGE_BUCKETS, generator=g, requires_grad=True)
    targets = torch.tensor([[1, 2], [3, 0], [4, 6], [7, 8], [2, 1], [8, 0], [6, 4], [1, 3], [2, 7], [3, 6]])
    weights = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.2, 0.8], [0.9, 0.1], [0.5, 0.5], [1.0, 0.0], [0.3, 0.7],
                            [0.6, 0.4], [0.1, 0.9], [0.5, 0.5]])
    launch = torch.tensor([LAUNCH_UNKNOWN, 0, 3600, 86400, 10 ** 6, 10 ** 7, 200, 5 * 10 ** 6, 50_000])
    order = torch.argsort(launch, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(titles)
    request = torch.randint(10 ** 5, 10 ** 8, (rows,), generator=g)
    blocked = torch.zeros(titles, dtype=torch.bool)
    blocked[[0, 5]] = True
    seen = torch.rand(rows, titles, generator=g) < 0.3
    seen.scatter_(1, targets, False)

    def bias(a, b, w):
        return catalogue_age_bias(w, request[a:b], launch[order], inverse)

    logits = q @ items.t() + bias(0, rows, age)
    expected = full_softmax_loss(logits.masked_fill(blocked | seen, float("-inf")), targets, weights)
    expected_grads = torch.autograd.grad(expected, (q, items, age))
    def bias_grad(a, b, g):
        return catalogue_age_bias_grad(g, request[a:b], launch[order], inverse)

    loss = chunked_full_softmax_loss(q, items, targets, weights, blocked, lambda a, b: seen[a:b], age, bias,
                                     bias_grad, chunk_logits=chunk_logits)
    grads = torch.autograd.grad(2.0 * loss, (q, items, age))  # the upstream gradient scales all three
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, 2.0 * want, rtol=1e-5, atol=1e-6)


def test_chunked_full_softmax_in_bfloat16_and_without_a_graph():
    # As on a GPU trained in bfloat16: gradients come back in the inputs' dtype, near the float32 ones (bfloat16
    # logits carry ~3 significant digits). Under no_grad the value is the same and no gradient is asked for.
    g = torch.Generator().manual_seed(1)
    q32, items32 = torch.randn(40, 8, generator=g), torch.randn(30, 8, generator=g)
    targets, weights = torch.randint(1, 30, (40, 1), generator=g), torch.ones(40, 1)
    blocked = torch.zeros(30, dtype=torch.bool)
    blocked[0] = True
    grads = {}
    for dtype in (torch.float32, torch.bfloat16):
        q, items = q32.to(dtype).clone().requires_grad_(), items32.to(dtype).clone().requires_grad_()
        loss = chunked_full_softmax_loss(q, items, targets, weights, blocked, chunk_logits=7 * 30)
        loss.backward()
        assert loss.dtype == torch.float32 and q.grad.dtype == dtype and items.grad.dtype == dtype
        grads[dtype] = (loss.item(), q.grad.float(), items.grad.float())
        with torch.no_grad():
            assert chunked_full_softmax_loss(q, items, targets, weights, blocked).item() == pytest.approx(loss.item())
    (loss32, gq32, gi32), (loss16, gq16, gi16) = grads[torch.float32], grads[torch.bfloat16]
    assert loss16 == pytest.approx(loss32, rel=1e-2)
    torch.testing.assert_close(gq16, gq32, rtol=0.05, atol=2e-3)
    torch.testing.assert_close(gi16, gi32, rtol=0.05, atol=2e-3)


def test_chunked_full_softmax_without_bias_or_context():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    items = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, -1.0]], requires_grad=True)
    targets, weights = torch.tensor([[1], [2]]), torch.ones(2, 1)
    blocked = torch.tensor([True, False, False])
    # Row 0: logits 1, 2 -> -log(e / (e + e^2)); row 1: 2, -2 -> -log(e^-2 / (e^2 + e^-2)).
    expected = (-(1 - math.log(math.e + math.e ** 2)) - (-2 - math.log(math.e ** 2 + math.e ** -2))) / 2
    loss = chunked_full_softmax_loss(q, items, targets, weights, blocked, chunk_logits=3)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    p0 = torch.softmax(torch.tensor([1.0, 2.0]), 0)
    p1 = torch.softmax(torch.tensor([2.0, -2.0]), 0)
    # dL/dq_0 = (p0 - onehot(title 1)) @ items[1:] / 2
    want_q0 = ((p0 - torch.tensor([1.0, 0.0])) @ items[1:].detach()) / 2
    want_q1 = ((p1 - torch.tensor([0.0, 1.0])) @ items[1:].detach()) / 2
    torch.testing.assert_close(q.grad, torch.stack([want_q0, want_q1]))
    assert items.grad[0].abs().sum() == 0  # padding never competes


def test_sampled_softmax_masks_accidental_hits():
    pos = torch.tensor([[2.0]])
    neg = torch.tensor([[1.0, 5.0]])
    negatives = torch.tensor([4, 7])
    loss = sampled_softmax_loss(pos, torch.tensor([[7]]), torch.tensor([[1.0]]), neg, negatives)
    # negative 7 is the target itself: only negative 4 competes
    assert loss.item() == pytest.approx(-(2 - math.log(math.e ** 2 + math.e)))


def test_logq_correction_makes_sampled_softmax_estimate_the_full_loss():
    """A known, skewed sampler: with log(S q) subtracted the sampled loss estimates the full one; without, it is far
    too optimistic."""
    gen = torch.Generator().manual_seed(0)
    n, draws = 1000, 50
    logits = torch.randn(n, generator=gen)
    q = torch.softmax(torch.randn(n, generator=gen), 0)  # the sampler's probabilities
    target = 3
    full = (torch.logsumexp(logits, 0) - logits[target]).item()
    corrected, plain = [], []
    for _ in range(400):
        neg_ids = torch.multinomial(q, draws, replacement=True, generator=gen)
        neg = logits[neg_ids][None]
        args = (logits[target].view(1, 1), torch.tensor([[target]]), torch.ones(1, 1))
        plain.append(sampled_softmax_loss(*args, neg, neg_ids).item())
        corrected.append(sampled_softmax_loss(*args, logq_correction(neg, q[neg_ids].log(), draws), neg_ids).item())
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert abs(mean(corrected) - full) < 0.15, (mean(corrected), full)
    assert full - mean(plain) > 1.0, (mean(plain), full)


def test_the_contexts_titles_by_hand():
    # Window 0: titles 3, 1, 3, then padding; window 1: 2, 4, 0, 0. Titles 0..4 (0 = padding, never seen).
    items = torch.tensor([[3, 1, 3, 0], [2, 4, 0, 0]])
    # Rows: (window 0, position 0), (0, 1), (1, 1), (0, 3) as flat indices b x 4 + t: 0, 1, 5, 3.
    ctx = context_titles(items, torch.tensor([0, 1, 5, 3]))
    assert ctx.tolist() == [[3, 0, 0, 0], [3, 1, 0, 0], [2, 4, 0, 0], [3, 1, 3, 0]]
    seen = seen_in_context(ctx, 5)
    assert seen.tolist() == [[False, False, False, True, False],  # context [3]
                             [False, True, False, True, False],  # context [3, 1]
                             [False, False, True, False, True],  # context [2, 4]
                             [False, True, False, True, False]]  # context [3, 1, 3]
    # Sampled negatives [4, 3, 2, 3, 0] (unsorted, a repeat, padding): the same answers for those columns only.
    negatives = torch.tensor([4, 3, 2, 3, 0])
    assert seen_in_context(ctx, 0, negatives).tolist() == seen[:, negatives].tolist()


def test_id_mask_rate_over_many_draws():
    gen = torch.Generator().manual_seed(0)
    rates = [draw_id_mask(10_001, 0.12, gen).float()[1:].mean().item() for _ in range(50)]
    assert sum(rates) / len(rates) == pytest.approx(0.12, abs=0.005)
    assert not draw_id_mask(100, 0.9, gen)[0]  # padding never masked
    assert draw_id_mask(100, 0.0, gen) is None


def test_utility_buckets():
    assert utility_buckets(torch.tensor([0.0, 0.5, 1.0, 4.5, 5.0, 100.0, -1.0]), 21).tolist() == [0, 1, 2, 9, 10, 20,
                                                                                                     0]


def test_flops_reproduce_the_paper_illustration():
    full, sampled, projected = comparison(6, 1024, 512, 1_000_000, 0.01, 8, convention="paper")
    assert full["total"] == pytest.approx(1.26e10, rel=0.10)
    assert projected["total"] == pytest.approx(3.56e8, rel=0.10)
    assert projected["vs_full"] == pytest.approx(35.5, rel=0.10)
    assert full["total"] > sampled["total"] > projected["total"]


def test_flops_by_hand_genrec_convention():
    # 1 layer, d = 2, T = 3, 10 titles: backbone 6 * (4*4 + 2*4*4 + 2*3*2) = 6 * 60 = 360; full decoding 6 * 2 * 10
    f = training_flops_per_token(1, 2, 3, 10, "full", convention="genrec")
    assert (f.backbone, f.decoding) == (360.0, 120.0)
    # sampled 20% with a d/2 head: projection 6 * 2 * 1 + scoring 6 * 1 * (1 + 2)
    f = training_flops_per_token(1, 2, 3, 10, "sampled", 0.2, 2, convention="genrec")
    assert f.decoding == pytest.approx(12 + 18)


def test_mfu_against_the_devices_dense_bf16_peak():
    from genrec.flops import mfu, peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H200") == 989.0 and peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("cpu") is None and peak_tflops("Some Future GPU") is None  # no MFU against a made-up peak
    # 8 H100s together doing 3,560 model TFLOP/s: 3560 / (8 x 989) = 45%
    assert mfu(3560.0, 989.0, 8) == pytest.approx(0.44995, abs=1e-5)


def test_training_cycle_by_hand():
    from genrec.flops import training_cycle

    # 3.6e6 tokens at 1,000/s per GPU on 2 GPUs keeping half each: 3.6e6 / 1,000 / 3,600 = 1 h wall, 2 GPU-hours
    assert training_cycle(3.6e6, 1000.0, 2, 0.5) == {"gpus": 2, "wall_h": 1.0, "gpu_hours": 2.0}
    assert training_cycle(7.2e6, 1000.0, 1)["wall_h"] == 2.0
    with pytest.raises(ValueError):
        training_cycle(1e6, 1000.0, 8, 1.5)
