import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.data.schema import Dataset
from genrec.shards import ShardError, open_shards, resolve_cutoff, split_sequences, write_shards


def _dataset() -> Dataset:
    # user 1: 3 events before the cutoff (100), 2 after; user 2: 1 before, 1 after; user 3: only before.
    # item 40 first appears after the cutoff: a cold-start title.
    rows = [(1, 10, 10), (1, 20, 20), (1, 30, 30), (1, 40, 110), (1, 10, 120),
            (2, 20, 50), (2, 30, 150),
            (3, 30, 5), (3, 20, 6)]
    users, items, ts = (list(c) for c in zip(*rows))
    events = pa.table({"user_id": pa.array(users, pa.int64()), "item_id": pa.array(items, pa.int64()),
                       "timestamp": pa.array(ts, pa.int64()), "action": pa.array([0] * 9, pa.int32()),
                       "utility": pa.array([1.0] * 9, pa.float32())})
    items_t = pa.table({"item_id": pa.array([40, 10, 20, 30, 50], pa.int64()),
                        "title": ["d", "a", "b", "c", "never"],
                        "genres": pa.array([["x"], [], ["y"], ["x", "y"], []], pa.list_(pa.string())),
                        "year": pa.array([2000, None, 1999, 2001, 2002], pa.int32()),
                        "launch_ts": pa.array([110, 10, 20, 5, 0], pa.int64()),
                        "text": ["", "", "", "", ""]})
    return Dataset(events, items_t, "hand")


def test_time_split_by_hand():
    vocab, train, ev, stats = split_sequences(_dataset(), cutoff=100, min_train_events=2)
    # vocabulary sorted by item id: 10->1, 20->2, 30->3, 40->4, 50->5
    assert vocab.column("item_id").to_pylist() == [10, 20, 30, 40, 50]
    assert vocab.column("index").to_pylist() == [1, 2, 3, 4, 5]
    # user 2 has a single training event (< min_train_events) -> no training row; user 3 sorted by time
    assert train.column("user_id").to_pylist() == [1, 3]
    assert train.column("items").to_pylist() == [[1, 2, 3], [3, 2]]
    assert train.column("ts").to_pylist() == [[10, 20, 30], [5, 6]]
    # evaluation rows: users with events on both sides (user 2 keeps its 1-event history for evaluation)
    assert ev.column("user_id").to_pylist() == [1, 2]
    assert ev.column("items").to_pylist() == [[1, 2, 3], [2]]
    assert ev.column("targets").to_pylist() == [[4, 1], [3]]
    assert ev.column("target_ts").to_pylist() == [[110, 120], [150]]
    assert stats["train_events"] == 6 and stats["eval_events"] == 3
    # item 40 (and 50, never seen) are cold: 1 of 3 evaluation events is on a cold title
    assert stats["cold_start_items"] == 2
    assert stats["cold_start_eval_share"] == pytest.approx(1 / 3)


def test_cutoff_quantile():
    ts = np.arange(100)
    assert resolve_cutoff(ts, None, 0.9) == 90
    assert resolve_cutoff(ts, 7, 0.9) == 7


def test_write_round_trip_and_atomic_replace(tmp_path):
    out = tmp_path / "shards"
    s = write_shards(_dataset(), out, cutoff=100, users_per_shard=1, extra={"data_config": {"a": 1}})
    m = json.loads((out / "manifest.json").read_text())
    assert m["schema_version"] == 1 and m["counts"]["cutoff"] == 100 and m["data_config"] == {"a": 1}
    assert len(s.files("train")) == 2 and len(s.files("eval")) == 2  # one user per file
    train = pq.read_table(s.files("train"))
    assert train.column("items").to_pylist() == [[1, 2, 3], [3, 2]]
    assert sum(f["rows"] for f in m["files"] if f["split"] == "train") == 2
    assert all(len(f["sha256"]) == 64 for f in m["files"])
    assert open_shards(out).num_items == 5
    # Rewriting swaps the whole folder: no temporary or old folder is left beside it.
    write_shards(_dataset(), out, cutoff=40)
    assert open_shards(out).manifest["counts"]["cutoff"] == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_failed_write_leaves_previous_shards(tmp_path, monkeypatch):
    out = tmp_path / "shards"
    write_shards(_dataset(), out, cutoff=100)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)  # a failure midway through the new set
    with pytest.raises(OSError):
        write_shards(_dataset(), out, cutoff=40)
    assert open_shards(out).manifest["counts"]["cutoff"] == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_open_refuses_missing_and_foreign(tmp_path):
    with pytest.raises(ShardError, match="no shard manifest"):
        open_shards(tmp_path)
    out = tmp_path / "s"
    write_shards(_dataset(), out, cutoff=100)
    (out / "train" / "part-00000.parquet").unlink()
    with pytest.raises(ShardError, match="part-00000.parquet: listed in the manifest but missing"):
        open_shards(out)


def test_no_training_users_is_a_clear_error(tmp_path):
    with pytest.raises(ShardError, match="move the cutoff later"):
        write_shards(_dataset(), tmp_path / "s", cutoff=1)
