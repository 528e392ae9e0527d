import pytest
import torch

from genrec.model import PRESET_TARGETS, PRESETS, GenRec, ModelSpec, backbone_params, count_parameters


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


def _tiny(**kw):
    torch.manual_seed(0)
    return GenRec(ModelSpec(num_items=20, layers=2, width=16, heads=2, max_seq_len=6, dropout=0.0, **kw))


def test_causal_and_right_padding():
    model = _tiny().eval()
    items = torch.tensor([[3, 4, 5, 0, 0, 0]])
    z = torch.zeros_like(items)
    h1 = model.hidden(items, z, z)
    items2 = items.clone()
    items2[0, 4] = 7  # a change after position 2 must not affect positions 0..2
    h2 = model.hidden(items2, z, z)
    assert torch.allclose(h1[0, :3], h2[0, :3], atol=1e-6)
    assert not torch.allclose(h1[0, 4], h2[0, 4])
    scores = model.score_last(items, z, z, torch.tensor([3]))
    assert scores.shape == (1, 21) and scores[0, 0] == float("-inf")
    assert torch.allclose(scores[0, 1:], model.scorer(h1[0, 2])[1:], atol=1e-6)


def test_sampled_softmax_masks_accidental_hits_and_full_softmax_matches_cross_entropy():
    model = _tiny()
    items = torch.tensor([[1, 2, 3, 4, 5, 6]])
    z = torch.zeros_like(items)
    targets = torch.tensor([[2, 3, 4, 5, 6, 0]])  # last position has no target
    full = model(items, z, z, targets, None)
    h = model.hidden(items, z, z)[0, :5]
    expected = torch.nn.functional.cross_entropy(model.scorer(h), targets[0, :5])
    assert torch.allclose(full, expected, atol=1e-6)
    # Negatives equal to every target: all masked, so the loss is 0 (only the positive remains).
    negatives = torch.tensor([2, 3, 4, 5, 6])
    sampled = model(items, z, z, targets, negatives[:1].repeat(1))
    assert sampled > 0
    only_hits = model(items, z, z, torch.tensor([[2, 2, 2, 2, 2, 0]]), torch.tensor([2, 2]))
    assert torch.allclose(only_hits, torch.tensor(0.0), atol=1e-6)


def test_training_step_reduces_loss():
    model = _tiny(activation_checkpointing=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    items = torch.randint(1, 21, (8, 6), generator=torch.Generator().manual_seed(1))
    z = torch.zeros_like(items)
    targets = torch.roll(items, -1, dims=1)
    losses = []
    for _ in range(30):
        loss = model(items, z, z, targets, torch.arange(1, 21))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
