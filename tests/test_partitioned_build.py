"""The out-of-core shard build (genrec.partitioned_build) against the in-memory one, and the chunked synthetic writer."""

import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.data.schema import DataError
from genrec.data.synthetic import generate, write_events
from genrec.partitioned_build import build_shards, partition_of, quantile_from_histogram
from genrec.shards import open_shards, resolve_cutoff, verify_shards, write_shards


def test_quantile_from_histogram_by_hand():
    # values 0, 1, 1, 2, 5 in unit bins: the "higher" median is the 3rd smallest (1): bin 1, 2nd value in it.
    hist = np.array([1, 2, 1, 0, 0, 1])
    assert quantile_from_histogram(hist, 0.5) == (1, 1)
    assert quantile_from_histogram(hist, 0.0) == (0, 0)
    assert quantile_from_histogram(hist, 1.0) == (5, 0)
    rng = np.random.default_rng(0)
    for q in (0.1, 0.5, 0.9, 0.95):
        values = rng.integers(0, 50, 997)
        b, rank = quantile_from_histogram(np.bincount(values, minlength=50), q)
        assert np.sort(values[values == b])[rank] == np.quantile(values, q, method="higher")


def test_partitions_spread_consecutive_users():
    counts = np.bincount(partition_of(np.arange(1, 10_001), 8).astype(np.int64), minlength=8)
    assert counts.min() > 1000 and counts.max() < 1500


def _rows(shards, split):
    t = pa.concat_tables([pq.read_table(f) for f in shards.files(split)])
    return t.sort_by("user_id").to_pylist()


def _shuffled(ds):
    """The events in random order, as a real log is: the order same-second events of a user come in is what decides
    their order in the shards, in both builds."""
    from genrec.data.schema import Dataset

    return Dataset(ds.events.take(pa.array(np.random.default_rng(0).permutation(ds.events.num_rows))), ds.items,
                   ds.name)


def _event_folder(tmp_path, ds, parts=3):
    """The dataset's events, in their order, as `parts` Parquet files, an empty file and a _SUCCESS marker, and the
    item table."""
    folder = tmp_path / "events"
    folder.mkdir()
    ev = ds.events
    n = ev.num_rows
    for i, start in enumerate(range(0, n, -(-n // parts))):
        pq.write_table(ev.slice(start, -(-n // parts)), folder / f"part-{i:05d}.parquet")
    pq.write_table(ev.slice(0, 0), folder / "part-99999.parquet")  # Spark writes empty parts
    (folder / "_SUCCESS").write_text("")
    pq.write_table(ds.items, tmp_path / "items.parquet")
    return folder, tmp_path / "items.parquet"


def _with_ties(ds):
    """Every 7th event moved to the second of the event before it: same-(user, second) ties, whose input order the
    builds must keep (it decides which of them is the last event, and what precedes what in a sequence)."""
    from genrec.data.schema import Dataset

    ts = ds.events.column("timestamp").to_numpy().copy()
    users = ds.events.column("user_id").to_numpy()
    k = np.arange(7, len(ts), 7)
    k = k[users[k] == users[k - 1]]
    ts[k] = ts[k - 1]
    return Dataset(ds.events.set_column(2, "timestamp", pa.array(ts)), ds.items, ds.name)


@pytest.mark.parametrize("split", ["time", "leave_one_out"])
def test_partitioned_build_equals_in_memory(tmp_path, ray_local, split):
    ds = _shuffled(_with_ties(generate(users=300, items=150, events_per_user=25, seed=3)))
    events, items = _event_folder(tmp_path, ds)
    ts = ds.events.column("timestamp").to_numpy()
    cutoff = resolve_cutoff(ts, None, 0.85) if split == "time" else None
    valid_cutoff = resolve_cutoff(ts, None, 0.7) if split == "time" else None
    ref = write_shards(ds, tmp_path / "ref", cutoff, 2, users_per_shard=70, split=split, valid_cutoff=valid_cutoff)
    got = build_shards(events, items, tmp_path / "big", cutoff_quantile=0.85, valid_quantile=0.7, split=split,
                       partitions=4, users_per_shard=30, batch_rows=500, echo=lambda *_: None)  # several per file
    verify_shards(open_shards(tmp_path / "big"))
    assert got.manifest["counts"] == ref.manifest["counts"]
    assert got.manifest["build"] == {"partitions": 4, "input_files": 3}  # the empty file and _SUCCESS skipped
    assert len(got.files("train")) > len(ref.files("train"))  # really written per partition
    assert got.manifest["counts"]["valid_users"] > 0
    for name in ["train", "valid", "eval"]:
        assert _rows(got, name) == _rows(ref, name), name
    assert pq.read_table(got.items_path).equals(pq.read_table(ref.items_path))
    assert not list(tmp_path.glob(".big.tmp-*"))  # the scratch buckets went with the temporary folder


def test_partitioned_build_writes_an_empty_split_as_the_in_memory_one_does(tmp_path, ray_local):
    ds = generate(users=60, items=40, events_per_user=10, seed=2)
    events, items = _event_folder(tmp_path, ds, parts=2)
    after_all = int(ds.events.column("timestamp").to_numpy().max()) + 1  # no evaluation event
    ref = write_shards(ds, tmp_path / "ref", after_all, 2)
    got = build_shards(events, items, tmp_path / "big", cutoff_ts=after_all, valid_quantile=None, partitions=3,
                       echo=lambda *_: None)  # no validation window, as in the reference build
    assert got.manifest["counts"] == ref.manifest["counts"] and got.manifest["counts"]["eval_users"] == 0
    assert len(got.files("eval")) == 1 and pq.read_table(got.files("eval")[0]).schema.equals(
        pq.read_table(ref.files("eval")[0]).schema)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["item_id"].__setitem__(4, 999_999), r"row 5: item_id 999999 is not in the item table"),
    (lambda d: d["utility"].__setitem__(6, float("nan")), r"row 7: field 'utility': nan is not a finite number"),
    (lambda d: d["timestamp"].__setitem__(2, 1_700_000_000_000), r"field 'timestamp': 1700000000000 looks like ms"),
])
def test_partitioned_build_names_the_bad_row(tmp_path, ray_local, change, message):
    ds = generate(users=40, items=30, events_per_user=10, seed=1)
    events, items = _event_folder(tmp_path, ds, parts=2)
    bad = pq.read_table(events / "part-00001.parquet").to_pydict()
    change(bad)
    pq.write_table(pa.table(bad, schema=ds.events.schema), events / "part-00001.parquet")
    with pytest.raises(DataError, match=r"part-00001.parquet: " + message.replace("ms", "milliseconds")):
        build_shards(events, items, tmp_path / "out", partitions=2, batch_rows=3, echo=lambda *_: None)
    assert not (tmp_path / "out").exists()
    time.sleep(1)  # a cancelled task must not write into the folder after it was removed
    assert not list(tmp_path.glob(".out.tmp-*"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no .parquet event files"):
        build_shards(tmp_path / "empty", items, tmp_path / "out2", echo=lambda *_: None)


def test_write_events_chunks_are_seeded_and_canonical(tmp_path):
    a = write_events(tmp_path / "a", users=250, items=120, events_per_user=20, users_per_chunk=100, seed=5,
                     echo=lambda *_: None)
    b = write_events(tmp_path / "b", users=250, items=120, events_per_user=20, users_per_chunk=100, seed=5,
                     echo=lambda *_: None)
    files = sorted((tmp_path / "a" / "events").glob("*.parquet"))
    assert len(files) == 3 and a["events"] == b["events"] > 250 * 2
    ta = pa.concat_tables([pq.read_table(f) for f in files])
    tb = pa.concat_tables([pq.read_table(f) for f in sorted((tmp_path / "b" / "events").glob("*.parquet"))])
    assert ta.equals(tb)
    assert ta.column_names == ["user_id", "item_id", "timestamp", "action", "utility"]
    users = ta.column("user_id").to_numpy()
    assert users.min() == 1 and users.max() == 250 and len(np.unique(users)) == 250  # blocks do not overlap
    ts = ta.column("timestamp").to_numpy()
    assert np.all((np.diff(users) > 0) | ((np.diff(users) == 0) & (np.diff(ts) >= 0)))  # by (user, time)
    items = pq.read_table(tmp_path / "a" / "items.parquet")
    assert set(ta.column("item_id").to_numpy()) <= set(items.column("item_id").to_numpy())
    c = write_events(tmp_path / "c", users=250, items=120, events_per_user=20, users_per_chunk=100, seed=6,
                     echo=lambda *_: None)
    assert c["events"] != a["events"] or not pq.read_table(sorted((tmp_path / "c" / "events").glob("*"))[0]).equals(
        pq.read_table(files[0]))


def test_pipeline_builds_partitioned_shards_from_config(tmp_path, ray_local):
    """data.partitions sends prepare_shards through the out-of-core build; an unchanged config reuses the shards."""
    from genrec.config import load_config
    from genrec.preparation import prepare_shards

    write_events(tmp_path / "raw", users=120, items=60, events_per_user=15, users_per_chunk=50, echo=lambda *_: None)
    cfg = load_config(None, [f"storage.root={tmp_path / 'runs'}", "data.source=parquet",
                             f"data.path={tmp_path / 'raw' / 'events'}",
                             f"data.items_path={tmp_path / 'raw' / 'items.parquet'}", "data.partitions=3"])
    said = []
    shards = prepare_shards(cfg, echo=said.append)
    assert shards.manifest["build"] == {"partitions": 3, "input_files": 3}
    assert any("scatter" in s for s in said)
    again = prepare_shards(cfg, echo=said.append)
    assert again.manifest["created_at"] == shards.manifest["created_at"]  # reused, not rebuilt
