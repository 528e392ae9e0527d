"""The HSTU block (genrec.hstu): bias buckets by hand, shapes, causality, exact parameter counts, the incremental
encoder serving uses, and the pieces the transformer block shares (decoding head, MTP, semantic tower)."""

import math

import pytest
import torch

from genrec.hstu import POSITION_BUCKETS, TIME_BUCKETS, HSTUBlock, hstu_params, position_buckets, time_buckets
from genrec.model import GenRec, ModelSpec, Objective, backbone_params, count_parameters, resolve_shape
from genrec.presets import HSTU_PRESETS, PRESET_TARGETS


def test_bias_buckets_by_hand():
    d = torch.tensor([0, 1, 15, 16, 17, 100, 4095, 10**6])
    # 0..15 exact; then 16 + floor(log(d / 16) / log(4096 / 16) * 16)
    want = [0, 1, 15, 16, 16, 16 + int(math.log(100 / 16) / math.log(256) * 16), 31, 31]
    assert position_buckets(d).tolist() == want
    assert time_buckets(torch.tensor([-5, 0, 1, 2, 3, 86_400, 10**12])).tolist() == [0, 0, 1, 1, 2, 16, 31]


def test_the_bias_lookup_has_the_embedding_gradient():
    from genrec.hstu import BucketLookup

    weights = torch.randn(TIME_BUCKETS, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, TIME_BUCKETS, (3, 5, 5))
    grad = torch.randn(3, 5, 5, dtype=torch.float64)
    (fast,) = torch.autograd.grad((BucketLookup.apply(weights, idx) * grad).sum(), weights)
    (plain,) = torch.autograd.grad((weights[idx] * grad).sum(), weights)
    assert torch.allclose(fast, plain)


def test_block_parameters_are_counted_exactly_and_presets_keep_their_size():
    block = HSTUBlock(16, 2, 0.0, 8)
    assert sum(p.numel() for p in block.parameters()) == hstu_params(16) == 5 * 256 + 32 + POSITION_BUCKETS + TIME_BUCKETS
    assert backbone_params(3, 16, "hstu") == 3 * hstu_params(16) + 16
    for name, (layers, width, heads) in HSTU_PRESETS.items():
        assert resolve_shape(name, block="hstu") == (layers, width, heads) and width % heads == 0
        assert abs(backbone_params(layers, width, "hstu") / PRESET_TARGETS[name] - 1) < 0.1, name
    with torch.device("meta"):
        layers, width, heads = HSTU_PRESETS["1b"]
        model = GenRec(ModelSpec(num_items=1000, layers=layers, width=width, heads=heads, max_seq_len=128,
                                 block="hstu"))
    assert count_parameters(model)["backbone"] == backbone_params(layers, width, "hstu")


def _tiny(**kw):
    torch.manual_seed(0)
    return GenRec(ModelSpec(num_items=20, layers=2, width=16, heads=2, max_seq_len=8, dropout=0.0,
                            projection_ratio=2, block="hstu", **kw))


def _inputs(items):
    items = torch.as_tensor(items)
    z = torch.zeros_like(items)
    ts = 1_000_000 + torch.arange(items.shape[1]).expand_as(items) * 3600
    return items, z, z, torch.ones(items.shape), ts


def test_shapes_causality_and_the_time_bias_reads_only_the_context():
    model = _tiny().eval()
    # give the bias tables values, so the time bias matters
    with torch.no_grad():
        for block in model.backbone.blocks:
            block.rab.time.normal_()
            block.rab.position.normal_()
    items, a, g, u, ts = _inputs([[3, 4, 5, 6, 0, 0]])
    h = model.hidden(items, a, g, u, ts=ts)
    assert h.shape == (1, 6, 16)
    # a later event (its title or its time) changes nothing at earlier positions
    items2, ts2 = items.clone(), ts.clone()
    items2[0, 3], ts2[0, 3] = 9, ts[0, 3] + 10**6
    h2 = model.hidden(items2, a, g, u, ts=ts2)
    assert torch.allclose(h[0, :3], h2[0, :3], atol=1e-6) and not torch.allclose(h[0, 3], h2[0, 3])
    # an earlier event's time does change the later positions (the relative time bias)
    ts3 = ts.clone()
    ts3[0, 0] -= 10**7
    assert not torch.allclose(model.hidden(items, a, g, u, ts=ts3)[0, 3], h[0, 3])
    with pytest.raises(ValueError, match="timestamps"):
        model.hidden(items, a, g, u)


def test_incremental_encoding_equals_the_whole_history():
    model = _tiny(title_age=True).eval()
    with torch.no_grad():
        for block in model.backbone.blocks:
            block.rab.time.normal_()
            block.rab.position.normal_()
    torch.manual_seed(1)
    items = torch.randint(1, 21, (1, 7))
    a, g = torch.randint(0, 3, (1, 7)), torch.randint(0, 20, (1, 7))
    u = torch.rand(1, 7) * 5
    ts = torch.cumsum(torch.randint(1, 10**5, (1, 7)), 1)
    now = ts[:, -1] + 60
    full = model.score_last(items, a, g, u, torch.tensor([7]), request_ts=now, ts=ts)
    q, cache = model.encode_step(items[:, :4], a[:, :4], g[:, :4], u[:, :4], ts=ts[:, :4])
    q, cache = model.encode_step(items[:, 4:], a[:, 4:], g[:, 4:], u[:, 4:], cache, ts=ts[:, 4:])
    assert torch.allclose(model.score_queries(q, request_ts=now), full, atol=1e-5)


@pytest.mark.parametrize("decoding", ["full", "sampled"])
def test_hstu_trains_with_the_projected_head_mtp_and_the_semantic_tower(decoding):
    model = _tiny(semantic=True)
    model.objective = Objective(decoding=decoding, mtp_k=2, half_life_s=7200.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    items = torch.randint(1, 21, (8, 9), generator=gen)
    batch = _inputs(items)
    losses = []
    for _ in range(40):
        negatives = torch.randint(1, 21, (10,), generator=gen) if decoding == "sampled" else None
        loss = model(*batch, negatives)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
