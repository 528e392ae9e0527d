import numpy as np
import pyarrow as pa
import pytest
import torch

from genrec.features import FeatureVocab, build_vocab, item_features
from genrec.model import (GenRec, ModelSpec, Objective, backbone_params, count_parameters,
                          item_features_placeholder)
from genrec.objectives import draw_id_mask
from genrec.presets import PRESET_TARGETS, PRESETS


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_backbone_matches_its_name(name):
    layers, width, heads = PRESETS[name]
    # Built on the meta device: the 1B preset allocates nothing.
    with torch.device("meta"):
        model = GenRec(ModelSpec(num_items=1000, layers=layers, width=width, heads=heads, max_seq_len=128))
    counts = count_parameters(model)
    assert counts["backbone"] == backbone_params(layers, width)  # the formula is exact
    assert abs(counts["backbone"] / PRESET_TARGETS[name] - 1) < 0.15
    assert width % heads == 0


def test_backbone_formula_by_hand():
    # 2 blocks of width 8: 2 * (12*64 + 2*8) + 8 = 2 * 784 + 8
    assert backbone_params(2, 8) == 1576
    model = GenRec(ModelSpec(num_items=5, layers=2, width=8, heads=2, max_seq_len=4))
    assert count_parameters(model)["backbone"] == 1576


def test_projected_head_scores_at_width_over_ratio():
    spec = ModelSpec(num_items=30, layers=1, width=64, heads=2, max_seq_len=4, projection_ratio=8)
    model = GenRec(spec)
    assert spec.out_dim == 8 and model.item_matrix().shape == (31, 8)
    assert model.items.id_out.weight.shape == (31, 8)  # the output table shrinks by r as well
    flat = GenRec(ModelSpec(num_items=30, layers=1, width=64, heads=2, max_seq_len=4, projection_ratio=1))
    assert flat.item_matrix().shape == (31, 64) and isinstance(flat.head, torch.nn.Identity)


CATALOGUE = pa.table({
    "item_id": [10, 20, 30, 40], "title": ["Space War (1999)", "Space War II (2001)", "Love Boat", "Love Boat 2"],
    "genres": [["Sci-Fi"], ["Sci-Fi", "Action"], ["Romance"], ["Romance"]], "year": [1999, 2001, None, 1980],
    "launch_ts": [0, 0, 0, 0], "text": ["", "", "sea", "sea"], "index": pa.array([1, 2, 3, 4], pa.int32())})


def _tiny(num_items=20, projection_ratio=2, **kw):
    torch.manual_seed(0)
    return GenRec(ModelSpec(num_items=num_items, layers=2, width=16, heads=2, max_seq_len=6, dropout=0.0,
                            projection_ratio=projection_ratio, **kw))


def _batch(items):
    items = torch.as_tensor(items)
    z = torch.zeros_like(items)
    ts = torch.arange(items.shape[1]).expand_as(items) * 3600
    return items, z, z, torch.ones(items.shape, dtype=torch.float32), ts


def test_causal_and_right_padding():
    model = _tiny().eval()
    items, z, _, utils, _ = _batch([[3, 4, 5, 0, 0, 0]])
    h1 = model.hidden(items, z, z, utils)
    items2 = items.clone()
    items2[0, 4] = 7  # a change after position 2 must not affect positions 0..2
    h2 = model.hidden(items2, z, z, utils)
    assert torch.allclose(h1[0, :3], h2[0, :3], atol=1e-6)
    assert not torch.allclose(h1[0, 4], h2[0, 4])
    scores = model.score_last(items, z, z, utils, torch.tensor([3]))
    assert scores.shape == (1, 21) and scores[0, 0] == float("-inf")
    expected = model.head(h1[0, 2]) @ model.item_matrix().t()
    assert torch.allclose(scores[0, 1:], expected[1:], atol=1e-5)


@pytest.mark.parametrize("decoding", ["full", "sampled", "in_batch"])
def test_k1_losses_are_next_event_cross_entropy(decoding):
    model = _tiny()
    model.objective = Objective(decoding=decoding)
    items, a, g, u, ts = _batch([[1, 2, 3, 4, 5, 6, 0]])
    h = model.head(model.hidden(items[:, :-1], a[:, :-1], g[:, :-1], u[:, :-1])[0, :5])  # position 5 has no target
    targets = items[0, 1:6]
    if decoding == "full":
        logits = h @ model.item_matrix().t()
        logits[:, 0] = float("-inf")
        expected = torch.nn.functional.cross_entropy(logits, targets)
        assert torch.allclose(model(items, a, g, u, ts), expected, atol=1e-5)
    elif decoding == "sampled":
        negatives = torch.tensor([7, 8, 3])  # 3 is an accidental hit for the position whose target is 3
        cand = torch.cat([targets[:, None], negatives.expand(5, 3)], 1)
        logits = (h[:, None, :] * model.items.encode_output(cand)).sum(-1)
        logits[1, 3] = float("-inf")
        expected = torch.nn.functional.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
        assert torch.allclose(model(items, a, g, u, ts, negatives), expected, atol=1e-5)
    else:  # in-batch: every other target of the batch is a negative
        logits = h @ model.items.encode_output(targets).t()
        expected = torch.nn.functional.cross_entropy(logits, torch.arange(5))
        assert torch.allclose(model(items, a, g, u, ts), expected, atol=1e-5)


def test_mtp_k_gt_1_spreads_the_target():
    model = _tiny()
    items, a, g, u, ts = _batch([[1, 2, 3, 4, 5, 6, 0]])
    model.objective = Objective(decoding="full", mtp_k=1)
    k1 = model(items, a, g, u, ts)
    model.objective = Objective(decoding="full", mtp_k=3, half_life_s=3600.0)
    k3 = model(items, a, g, u, ts)
    assert torch.isfinite(k3) and not torch.allclose(k1, k3)


@pytest.mark.parametrize("decoding", ["full", "sampled", "in_batch"])
def test_each_decoding_mode_trains(decoding):
    model = _tiny(activation_checkpointing=True)
    model.objective = Objective(decoding=decoding, mtp_k=2, half_life_s=7200.0, logq=decoding == "in_batch")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    items = torch.randint(1, 21, (8, 7), generator=gen)
    batch = _batch(items)
    losses = []
    for _ in range(60):
        negatives = torch.randint(1, 21, (10,), generator=gen) if decoding == "sampled" else None
        loss = model(*batch, negatives, draw_id_mask(21, 0.1, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_masked_and_unknown_titles_use_the_oov_embedding():
    model = _tiny(num_items=4, semantic=False).eval()
    oov = model.items.oov_out.weight[0]
    m = model.item_matrix()
    assert not torch.allclose(m[2], oov)
    mask = torch.tensor([False, False, True, False, False])
    assert torch.allclose(model.item_matrix(mask)[2], oov) and torch.allclose(model.item_matrix(mask)[1], m[1])


def test_cold_start_title_is_scored_from_metadata():
    vocab = build_vocab(CATALOGUE, text_buckets=64)
    spec = ModelSpec(num_items=4, layers=1, width=16, heads=2, max_seq_len=4, dropout=0.0, projection_ratio=2,
                     features=vocab.to_dict())
    torch.manual_seed(0)
    model = GenRec(spec).eval()
    known = torch.tensor([True, True, True, True, False])  # title 4 never appeared in training
    model.set_catalogue(item_features(CATALOGUE, vocab), known)
    m = model.item_matrix()
    assert torch.isfinite(m).all()
    # Its id row is never read: changing it changes nothing; changing its metadata does.
    with torch.no_grad():
        model.items.id_out.weight[4] += 5.0
    assert torch.allclose(model.item_matrix()[4], m[4])
    other = CATALOGUE.set_column(2, "genres", pa.array([["Sci-Fi"], ["Sci-Fi", "Action"], ["Romance"], ["Sci-Fi"]]))
    model.set_catalogue(item_features(other, vocab), known)
    assert not torch.allclose(model.item_matrix()[4], m[4])
    # Two cold titles with the same metadata score the same; the OOV id alone could not tell them apart.
    twins = pa.concat_tables([CATALOGUE, CATALOGUE.slice(3).set_column(6, "index", pa.array([5], pa.int32()))])
    model.set_catalogue(item_features(twins, vocab), torch.tensor([True, True, True, True, False, False]))
    m2 = model.item_matrix()
    assert m2.shape[0] == 6 and torch.allclose(m2[4], m2[5])


def test_item_features_by_hand():
    vocab = build_vocab(CATALOGUE, text_buckets=64)
    assert vocab.genres == ("Action", "Romance", "Sci-Fi")
    f = item_features(CATALOGUE, vocab)
    assert f.genres[2, :2].tolist() == [3, 1] and f.genres[0].sum() == 0
    # 5-year buckets from 1900: 1999 -> 20, 2001 -> 21, no year -> unknown (0), 1980 -> 17
    assert f.year.tolist() == [0, 20, 21, 0, 17]
    # "Space War (1999)": the year is dropped; space, war, "space war" -> 3 hashed n-grams, all shared with part II
    t1, t2 = set(f.tokens[1].tolist()) - {0}, set(f.tokens[2].tolist()) - {0}
    assert len(t1) == 3 and t1 < t2 and len(t2) == 5


def test_a_yearless_title_takes_no_year_from_its_launch_time():
    # Without a release date, launch_ts is the title's first event: for a cold title, after the training window.
    # Its year bucket must not reveal when that event happened (it stays unknown, whatever launch_ts says).
    later = CATALOGUE.set_column(CATALOGUE.schema.get_field_index("launch_ts"), "launch_ts",
                                 pa.array([0, 0, 2_000_000_000, 0], pa.int64()))
    vocab = build_vocab(CATALOGUE, text_buckets=64)
    assert item_features(later, vocab).year.tolist() == item_features(CATALOGUE, vocab).year.tolist()
    assert item_features(later, vocab).year[3] == 0


def test_full_softmax_leaves_untrained_titles_out_of_the_partition():
    model = _tiny(num_items=6)
    model.objective = Objective(decoding="full")
    known = torch.tensor([True, True, True, True, True, False, False])  # titles 5 and 6 have no training event
    model.set_catalogue(item_features_placeholder(6, FeatureVocab()), known)
    items, a, g, u, ts = _batch([[1, 2, 3, 4, 0]])
    h = model.head(model.hidden(items[:, :-1], a[:, :-1], g[:, :-1], u[:, :-1])[0, :3])
    logits = (h @ model.item_matrix().t())[:, 1:5]  # only titles 1..4 compete
    expected = torch.nn.functional.cross_entropy(logits, items[0, 1:4] - 1)
    assert torch.allclose(model(items, a, g, u, ts), expected, atol=1e-5)


@pytest.mark.parametrize("decoding", ["full", "sampled"])
def test_exclude_history_leaves_the_contexts_titles_out_of_the_softmax_but_never_a_target(decoding):
    """Position t's softmax leaves out the titles of events 0..t, except its own target: here title 2 comes back at
    the end (a re-watch), so position 3 (context 1, 2, 3, 4) keeps 2 as its target and leaves out 1, 3 and 4."""
    model = _tiny()
    model.objective = Objective(decoding=decoding, exclude_history=True)
    items, a, g, u, ts = _batch([[1, 2, 3, 4, 2, 0]])
    h = model.head(model.hidden(items[:, :-1], a[:, :-1], g[:, :-1], u[:, :-1])[0, :4])  # position 4: no target
    targets = items[0, 1:5]
    context = [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]]
    if decoding == "full":
        logits = h @ model.item_matrix().t()
        logits[:, 0] = float("-inf")
        for t, seen in enumerate(context):
            logits[t, [i for i in seen if i != targets[t]]] = float("-inf")
        expected = torch.nn.functional.cross_entropy(logits, targets)
        assert torch.allclose(model(items, a, g, u, ts), expected, atol=1e-5)
    else:
        negatives = torch.tensor([1, 7, 4])
        cand = torch.cat([targets[:, None], negatives.expand(4, 3)], 1)
        logits = (h[:, None, :] * model.items.encode_output(cand)).sum(-1)
        logits[:, 1] = float("-inf")  # title 1: in every context
        logits[2:, 3] = float("-inf")  # title 4: the target of position 2 (an accidental hit), then in the context
        expected = torch.nn.functional.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
        assert torch.allclose(model(items, a, g, u, ts, negatives), expected, atol=1e-5)


def test_title_age_buckets_by_hand():
    from genrec.features import LAUNCH_UNKNOWN, NUM_AGE_BUCKETS, title_age_buckets

    h = 3600
    launch = torch.tensor([0, 0, 0, 0, 100 * h, LAUNCH_UNKNOWN, 0])
    request = torch.tensor([10 * h, 1800, 1, 0, 50 * h, 10 * h, 2**40])
    # 1 + floor(2 log2(1 + hours)): 10 h -> 1 + floor(6.92) = 7; 30 min -> 1 + floor(1.17) = 2; 1 s -> 1.
    # Launched at the request itself, later, or never: 0. A billion hours: the last bucket.
    assert title_age_buckets(request, launch).tolist() == [7, 2, 1, 0, 0, 0, NUM_AGE_BUCKETS - 1]
    # Broadcast: requests (2, 1) x titles (1, 3).
    grid = title_age_buckets(torch.tensor([[h], [3 * h]]), torch.tensor([[0, h, 2 * h]]))
    # 1 h -> 1 + floor(2) = 3; 2 h -> 1 + floor(3.17) = 4; 3 h -> 1 + floor(4) = 5
    assert grid.tolist() == [[3, 0, 0], [5, 4, 3]]


def _aged(decoding="full"):
    """A tiny title-age model: titles 1..4 launched at hours 0, 0, 9, 12; the age bias set by hand."""
    model = _tiny(num_items=4, title_age=True)
    model.objective = Objective(decoding=decoding)
    feats = item_features_placeholder(4, FeatureVocab())
    feats.launch = torch.tensor([2**62, 0, 0, 9 * 3600, 12 * 3600])
    model.set_catalogue(feats)
    with torch.no_grad():
        model.items.age.weight.copy_(torch.arange(48, dtype=torch.float32)[:, None] / 10)
    return model


def test_title_age_bias_enters_scores_and_losses():
    from genrec.features import title_age_buckets

    model = _aged().eval()
    items, a, g, u, ts = _batch([[1, 2, 1, 2, 0]])  # events at hours 0..4
    plain = (model.head(model.hidden(items, a, g, u)[0, 3]) @ model.item_matrix().t())[1:]
    request = 13 * 3600  # title ages 13, 13, 4, 1 hours -> buckets 8, 8, 5, 3 -> biases .8, .8, .5, .3
    scores = model.score_last(items, a, g, u, torch.tensor([4]), request_ts=torch.tensor([request]))[0, 1:]
    assert torch.allclose(scores - plain, torch.tensor([0.8, 0.8, 0.5, 0.3]), atol=1e-5)
    with pytest.raises(ValueError, match="request_ts"):
        model.score_last(items, a, g, u, torch.tensor([4]))
    # Training: position t is scored at event t + 1's time (full softmax, by hand).
    model.train()
    items, a, g, u, ts = _batch([[1, 2, 4, 3, 1]])
    ts = torch.tensor([[0, 1, 13, 14, 20]]) * 3600
    h = model.head(model.hidden(items[:, :-1], a[:, :-1], g[:, :-1], u[:, :-1])[0])
    request = ts[0, 1:, None]
    bias = model.items.age.weight[title_age_buckets(request, model.items.f_launch[None]), 0]
    logits = (h @ model.item_matrix().t() + bias)[:, 1:]
    expected = torch.nn.functional.cross_entropy(logits, items[0, 1:] - 1)
    assert torch.allclose(model(items, a, g, u, ts), expected, atol=1e-5)
    # Sampled: the same bias on the target and on every negative.
    model.objective = Objective(decoding="sampled")
    negatives = torch.tensor([1, 2, 3, 4])
    expected = torch.nn.functional.cross_entropy(logits, items[0, 1:] - 1)  # all titles drawn: same partition
    assert torch.allclose(model(items, a, g, u, ts, negatives=negatives), expected, atol=1e-5)


def test_title_age_learns_that_new_titles_are_watched():
    # Every next event is the title that launched an hour before it; ids are hidden (all cold), so only the age
    # bias can tell the answer from the others. Trained, a fresh cold title ranks first among old ones.
    torch.manual_seed(0)
    n, h = 12, 3600
    model = GenRec(ModelSpec(num_items=n, layers=1, width=16, heads=2, max_seq_len=6, dropout=0.0,
                             projection_ratio=2, title_age=True))
    model.objective = Objective(decoding="full")
    launch = torch.arange(n + 1) * 10 * h  # title i launches at hour 10 i
    feats = item_features_placeholder(n, FeatureVocab())
    feats.launch = launch
    model.set_catalogue(feats)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for step in range(60):
        start = torch.randint(1, n - 5, (8, 1))
        items = start + torch.arange(6)  # title i then i + 1 ...: each watched an hour after its launch
        ts = launch[items] + h
        z = torch.zeros_like(items)
        loss = model(items, z, z, torch.ones(items.shape), ts, id_mask=torch.ones(n + 1, dtype=torch.bool))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    known = torch.zeros(n + 1, dtype=torch.bool)  # every title cold: scored from the OOV id and its age alone
    model.set_catalogue(feats, known)
    items = torch.tensor([[1, 2, 3, 0, 0, 0]])
    z = torch.zeros_like(items)
    scores = model.score_last(items, z, z, torch.ones(items.shape), torch.tensor([3]),
                              request_ts=torch.tensor([int(launch[9]) + h]))[0]
    scores[1:4] = float("-inf")
    assert int(scores.argmax()) == 9  # launched an hour ago; titles 4..8 are days old, 10..12 not out yet


def test_age_log_lift_by_hand():
    from genrec.features import NUM_AGE_BUCKETS, age_log_lift

    def counts(*pairs):
        c = np.zeros(NUM_AGE_BUCKETS)
        for b, n in pairs:
            c[b] = n
        return c

    lift = age_log_lift(counts((1, 2), (2, 1)), counts((1, 1), (2, 3), (3, 2)))
    # bucket 1: 2 of 3 targets (2.5 smoothed) vs 1 of 6 candidates: log(2.5/3 / (1/6)) = log 5;
    # bucket 2: 1.5/3 vs 3/6 -> 0; bucket 3: no target, 0.5/3 vs 2/6 -> log 0.5.
    # Buckets no candidate fell in take the nearest one's value (4.. -> bucket 3's); bucket 0 without any: 0.
    assert lift.shape == (NUM_AGE_BUCKETS,)
    assert np.allclose(lift[:4], [0.0, np.log(5), 0.0, np.log(0.5)]) and np.allclose(lift[4:], np.log(0.5))
    assert np.isclose(age_log_lift(counts((1, 10**6)), counts((1, 1), (2, 1), (3, 10**6)))[3], -8.0)  # clipped
    # A gap between two seen buckets: the nearer one's value, the older on a tie.
    lift = age_log_lift(counts((5, 1), (8, 1)), counts((5, 1), (8, 1)))
    assert lift[6] == lift[5] and lift[7] == lift[8] and lift[1] == lift[5]


def test_age_bucket_counts_match_the_grid():
    from genrec.features import LAUNCH_UNKNOWN, NUM_AGE_BUCKETS, age_bucket_counts, title_age_buckets

    rng = np.random.default_rng(0)
    launch = np.r_[rng.integers(0, 10**9, 300), [LAUNCH_UNKNOWN] * 5, [500_000_000] * 4]  # ties and unknowns
    requests = np.r_[rng.integers(0, 2 * 10**9, 50), 500_000_000, 500_000_001]
    grid = title_age_buckets(torch.from_numpy(requests)[:, None], torch.from_numpy(launch)[None]).flatten()
    assert np.array_equal(age_bucket_counts(requests, launch),
                          np.bincount(grid.numpy(), minlength=NUM_AGE_BUCKETS))
    # The integer edges give the float formula's buckets: 1 + floor(2 log2(1 + hours)).
    ages = rng.integers(1, 3 * 10**9, 10_000)
    want = np.minimum(1 + np.floor(2 * np.log2(1 + ages / 3600)), NUM_AGE_BUCKETS - 1)
    assert np.array_equal(title_age_buckets(torch.from_numpy(ages), torch.zeros(1, dtype=torch.long)).numpy(), want)


def test_incremental_encoding_with_a_kv_cache_equals_the_whole_history():
    torch.manual_seed(0)
    torch.manual_seed(0)
    model = GenRec(ModelSpec(num_items=20, layers=2, width=16, heads=2, max_seq_len=12, dropout=0.0,
                             projection_ratio=2, title_age=True)).eval()
    items = torch.randint(1, 21, (1, 9))
    actions, gaps = torch.randint(0, 3, (1, 9)), torch.randint(0, 20, (1, 9))
    utils = torch.rand(1, 9) * 5
    now = torch.tensor([10**9])
    full = model.score_last(items, actions, gaps, utils, torch.tensor([9]), request_ts=now)
    # 5 events, then 3, then 1, each call reusing the cache of the previous ones
    q, cache = model.encode_step(items[:, :5], actions[:, :5], gaps[:, :5], utils[:, :5])
    q, cache = model.encode_step(items[:, 5:8], actions[:, 5:8], gaps[:, 5:8], utils[:, 5:8], cache)
    q, cache = model.encode_step(items[:, 8:], actions[:, 8:], gaps[:, 8:], utils[:, 8:], cache)
    assert cache[0][0].shape[2] == 9
    assert torch.allclose(model.score_queries(q, request_ts=now), full, atol=1e-5)
    # Without the cache (the new events alone) the answer differs: the cache carries the history.
    q_alone, _ = model.encode_step(items[:, 8:], actions[:, 8:], gaps[:, 8:], utils[:, 8:])
    assert not torch.allclose(model.score_queries(q_alone, request_ts=now), full, atol=1e-3)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.encode_step(items[:, :4], actions[:, :4], gaps[:, :4], utils[:, :4], cache)


def test_catalogue_age_bias_equals_the_bucket_lookup_and_its_gradient():
    """The suffix-sum form of the title-age bias (every title at once, as full softmax and serving score them) gives
    the direct per-(request, title) bucket lookup, values and gradients."""
    from genrec.features import (LAUNCH_UNKNOWN, NUM_AGE_BUCKETS, catalogue_age_bias, catalogue_age_bias_grad,
                                 title_age_buckets)

    torch.manual_seed(3)
    launch = torch.randint(0, 10**8, (300,))
    launch[::17] = LAUNCH_UNKNOWN  # never launched
    launch[5] = launch[6]  # ties
    request = torch.randint(0, 2 * 10**8, (40,))
    request[0] = launch[3]  # a title launched at the request itself is not launched yet
    weights = torch.randn(NUM_AGE_BUCKETS, dtype=torch.float64, requires_grad=True)
    direct = weights[title_age_buckets(request[:, None], launch[None, :]).long()]
    order = torch.argsort(launch, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    fast = catalogue_age_bias(weights, request, launch[order], inverse)
    assert torch.allclose(fast, direct, atol=1e-12)
    g = torch.randn(40, 300, dtype=torch.float64)
    (grad_direct,) = torch.autograd.grad((direct * g).sum(), weights)
    (grad_fast,) = torch.autograd.grad((fast * g).sum(), weights)
    assert torch.allclose(grad_fast, grad_direct, atol=1e-9)
    # The closed form the chunked full softmax uses (float32 sums of 12,000 terms).
    closed = catalogue_age_bias_grad(g, request, launch[order], inverse)
    torch.testing.assert_close(closed, grad_direct.float(), rtol=1e-5, atol=1e-4)


def test_the_learning_rate_falls_as_one_over_width_above_the_base_width():
    from genrec.build import optimizer_and_schedule, width_scaled_lr
    from genrec.config import load_config

    assert width_scaled_lr(2e-3, 64, 128) == pytest.approx(1e-3) and width_scaled_lr(2e-3, 64, 96) == pytest.approx(
        2e-3 * 2 / 3)
    assert width_scaled_lr(2e-3, 64, 64) == width_scaled_lr(2e-3, 64, 32) == width_scaled_lr(2e-3, None, 2048) == 2e-3
    # The optimizer gets it from the built model's width.
    model = _tiny()
    cfg = load_config(None, ["train.lr=0.004", f"train.lr_base_width={model.spec.width // 4}"])
    optimizer, _ = optimizer_and_schedule(cfg, model, 10)
    assert all(g["lr"] == pytest.approx(0.001) for g in optimizer.param_groups)
