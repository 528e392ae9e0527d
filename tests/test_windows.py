import numpy as np
import pytest

from genrec.windows import context_window, gap_buckets, training_windows, window_bounds, window_count
from tests.conftest import tiny_config


def test_window_bounds_cover_every_target_once():
    assert window_bounds(1, 4) == []
    assert window_bounds(2, 4) == [(0, 2)]
    assert window_bounds(5, 4) == [(0, 5)]
    assert window_bounds(6, 4) == [(0, 2), (1, 6)]
    for n in range(2, 40):
        b = window_bounds(n, 4)
        targets = [t for s, e in b for t in range(s + 1, e)]
        assert targets == list(range(1, n)), n
        assert len(b) == int(np.ceil((n - 1) / 4))  # what count_windows assumes


def test_gap_buckets_by_hand():
    ts = np.array([100, 100, 101, 103, 100 + 86_400])
    # gaps 0,0,1,2,86297 -> 0 (first), 1+log2(1)=1, 1+floor(log2 2)=2, 1+floor(log2 3)=2, 1+16=17
    assert gap_buckets(ts).tolist() == [0, 1, 2, 2, 17]


def test_training_windows_cut_spans_and_pad_right():
    batch = {"items": np.array([np.array([5, 6, 7, 8, 9, 10]), np.array([3, 4])], dtype=object),
             "ts": np.array([np.arange(6) * 10, np.array([0, 1])], dtype=object),
             "actions": np.array([np.zeros(6), np.array([1, 0])], dtype=object),
             "utils": np.array([np.arange(6) / 2, np.array([4.0, 5.0])], dtype=object)}
    out = training_windows(batch, max_seq_len=4)
    # Windows of max_seq_len + 1 events: the model reads [:-1] and predicts what follows each position.
    assert out["items"].tolist() == [[5, 6, 0, 0, 0], [6, 7, 8, 9, 10], [3, 4, 0, 0, 0]]
    assert out["actions"][2].tolist() == [1, 0, 0, 0, 0]
    assert out["gaps"][1].tolist() == gap_buckets(np.arange(6) * 10)[1:6].tolist()
    assert out["utils"][1].tolist() == [0.5, 1.0, 1.5, 2.0, 2.5] and out["utils"][2].tolist() == [4, 5, 0, 0, 0]
    # Padding repeats the last timestamp, so no time difference is negative.
    assert out["ts"][0].tolist() == [0, 10, 10, 10, 10] and out["ts"][2].tolist() == [0, 1, 1, 1, 1]
    # Rows without utilities (older shards) count every event as utility 1.
    del batch["utils"]
    assert training_windows(batch, max_seq_len=4)["utils"][2].tolist() == [1, 1, 0, 0, 0]


def test_training_windows_drop_events_outside_the_training_window():
    batch = {"items": np.array([np.array([5, 6, 7, 8, 9])], dtype=object),
             "ts": np.array([np.array([0, 10, 20, 30, 40])], dtype=object),
             "actions": np.array([np.zeros(5)], dtype=object), "utils": np.array([np.ones(5)], dtype=object)}
    out = training_windows(batch, max_seq_len=4, ts_min=10, ts_max=40)
    assert out["items"].tolist() == [[6, 7, 8, 0, 0]] and out["ts"][0].tolist() == [10, 20, 30, 30, 30]
    assert out["gaps"][0, 0] == 0  # the window's first event starts the sequence
    assert training_windows(batch, max_seq_len=4, ts_max=10)["items"].shape == (0, 5)  # one event: no window


def test_a_retrain_on_its_new_window_keeps_the_windows_holding_a_new_target_with_their_context():
    batch = {"items": np.array([np.arange(1, 11), np.array([3, 4, 5])], dtype=object),
             "ts": np.array([np.arange(10) * 10, np.array([0, 5, 8])], dtype=object),
             "actions": np.array([np.zeros(10), np.zeros(3)], dtype=object),
             "utils": np.array([np.ones(10), np.ones(3)], dtype=object)}
    # New events from t = 75 on: the first user's last two (80, 90), none of the second's.
    out = training_windows(batch, max_seq_len=4, targets_from=75)
    assert out["items"].tolist() == [[6, 7, 8, 9, 10]]  # one window: its older events are the context
    assert [window_count(ts, 4, targets_from=75) for ts in batch["ts"]] == [1, 0]
    # The count matches the windows cut, whatever the window and its new part (the trainer's steps per epoch).
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(0, 30))
        ts = np.sort(rng.integers(0, 100, n))
        one = {"items": np.array([np.arange(1, n + 1)], dtype=object), "ts": np.array([ts], dtype=object),
               "actions": np.array([np.zeros(n)], dtype=object), "utils": np.array([np.ones(n)], dtype=object)}
        ts_max, since, length = [None, 90][rng.integers(2)], [None, int(rng.integers(0, 100))][rng.integers(2)], \
            int(rng.integers(1, 8))
        cut = training_windows(one, length, ts_max=ts_max, targets_from=since)
        assert len(cut["items"]) == window_count(ts, length, ts_max=ts_max, targets_from=since)
        if since is not None and len(cut["items"]):
            assert (cut["ts"][:, -1] >= since).all()


def test_context_window_keeps_the_most_recent_events():
    items, actions, gaps, utils, ts, n = context_window([1, 2, 3, 4, 5], [0, 10, 20, 30, 40], [0] * 5, 3,
                                                        [1, 2, 3, 4, 5])
    assert items.tolist() == [3, 4, 5] and n == 3 and utils.tolist() == [3, 4, 5] and ts.tolist() == [20, 30, 40]
    items, _, _, utils, ts, n = context_window([7], [5], [0], 3)
    assert items.tolist() == [7, 0, 0] and n == 1 and utils.tolist() == [1, 0, 0]
    assert ts.tolist() == [5, 5, 5]  # padding keeps the last time, as training windows do


@pytest.mark.integration
def test_windows_cut_in_the_driver_are_ray_datas_windows(ray_local, tmp_path):
    """Small data is windowed in the driver (no Ray Data tasks to start); the windows are exactly those the Ray Data
    pipeline cuts, as a set of rows (Ray Data does not keep the order), here for a training window moved 48 h back in
    time (its events after that dropped first)."""
    from genrec.build import train_window
    from genrec.preparation import prepare_shards
    from genrec.ingest import windows_by_ray_data, windows_in_driver

    cfg = tiny_config(tmp_path, "train.window_shift_h=48")
    shards = prepare_shards(cfg, echo=lambda *_: None)
    window = train_window(cfg, shards)
    assert window[1] is not None

    def rows(ds) -> list[tuple]:
        cols = ("items", "actions", "gaps", "utils", "ts")
        batches = list(ds.iter_batches(batch_format="numpy", batch_size=None))
        out = {c: np.concatenate([b[c] for b in batches]) for c in cols}
        return sorted(tuple(tuple(out[c][i].tolist()) for c in cols) for i in range(len(out["items"])))

    driver = rows(windows_in_driver(shards, cfg.model.max_seq_len, window))
    assert len(driver) > 100 and driver == rows(windows_by_ray_data(shards, cfg.model.max_seq_len, window, 0.25))
    # A retrain on its new window (the last 10 days of it): the windows holding a new target, the same both ways.
    since = window[1] - 240 * 3600
    driver = rows(windows_in_driver(shards, cfg.model.max_seq_len, window, since))
    assert 10 < len(driver) < 100 and all(r[4][-1] >= since for r in driver)
    assert driver == rows(windows_by_ray_data(shards, cfg.model.max_seq_len, window, 0.25, since))
