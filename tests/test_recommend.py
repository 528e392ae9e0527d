"""What a serving replica does, without Ray: catalogue updates, candidate filters, cached user state."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fastapi import HTTPException

from genrec.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_ITEMS, CHECKPOINT_SPEC, CHECKPOINT_WEIGHTS, TRAIN_COUNT,
                               load_checkpoint, write_weights)
from genrec.features import build_vocab
from genrec.model import GenRec, ModelSpec
from genrec.recommend import Events, Ranker, list_updates, titles_table, write_titles
from genrec.shards import write_checksums
from serving.app import UserEvents, check_time_order

ITEMS = pa.table({
    "item_id": [10, 20, 30, 40], "title": ["Space War", "Space War II", "Love Boat", "Love Boat 2"],
    "genres": [["Sci-Fi"], ["Sci-Fi", "Action"], ["Romance"], ["Romance"]], "year": [1999, 2001, None, 1980],
    "launch_ts": [100, 200, 300, None], "text": ["", "", "sea", "sea"],
    "index": pa.array([1, 2, 3, 4], pa.int32()), TRAIN_COUNT: [1, 1, 1, 1]})


@pytest.fixture
def ranker(tmp_path):
    return small_ranker(tmp_path)


def small_ranker(tmp_path) -> Ranker:
    """A checkpoint of ITEMS (two Sci-Fi, two Romance titles) written to tmp_path, loaded as the app's ranker."""
    spec = ModelSpec(num_items=4, layers=2, width=16, heads=2, max_seq_len=6, dropout=0.0, projection_ratio=2,
                     features=build_vocab(ITEMS).to_dict(), title_age=True)
    torch.manual_seed(0)
    write_weights(GenRec(spec).state_dict(), tmp_path / CHECKPOINT_WEIGHTS)
    (tmp_path / CHECKPOINT_SPEC).write_text(json.dumps({"format": CHECKPOINT_FORMAT, "spec": spec.to_dict()}))
    pq.write_table(ITEMS, tmp_path / CHECKPOINT_ITEMS)
    write_checksums(tmp_path, [CHECKPOINT_WEIGHTS, CHECKPOINT_SPEC, CHECKPOINT_ITEMS])
    return Ranker(load_checkpoint(tmp_path), "test")


def test_new_titles_launch_when_added_and_updates_apply_once_in_order(ranker, tmp_path):
    t = titles_table([{"item_id": 50, "genres": ["Romance"]}, {"item_id": 60, "launch_ts": 7, "title": "Old"}],
                     now=1000)
    assert t.column("launch_ts").to_pylist() == [1000, 7] and t.column("genres").to_pylist() == [["Romance"], []]
    folder = tmp_path / "updates"
    (folder).mkdir()
    (folder / ".unfinished.parquet.tmp").write_bytes(b"half")  # a write that never finished is not an update
    first = write_titles(folder, t)
    second = write_titles(folder, titles_table([{"item_id": 70}, {"item_id": 50}], now=2000))
    assert list_updates(folder) == [first, second] and first < second
    # 50 arrives twice (two replicas may race): applied once, from the first update
    assert ranker.sync_titles(folder) == 3 and ranker.size == 7
    assert ranker.sync_titles(folder) == 0  # nothing new
    assert [ranker.index_of[i] for i in (50, 60, 70)] == [5, 6, 7]
    assert ranker.launch[5] == 1000 and ranker.title_at[6] == "Old"
    assert ranker.item_matrix.shape[0] == 8  # the new titles have output embeddings: rankable at once


def test_candidate_filters_by_genre_and_launch_window(ranker):
    assert ranker.candidates() is None
    assert ranker.candidates(genres=["Romance"]).tolist() == [False, False, False, True, True]
    assert ranker.candidates(genres=["Action", "Romance"]).tolist() == [False, False, True, True, True]
    assert ranker.candidates(genres=["Western"]).tolist() == [False] * 5  # a genre no title has selects none
    # The filter reads a per-genre index built with the catalogue, not every title's genres per request.
    assert {g: ix.tolist() for g, ix in ranker.titles_of_genre.items()} == {
        "Sci-Fi": [1, 2], "Action": [2], "Romance": [3, 4]}
    # launch times 100, 200, 300, unknown: an unknown launch is outside every window
    assert ranker.candidates(launched_after=150).tolist() == [False, False, True, True, False]
    assert ranker.candidates(launched_after=150, launched_before=300).tolist() == [False, False, True, False, False]
    scores = torch.tensor([float("-inf"), 1.0, 4.0, 3.0, 2.0])
    top = ranker.top(scores, 10, exclude={2}, allowed=ranker.candidates(launched_after=150))
    assert [t["item_id"] for t in top] == [30]  # 20 excluded as seen, 10 and 40 outside the window


def test_a_cached_state_extended_by_new_events_equals_encoding_them_all(ranker):
    ev = Events([1, 2, 3, 1, 4], [10, 20, 3000, 3100, 90000], [0, 1, 0, 0, 2], [1.0, 0.5, 1.0, 2.0, 1.0])
    head = Events(ev.items[:3], ev.ts[:3], ev.actions[:3], ev.utils[:3])
    tail = Events(ev.items[3:], ev.ts[3:], ev.actions[3:], ev.utils[3:])
    state = ranker.encode_state(head, 3)
    extended = ranker.extend_state(state, tail, 5)
    full = ranker.encode_state(ev, 5)
    assert extended.version == 5 and extended.tokens == 5 and extended.seen == {1, 2, 3, 4}
    assert torch.allclose(extended.query, full.query, atol=1e-5)
    # ... and equals the batched path /recommend takes for a history sent in full
    assert torch.allclose(ranker.queries([ranker.window(ev)])[0], full.query, atol=1e-5)
    # Two more events would slide the 6-event window: the caller must re-encode
    more = Events([2, 3], [90001, 90002], [0, 0], [1.0, 1.0])
    assert ranker.extend_state(extended, more, 7) is None
    # A window already full carries no cache to extend
    assert ranker.encode_state(Events([1, 2, 3, 4, 1, 2, 3], list(range(7)), [0] * 7, [1.0] * 7), 7).cache is None


def test_batched_queries_trim_padding_without_changing_the_answer(ranker):
    short = ranker.window(Events([1, 2], [0, 60], [0, 0], [1.0, 1.0]))
    long = ranker.window(Events([3, 4, 1, 2], [0, 60, 120, 180], [0, 0, 0, 0], [1.0] * 4))
    together = ranker.queries([short, long])
    assert torch.allclose(together[0], ranker.queries([short])[0], atol=1e-6)
    assert torch.allclose(together[1], ranker.queries([long])[0], atol=1e-6)
    with torch.no_grad():  # the untrimmed forward over the whole max_seq_len window
        h = ranker.model.hidden(*long[0][:4], ts=long[0][4])
        assert torch.allclose(ranker.model.head(h[0, long[1] - 1]), together[1], atol=1e-5)


def test_events_out_of_time_order_are_refused_by_name():
    check_time_order("history", [5, None, 5, 9])  # equal times and missing ones pass
    with pytest.raises(HTTPException) as e:
        check_time_order("history", [5, None, 9, 7])
    assert e.value.status_code == 422 and e.value.detail.startswith("history.3.timestamp: earlier than event 2")


def test_a_forgotten_user_who_returns_never_matches_an_old_cached_state():
    users = UserEvents.func_or_class(3600.0, 100, 1000)
    events = [{"item_id": 1, "timestamp": t} for t in range(5)]
    first = users.append(7, events)["version"]
    assert users.forget(7) == 5 and users.get(7) is None and users.forget(7) == 0
    # Same number of events as before: a per-user count would give the same version, and another replica's cached
    # state of the old history would pass for the new one.
    assert users.append(7, events)["version"] != first
    # Replicas learn whom to drop; one too far behind the kept list, or counting from an earlier start of the
    # deployment (its numbers are not this one's), is told to drop everything.
    start = users.erasures_from
    users.forget(8)  # erasures 1 and 2 were user 7's (the second deleted nothing), 3 is user 8's
    assert users.erased_since(start) == (start + 3, [7, 7, 8]) and users.erased_since(start + 3) == (start + 3, [])
    assert users.erased_since(start + 2) == (start + 3, [8])
    assert users.erased_since(0) == (start + 3, None) and users.erased_since(start + 99) == (start + 3, None)
    users.erased = type(users.erased)(list(users.erased)[-1:], maxlen=1)
    assert users.erased_since(start) == (start + 3, None)
    # A restarted deployment (a new clock) never hands out a version the old one did.
    assert UserEvents.func_or_class(3600.0, 100, 1000).append(7, events)["version"] > first
