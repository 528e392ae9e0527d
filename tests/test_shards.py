import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.data.schema import Dataset
from genrec.shards import (SCHEMA_VERSION, ShardError, open_shards, resolve_cutoff, shifted_window_rows,
                           split_sequences, split_tables, write_shards)


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
    assert m["schema_version"] == SCHEMA_VERSION and m["counts"]["cutoff"] == 100 and m["data_config"] == {"a": 1}
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
    with pytest.raises(ShardError, match="part-00000.parquet: listed in .*manifest.json but missing"):
        open_shards(out)


def test_no_training_users_is_a_clear_error(tmp_path):
    with pytest.raises(ShardError, match="no user has 2\\+ events before 1, where training ends"):
        write_shards(_dataset(), tmp_path / "s", cutoff=1)


def test_time_split_validation_window_by_hand():
    """Validation cutoff 25, cutoff 100: training sees events before 25 only; validation requests read that history
    and target [25, 100); test requests read every event before 100 (validation window included)."""
    tables_v = split_tables(_dataset(), cutoff=100, min_train_events=2, valid_cutoff=25)
    vocab, tables, stats = tables_v
    assert list(tables) == ["train", "valid", "eval"]
    train, valid, ev = tables["train"], tables["valid"], tables["eval"]
    # user 1: 10, 20 before 25 (items 1, 2); user 3: 5, 6; user 2's first event is at 50
    assert train.column("user_id").to_pylist() == [1, 3] and train.column("items").to_pylist() == [[1, 2], [3, 2]]
    # validation: user 1's history [1, 2], target 30 (item 3) at 30; user 2 is new in the window (its first event,
    # at 50, is in it): a row with an empty history; user 3 has no event in the window
    assert valid.column("user_id").to_pylist() == [1, 2]
    assert valid.column("items").to_pylist() == [[1, 2], []] and valid.column("ts").to_pylist() == [[10, 20], []]
    assert valid.column("targets").to_pylist() == [[3], [2]] and valid.column("target_ts").to_pylist() == [[30], [50]]
    # test rows are those of the split without a validation window: history up to the cutoff
    assert ev.column("items").to_pylist() == [[1, 2, 3], [2]] and ev.column("targets").to_pylist() == [[4, 1], [3]]
    assert stats["split"] == "time" and stats["cutoff"] == 100 and stats["valid_cutoff"] == 25
    assert (stats["train_events"], stats["valid_events"], stats["eval_events"]) == (4, 2, 3)
    assert (stats["valid_users"], stats["eval_users"]) == (2, 2)
    assert (stats["valid_new_users"], stats["eval_new_users"]) == (1, 0)
    # no training event: 30 (first at 30, 50's title index 3? no: item 30 is first seen at 5) -> cold are 40 and 50;
    # item 30 was first seen at 5 (user 3). Validation targets: 30 (t=30), 20 (t=50): none cold.
    assert stats["cold_start_items"] == 2 and stats["cold_start_valid_share"] == 0.0
    assert stats["cold_start_eval_share"] == pytest.approx(1 / 3)
    with pytest.raises(ShardError, match="validation window would start at 100, not before the cutoff 100"):
        split_tables(_dataset(), cutoff=100, valid_cutoff=100)


def test_tags_written_after_training_ends_give_no_title_text():
    """A MovieLens tag is a feature of its title only if it was written before training ends: the validation cutoff
    of a time split, just after the last training event on leave-one-out."""
    ds = _dataset()
    ds.tags = pa.table({"item_id": pa.array([10, 10, 40, 20], pa.int64()),
                        "tag": ["early", "late", "cold", "mid"],
                        "timestamp": pa.array([3, 200, 115, 24], pa.int64())})
    vocab, _, _ = split_tables(ds, cutoff=100, valid_cutoff=25)
    text = dict(zip(vocab.column("item_id").to_pylist(), vocab.column("text").to_pylist()))
    assert text == {10: "early", 20: "mid", 30: "", 40: "", 50: ""}
    vocab, _, _ = split_tables(ds, cutoff=100, valid_cutoff=20)
    assert dict(zip(vocab.column("item_id").to_pylist(), vocab.column("text").to_pylist()))[20] == ""
    # leave-one-out: users 1 and 3 hold out their last two events, user 2 (2 events) trains on both (last at 150)
    vocab, _, _ = split_tables(ds, cutoff=None, split="leave_one_out")
    text = dict(zip(vocab.column("item_id").to_pylist(), vocab.column("text").to_pylist()))
    assert text[10] == "early" and text[40] == "cold" and text[20] == "mid"
    ds.tags = pa.table({"item_id": pa.array([10], pa.int64()), "tag": ["x"], "timestamp": pa.array([150], pa.int64())})
    assert split_tables(ds, cutoff=None, split="leave_one_out")[0].column("text").to_pylist()[0] == "x"
    ds.tags = pa.table({"item_id": pa.array([10], pa.int64()), "tag": ["x"], "timestamp": pa.array([151], pa.int64())})
    assert split_tables(ds, cutoff=None, split="leave_one_out")[0].column("text").to_pylist()[0] == ""


# ------------------------------------------------------------------------------------------- leave-one-out

def _loo_dataset(rows=None) -> Dataset:
    # (user, item, timestamp, action, utility), deliberately not in time order within a user.
    # user 1: 5 events -> train 10, 20, 30; valid target 40 (after 10, 20, 30); test target 10 (after all four).
    # user 2: 2 events -> too few to evaluate; both train.
    # user 3: 3 events -> train 30 only (1 event < min_train_events, so no training row); valid target 20 (after
    #         30); test target 50. Item 50 occurs only as this last event, 40 only as a valid target, 60 never.
    rows = rows or [(1, 20, 20, 1, 0.2), (1, 10, 10, 0, 0.1), (1, 30, 30, 2, 0.3), (1, 10, 50, 4, 0.5),
                    (1, 40, 40, 3, 0.4),
                    (2, 20, 5, 0, 1.0), (2, 30, 6, 1, 1.0),
                    (3, 30, 7, 0, 0.7), (3, 20, 8, 1, 0.8), (3, 50, 9, 2, 0.9)]
    users, items, ts, actions, utils = (list(c) for c in zip(*rows))
    events = pa.table({"user_id": pa.array(users, pa.int64()), "item_id": pa.array(items, pa.int64()),
                       "timestamp": pa.array(ts, pa.int64()), "action": pa.array(actions, pa.int32()),
                       "utility": pa.array(utils, pa.float32())})
    ids = [10, 20, 30, 40, 50, 60]
    items_t = pa.table({"item_id": pa.array(ids, pa.int64()), "title": [str(i) for i in ids],
                        "genres": pa.array([[]] * 6, pa.list_(pa.string())),
                        "year": pa.array([None] * 6, pa.int32()), "launch_ts": pa.array([None] * 6, pa.int64()),
                        "text": [""] * 6})
    return Dataset(events, items_t, "loo")


def test_leave_one_out_by_hand():
    # vocabulary: 10->1, 20->2, 30->3, 40->4, 50->5, 60->6; the cutoff is ignored (None is fine)
    vocab, tables, stats = split_tables(_loo_dataset(), None, min_train_events=2, split="leave_one_out")
    assert list(tables) == ["train", "valid", "eval"]
    train, valid, ev = tables["train"], tables["valid"], tables["eval"]
    assert train.column("user_id").to_pylist() == [1, 2]
    assert train.column("items").to_pylist() == [[1, 2, 3], [2, 3]]
    assert train.column("ts").to_pylist() == [[10, 20, 30], [5, 6]]
    assert train.column("actions").to_pylist() == [[0, 1, 2], [0, 1]]
    # user 2 (2 events) is not evaluated; user 3 is, though its 1-event history trains nothing
    assert valid.column("user_id").to_pylist() == [1, 3]
    assert valid.column("items").to_pylist() == [[1, 2, 3], [3]]
    assert valid.column("targets").to_pylist() == [[4], [2]]
    assert valid.column("target_ts").to_pylist() == [[40], [8]]
    assert ev.column("user_id").to_pylist() == [1, 3]
    assert ev.column("items").to_pylist() == [[1, 2, 3, 4], [3, 2]]
    assert ev.column("ts").to_pylist() == [[10, 20, 30, 40], [7, 8]]
    assert ev.column("actions").to_pylist() == [[0, 1, 2, 3], [0, 1]]
    assert ev.column("targets").to_pylist() == [[1], [5]]
    assert ev.column("target_ts").to_pylist() == [[50], [9]]
    assert ev.column("target_actions").to_pylist() == [[4], [2]]
    assert ev.column("target_utils").to_pylist() == [[pytest.approx(0.5)], [pytest.approx(0.9)]]
    # same schema as the time split's eval rows, so evaluation reads either
    _, _, time_ev, _ = split_sequences(_dataset(), cutoff=100)
    assert ev.schema == valid.schema == time_ev.schema
    assert stats == {"split": "leave_one_out", "cutoff": None, "valid_cutoff": None, "users": 3, "items": 6,
                     "events": 10,
                     "train_events": 6, "train_users": 2, "eval_events": 2, "eval_users": 2,
                     "valid_events": 2, "valid_users": 2,
                     # 40 (valid target only), 50 (last event only), 60 (no events): in no training row
                     "cold_start_items": 3,
                     "cold_start_eval_share": 0.5,  # test targets 10 (trained) and 50 (cold)
                     "cold_start_valid_share": 0.5}  # validation targets 40 (cold) and 20 (trained)
    # split_sequences gives the same train and eval rows (validation rows only through split_tables)
    _, train2, ev2, stats2 = split_sequences(_loo_dataset(), None, 2, split="leave_one_out")
    assert train2.equals(train) and ev2.equals(ev) and stats2 == stats


def test_leave_one_out_min_train_events_and_ties():
    _, tables, _ = split_tables(_loo_dataset(), None, min_train_events=3, split="leave_one_out")
    assert tables["train"].column("user_id").to_pylist() == [1]  # user 2's 2 events are now too few
    assert tables["eval"].column("user_id").to_pylist() == [1, 3]  # evaluation does not depend on it
    # Same-second events keep their input order (the sort is stable): the one listed last is the test target.
    rows = [(1, 10, 1, 0, 1.0), (1, 20, 2, 0, 1.0), (1, 40, 3, 0, 1.0), (1, 30, 3, 0, 1.0)]
    _, tables, _ = split_tables(_loo_dataset(rows), None, 2, split="leave_one_out")
    assert tables["eval"].column("targets").to_pylist() == [[3]]
    assert tables["valid"].column("targets").to_pylist() == [[4]]
    assert tables["train"].column("items").to_pylist() == [[1, 2]]


def test_split_argument_checked():
    with pytest.raises(ValueError, match="split 'random'"):
        split_tables(_loo_dataset(), 5, split="random")
    with pytest.raises(ValueError, match="needs a cutoff"):
        split_sequences(_loo_dataset(), None)


def test_leave_one_out_write_round_trip(tmp_path):
    out = tmp_path / "shards"
    s = write_shards(_loo_dataset(), out, None, users_per_shard=1, split="leave_one_out")
    m = open_shards(out).manifest
    assert m["counts"]["split"] == "leave_one_out" and m["counts"]["cutoff"] is None
    assert [f["split"] for f in m["files"]] == ["items", "train", "train", "valid", "valid", "eval", "eval"]
    assert len(s.files("valid")) == 2 and all(f.startswith(str(out / "valid") + "/") for f in s.files("valid"))
    _, tables, _ = split_tables(_loo_dataset(), None, split="leave_one_out")
    for name in ("train", "valid", "eval"):
        assert pq.read_table(s.files(name)).equals(tables[name])
    # the time split writes no validation files and records its split too
    s = write_shards(_dataset(), out, cutoff=100)
    assert s.files("valid") == [] and s.manifest["counts"]["split"] == "time"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_leave_one_out_without_training_rows_is_a_clear_error(tmp_path):
    with pytest.raises(ShardError, match="lower data.min_train_events or use data.split: time"):
        write_shards(_loo_dataset(), tmp_path / "s", None, min_train_events=4, split="leave_one_out")
    assert not (tmp_path / "s").exists()


def test_prepare_shards_follows_data_split(tmp_path):
    from genrec.config import load_config
    from genrec.preparation import prepare_shards

    overrides = [f"storage.root={tmp_path}", "data.synthetic.users=40", "data.synthetic.items=30",
                 "data.synthetic.events_per_user=8"]
    said = []
    s = prepare_shards(load_config(None, [*overrides, "data.split=leave_one_out"]), echo=said.append)
    assert s.manifest["counts"]["split"] == "leave_one_out" and s.manifest["data_config"]["split"] == "leave_one_out"
    assert s.manifest["counts"]["eval_users"] == s.manifest["counts"]["valid_users"] > 0
    assert "leave_one_out split" in said[-1] and "validation users" in said[-1]
    # a config with the other split does not reuse these shards
    s = prepare_shards(load_config(None, overrides), echo=said.append)
    assert s.manifest["counts"]["split"] == "time" and len(s.files("valid")) == 1 and s.files("eval")
    assert s.manifest["counts"]["valid_cutoff"] < s.manifest["counts"]["cutoff"]
    assert any("built from another data config" in line for line in said)


ML_LATEST_SMALL = Path(os.environ.get("GENREC_ML_LATEST_SMALL")
                       or Path(__file__).resolve().parents[1].parent / "shared/data/ml-latest-small")


@pytest.mark.skipif(not (ML_LATEST_SMALL / "ratings.csv").is_file(),
                    reason=f"ml-latest-small not found at {ML_LATEST_SMALL} (set GENREC_ML_LATEST_SMALL)")
def test_leave_one_out_on_ml_latest_small():
    from genrec.data.loaders import load

    ds = load("movielens", str(ML_LATEST_SMALL))
    vocab, tables, stats = split_tables(ds, None, split="leave_one_out")
    ev = ds.events
    users, counts = np.unique(ev.column("user_id").to_numpy(), return_counts=True)
    evaluated = users[counts >= 3]
    eval_rows = tables["eval"]
    assert eval_rows.column("user_id").to_pylist() == evaluated.tolist()
    assert tables["valid"].column("user_id").to_pylist() == evaluated.tolist()
    # every test target is its user's last event: the latest timestamp, and an item rated at that time
    index_of = dict(zip(vocab.column("item_id").to_pylist(), vocab.column("index").to_pylist()))
    last_ts, at_last = {}, {}
    for u, i, t in zip(*(ev.column(c).to_pylist() for c in ("user_id", "item_id", "timestamp"))):
        if t > last_ts.get(u, -1):
            last_ts[u], at_last[u] = t, set()
        if t == last_ts[u]:
            at_last[u].add(index_of[i])
    for u, targets, target_ts, hist_ts in zip(*(eval_rows.column(c).to_pylist()
                                                for c in ("user_id", "targets", "target_ts", "ts"))):
        assert len(targets) == 1 and target_ts == [last_ts[u]] and targets[0] in at_last[u]
        assert max(hist_ts) <= last_ts[u]
    n_eval = len(evaluated)
    assert stats["eval_events"] == stats["valid_events"] == n_eval
    assert stats["train_events"] == ev.num_rows - 2 * n_eval
    assert 0.0 <= stats["cold_start_eval_share"] < 0.2


def _rows(users, seqs, target_seqs=None):
    """Shard rows by hand: per user a list of (item, ts) events (and its window's target events: eval schema)."""
    def cols(prefix, seqs):
        return {f"{prefix}items": pa.array([[i for i, _ in s] for s in seqs], pa.list_(pa.int32())),
                f"{prefix}ts": pa.array([[t for _, t in s] for s in seqs], pa.list_(pa.int64())),
                f"{prefix}actions": pa.array([[0] * len(s) for s in seqs], pa.list_(pa.int8())),
                f"{prefix}utils": pa.array([[1.0] * len(s) for s in seqs], pa.list_(pa.float32()))}
    out = {"user_id": pa.array(users, pa.int64()), **cols("", seqs)}
    if target_seqs is not None:
        targets = cols("target_", target_seqs)
        out |= {"targets": targets.pop("target_items"), **targets}
    return pa.table(out)


def test_a_validation_window_moved_back_reads_each_users_events_before_its_end():
    """Validation cutoff 100, cutoff 200, moved back 30: the window [70, 170). History: the events before 70;
    targets: those in the window; what comes later is not read. Users come from the validation rows and, for those
    with no event in the shared window, from the training rows."""
    train = _rows([1, 2, 3], [[(1, 10), (2, 50), (3, 80)], [(6, 20), (7, 75)], [(1, 5), (2, 40)]])
    valid = _rows([1, 4, 5], [[(1, 10), (2, 50), (3, 80)], [], [(2, 60)]],
                  [[(4, 120), (5, 190)], [(8, 150), (9, 160)], [(3, 180)]])
    rows = shifted_window_rows(train, valid, 70, 170).to_pydict()
    assert rows["user_id"] == [1, 2, 4]  # 3: nothing in the window; 5: only after it
    assert rows["items"] == [[1, 2], [6], []] and rows["ts"] == [[10, 50], [20], []]
    assert rows["targets"] == [[3, 4], [7], [8, 9]] and rows["target_ts"] == [[80, 120], [75], [150, 160]]
    # Not moved: the shared window's own rows, exactly.
    same = shifted_window_rows(train, valid, 100, 200)
    assert same.to_pydict() == {k: v for k, v in valid.to_pydict().items()}


def test_a_moved_window_of_empty_or_sliced_rows():
    empty = _rows([], [], [])
    train = _rows([1, 2], [[], [(1, 10)]])
    assert shifted_window_rows(train, empty, 5, 20).to_pydict()["targets"] == [[1]]
    assert shifted_window_rows(_rows([], []), empty, 5, 20).num_rows == 0
    train = _rows([1, 2, 3], [[(1, 1)], [(2, 10), (3, 12)], [(4, 30)]]).slice(1)  # rows that do not start at 0
    assert shifted_window_rows(train, empty, 11, 20).to_pydict()["targets"] == [[3]]
