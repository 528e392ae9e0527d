"""The out-of-core shard build (genrec.scale) against the in-memory one, and the chunked synthetic writer."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.data.schema import DataError
from genrec.data.synthetic import generate, write_events
from genrec.scale import build_shards, partition_of, quantile_from_histogram
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


def _event_folder(tmp_path, ds, parts=3):
    """The dataset's events as `parts` Parquet files in the order the loader gave them, and its item table."""
    folder = tmp_path / "events"
    folder.mkdir()
    n = ds.events.num_rows
    for i, start in enumerate(range(0, n, -(-n // parts))):
        pq.write_table(ds.events.slice(start, -(-n // parts)), folder / f"part-{i:05d}.parquet")
    pq.write_table(ds.items, tmp_path / "items.parquet")
    return folder, tmp_path / "items.parquet"


@pytest.mark.parametrize("split", ["time", "leave_one_out"])
def test_partitioned_build_equals_in_memory(tmp_path, ray_local, split):
    ds = generate(users=300, items=150, events_per_user=25, seed=3)
    events, items = _event_folder(tmp_path, ds)
    cutoff = resolve_cutoff(ds.events.column("timestamp").to_numpy(), None, 0.85) if split == "time" else None
    ref = write_shards(ds, tmp_path / "ref", cutoff, 2, users_per_shard=70, split=split)
    got = build_shards(events, items, tmp_path / "big", cutoff_quantile=0.85, split=split, partitions=4,
                       users_per_shard=30, echo=lambda *_: None)
    verify_shards(open_shards(tmp_path / "big"))
    assert got.manifest["counts"] == ref.manifest["counts"]
    assert got.manifest["build"]["partitions"] == 4
    assert len(got.files("train")) > len(ref.files("train"))  # really written per partition
    for name in ["train", "eval"] + (["valid"] if split == "leave_one_out" else []):
        assert _rows(got, name) == _rows(ref, name), name
    assert pq.read_table(got.items_path).equals(pq.read_table(ref.items_path))
    assert not list(tmp_path.glob(".big.tmp-*"))  # the scratch buckets went with the temporary folder


def test_partitioned_build_names_the_bad_row(tmp_path, ray_local):
    ds = generate(users=40, items=30, events_per_user=10, seed=1)
    events, items = _event_folder(tmp_path, ds, parts=2)
    bad = pq.read_table(events / "part-00001.parquet").to_pydict()
    bad["item_id"][4] = 999_999
    pq.write_table(pa.table(bad, schema=ds.events.schema), events / "part-00001.parquet")
    with pytest.raises(Exception, match=r"part-00001.parquet: row 5: item_id 999999 is not in the item table"):
        build_shards(events, items, tmp_path / "out", partitions=2, echo=lambda *_: None)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
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
    items = pq.read_table(tmp_path / "a" / "items.parquet")
    assert set(ta.column("item_id").to_numpy()) <= set(items.column("item_id").to_numpy())
    c = write_events(tmp_path / "c", users=250, items=120, events_per_user=20, users_per_chunk=100, seed=6,
                     echo=lambda *_: None)
    assert c["events"] != a["events"] or not pq.read_table(sorted((tmp_path / "c" / "events").glob("*"))[0]).equals(
        pq.read_table(files[0]))
