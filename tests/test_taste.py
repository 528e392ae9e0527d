"""Issue #6: "a title added by POST /titles is ranked high for a user whose history is all its genre", over HTTP.

A model is pre-trained through the real trainer (Ray Data -> Ray Train, DeepSpeed on CPU) long enough for its semantic
tower to learn tastes, then served; one new title per genre is added live (genre only: no id row, no history, so the
tower alone scores it) and each genre's "fan" (a history of that genre's most trained single-genre titles,
genrec.probes) asks for the whole ranking. benchmarks/taste.py measures the same on larger models (BENCHMARKS.md).

Why this data and length: the tests' usual tiny model trained one epoch has learned no taste (a new title lands at the
same place for every fan; so did the demo's 18-step run), and 4-8 epochs here do not show it reliably. With 6 genres,
200 titles, 300 users, half the id embeddings masked (collaborative-embedding masking: the tower must rank titles
alone) and 16 epochs at batch 16, seeds 0, 1 and 2 all gave what the test asserts (measured 2026-12-06 on a fresh
VM: numpy 2.4.6, pyarrow 26.0.1). The earlier 30% masking and 12 epochs, which passed on 2026-11-26, failed there on
seed 0 (a genre's new title ranked 16th for its fan and 13th for the others); with 50% masking at 12 epochs seed 1
still failed: the run sat at the edge of learning tastes, and Ray Data's batch order is not pinned. Checked to fail:
with train.epochs=1 the ranks for a genre's own fan are no better than for the others' (see the test's assertion
messages).
"""

import json

import pytest

from genrec.checkpoint import load_checkpoint
from genrec.holdout import popularity
from genrec.selection import best_record
from genrec.shards import open_shards
from genrec.runs import read_history
from genrec.cli import post_json, start_serve
from genrec.probes import HOUR, NEW_ID_BASE, genre_fans, taste_probe
from genrec.recommend import Ranker
from tests.conftest import tiny_config

pytestmark = pytest.mark.integration

TOKEN = "taste-token-0123456789abcdef"


@pytest.fixture(scope="module")
def taste_served(ray_local, tmp_path_factory):
    from ray import serve

    from trainers.pretrain import run

    # The app an earlier module left running holds a CPU that the training run's Ray Data reads need.
    serve.shutdown()
    cfg = tiny_config(tmp_path_factory.mktemp("taste"), "name=taste", "data.synthetic.genres=6",
                      "data.synthetic.items=200", "data.synthetic.users=300", "model.id_mask_rate=0.5",
                      "train.workers=1", "train.cpus_per_worker=0.45", "train.epochs=16", "train.seed=0")
    cfg.serve.token = TOKEN
    checkpoint = run(cfg, "taste").checkpoint.path  # the last epoch's
    url = start_serve(cfg, checkpoint)
    yield cfg, checkpoint, url
    serve.shutdown()


def test_a_title_added_live_ranks_high_for_a_fan_of_its_genre(taste_served):
    cfg, checkpoint, url = taste_served
    loaded = load_checkpoint(checkpoint)
    ranker = Ranker(loaded, "local")
    item_id = dict(zip(loaded.items.column("index").to_pylist(), loaded.items.column("item_id").to_pylist()))
    fans = genre_fans(ranker)  # genre -> the indices of its most trained single-genre titles
    genres = list(fans)
    assert len(genres) >= 4, fans
    when = int(loaded.items.column("launch_ts").to_numpy().max()) + 48 * HOUR
    new = {g: NEW_ID_BASE + k for k, g in enumerate(genres)}
    titles = [{"item_id": new[g], "genres": [g], "launch_ts": when - 24 * HOUR} for g in genres]
    status, body = post_json(f"{url}/titles", {"titles": titles}, token=TOKEN)
    assert status == 200 and body["added"] == list(new.values()), body

    rank: dict[tuple[str, str], int] = {}  # (fan's genre, new title's genre) -> rank in the fan's ranking, 1 = first
    for fan, hist in fans.items():
        history = [{"item_id": item_id[i], "timestamp": when - 48 * HOUR - (len(hist) - 1 - j) * HOUR}
                   for j, i in enumerate(hist)]
        status, body = post_json(f"{url}/recommend", {"history": history, "k": cfg.serve.max_k, "request_ts": when})
        assert status == 200, body
        order = [r["item_id"] for r in body["items"]]
        assert len(order) == ranker.size + len(new) - len(hist)  # the whole catalogue but the history
        for g in genres:
            rank[fan, g] = order.index(new[g]) + 1
    size = ranker.size + len(new)
    own = {g: rank[g, g] for g in genres}
    others = {g: sum(rank[f, g] for f in genres if f != g) / (len(genres) - 1) for g in genres}
    table = "; ".join(f"{g}: {own[g]} for its fan, {others[g]:.1f} for the others" for g in genres)
    # Ranked high for its genre's fan: half the genres' titles in the top 5% of ~200, every one in the top 25%...
    assert sorted(own.values())[len(genres) // 2] <= 0.05 * size and max(own.values()) <= 0.25 * size, table
    # ...higher for its own fan than for the other genres' fans, every genre: a taste match, not a genre prior...
    assert all(own[g] < others[g] for g in genres), table
    # ...and not one new title first among the new ones for every fan (a prior would do that).
    assert len({min(genres, key=lambda g: rank[f, g]) for f in genres}) > 1, table

    # The benchmark's probe, run on the checkpoint in this process, reports the same ranks the app served.
    probe = taste_probe(Ranker(load_checkpoint(checkpoint), "probe"), when)
    assert {r["genre"]: r["rank"] for r in probe["genres"]} == {g: own[g] for g in genres}


def test_the_run_keeps_its_best_validation_epoch_and_beats_popularity(taste_served):
    """The same run, read for its choices (issue #21): the epoch it keeps is the one with the highest validation
    NDCG@10 (genrec.selection's rule), the checkpoint selected.json names holds that epoch's weights, its test figures
    were read once, after the choice, and its validation NDCG@10 beats popularity's on the same requests by 25% (a
    fresh clone's CI run measured 1.39x: 0.105 against 0.075; the masked ids cap what this small run learns).
    Checked to fail: keeping the last epoch instead (selected.json then names the last epoch, not the best one)."""
    cfg, _, _ = taste_served
    store = cfg.storage.store()
    selected = json.loads(store.read_text(store.path("runs", "taste", "selected.json")))
    history = read_history(cfg, "taste")
    best = best_record(history, "valid_ndcg@10")
    assert selected["epoch"] == best["epoch"] and selected["valid"]["ndcg@10"] == best["valid_ndcg@10"]
    assert history[-1]["end"] == "max epochs" and len(history) == cfg.train.epochs
    kept = json.loads(store.read_text(f"{store.locate(selected['checkpoint'])}/model.json"))["metrics"]
    assert kept["epoch"] == best["epoch"]  # the kept checkpoint holds that epoch's model
    assert not any(k.startswith("test_") for h in history for k in h)  # no epoch ever read the test split
    assert selected["test"]["requests"] > 0 and selected["test_popularity"]["requests"] == selected["test"]["requests"]
    popular = popularity(cfg, open_shards(cfg.shards_dir(), store), "valid")
    assert best["valid_ndcg@10"] > 1.25 * popular["valid_ndcg@10"], (best["valid_ndcg@10"], popular)
