"""`genrec recommend`'s pure parts, without Ray: each user's context, the lists a block of users gets (the Serve
app's ranker, checked against it), the users file and the request time. The Ray Data run is checked against the
endpoint in tests/test_integration.py."""

import numpy as np
import pyarrow as pa
import pytest

from genrec.data.schema import DataError
from genrec.offline import ListSpec, TopK, rank_contexts, read_users, request_time, training_end, user_contexts
from genrec.recommend import titles_table, write_titles
from tests.test_recommend import small_ranker

# user 7: four events, two at the same second (file order kept); user 3: one event after `at`; user 5: two events.
EVENTS = pa.table({"user_id": pa.array([7, 3, 7, 7, 5, 7, 3, 5], pa.int64()),
                   "item_id": pa.array([40, 10, 20, 30, 10, 10, 20, 30], pa.int64()),
                   "timestamp": pa.array([400, 100, 200, 200, 50, 300, 900, 60], pa.int64()),
                   "action": pa.array([0, 0, 1, 0, 0, 0, 0, 0], pa.int8()),
                   "utility": pa.array([1.0, 0.5, 1.0, 1.0, 1.0, 0.25, 1.0, 1.0], pa.float32())})


def test_contexts_are_each_users_events_up_to_the_request_in_time_then_file_order():
    got = user_contexts(EVENTS, at=500).to_pylist()
    assert [r["user_id"] for r in got] == [3, 5, 7]
    assert got[0]["item_ids"] == [10]  # user 3's event at 900 is after the request
    assert got[2]["item_ids"] == [20, 30, 10, 40] and got[2]["ts"] == [200, 200, 300, 400]
    assert got[2]["actions"] == [1, 0, 0, 0] and got[2]["utils"] == [1.0, 1.0, 0.25, 1.0]
    # Training context of a time split: only events before the training window's end.
    assert user_contexts(EVENTS, at=500, until=250).to_pylist()[2]["item_ids"] == [20, 30]
    # Leave-one-out: a user with 3+ events loses the last two (test and validation targets); fewer keep them all.
    loo = {r["user_id"]: r["item_ids"] for r in user_contexts(EVENTS, at=10**9, leave_one_out=True).to_pylist()}
    assert loo == {3: [10, 20], 5: [10, 30], 7: [20, 30]}
    # ... counted over the whole log, not over the events before the request: at 250, user 7 has trained on 20, 30.
    early = {r["user_id"]: r["item_ids"] for r in user_contexts(EVENTS, at=250, leave_one_out=True).to_pylist()}
    assert early == {3: [10], 5: [10, 30], 7: [20, 30]}
    # Asked-for users, in the order asked; one without events gets empty lists.
    some = user_contexts(EVENTS, at=500, users=np.array([7, 99, 5])).to_pylist()
    assert [(r["user_id"], r["item_ids"]) for r in some] == [(7, [20, 30, 10, 40]), (99, []), (5, [10, 30])]


def test_a_blocks_lists_are_what_the_ranker_answers_for_each_history(tmp_path):
    ranker = small_ranker(tmp_path)
    contexts = user_contexts(pa.table({"user_id": pa.array([1, 1, 2, 3], pa.int64()),
                                       "item_id": pa.array([10, 20, 30, 999], pa.int64()),
                                       "timestamp": pa.array([100, 200, 150, 120], pa.int64()),
                                       "action": pa.array([0, 0, 0, 0], pa.int8()),
                                       "utility": pa.array([1.0, 1.0, 1.0, 1.0], pa.float32())}), at=5000)
    spec = ListSpec(k=3, at=5000)
    out = rank_contexts(ranker, spec, None, contexts.to_pydict()).to_pylist()
    for row, history in zip(out, ([10, 20], [30])):
        ev, _ = ranker.resolve([{"item_id": i, "timestamp": t} for i, t in zip(history, [100, 200])])
        scores = ranker.scores(ranker.queries([ranker.window(ev)]), [5000])[0]
        expected = ranker.top(scores, 3, set(ev.items), None)
        assert row["item_ids"] == [t["item_id"] for t in expected] and not set(row["item_ids"]) & set(history)
        assert row["scores"] == pytest.approx([t["score"] for t in expected], abs=1e-5)
        assert row["request_ts"] == 5000 and row["context_events"] == len(history)
    assert out[2] == {"user_id": 3, "request_ts": 5000, "context_events": 0, "item_ids": [], "scores": []}
    kept = rank_contexts(ranker, ListSpec(k=4, at=5000, exclude_seen=False), None, contexts.to_pydict()).to_pylist()
    assert len(kept[0]["item_ids"]) == 4  # the history's titles may come back when they are not excluded
    romance = ranker.candidates(["Romance"])
    only = rank_contexts(ranker, ListSpec(k=4, at=5000, genres=("Romance",)), romance, contexts.to_pydict())
    assert set(only.to_pylist()[1]["item_ids"]) <= {30, 40}  # the filters the endpoint applies


def test_users_files_and_request_times(tmp_path):
    ids = tmp_path / "users.txt"
    ids.write_text("# users to rank\n7\n\n5  # a comment\n")
    assert read_users(str(ids)).tolist() == [7, 5]
    ids.write_text("7\nseven\n")
    with pytest.raises(DataError, match=f"{ids}, line 2: 'seven' is not a user id"):
        read_users(str(ids))
    assert request_time("1700000000") == 1_700_000_000
    assert request_time("2016-10-16") == 1476576000 and request_time("2016-10-16T01:00:00+01:00") == 1476576000
    with pytest.raises(ValueError, match="--at 'yesterday': give Unix seconds or an ISO 8601"):
        request_time("yesterday")
    assert training_end("time", {"cutoff": 900, "valid_cutoff": 800}) == 800
    assert training_end("time", {"cutoff": 900, "valid_cutoff": None}) == 900
    assert training_end("leave_one_out", {}) is None


def test_the_batch_actor_ranks_the_titles_added_live_as_a_replica_does(tmp_path):
    """TopK loads the checkpoint through the storage and applies the catalogue updates POST /titles wrote, so a title
    added while serving is ranked (and known in histories) by the batch lists as by the endpoint."""
    (tmp_path / "ckpt").mkdir()
    small_ranker(tmp_path / "ckpt")
    write_titles(tmp_path / "catalogue", titles_table([{"item_id": 77, "title": "Love Boat 3", "genres": ["Romance"]}],
                                                      now=4000))
    actor = TopK(str(tmp_path / "ckpt"), ListSpec(k=10, at=5000), threads=1, storage_root=str(tmp_path),
                 storage_cache=None, catalogue=str(tmp_path / "catalogue"))
    assert actor.ranker.size == 5
    batch = user_contexts(pa.table({"user_id": pa.array([1, 1], pa.int64()), "item_id": pa.array([77, 10], pa.int64()),
                                    "timestamp": pa.array([4100, 4200], pa.int64()),
                                    "action": pa.array([0, 0], pa.int8()),
                                    "utility": pa.array([1.0, 1.0], pa.float32())}), at=5000).to_pydict()
    row = actor(batch).to_pylist()[0]
    assert row["context_events"] == 2 and 77 not in row["item_ids"] and len(row["item_ids"]) == 3
