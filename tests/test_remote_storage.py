"""storage.root on an object store (s3://), piece by piece: the store's operations, shards published whole under a
version folder, checkpoints fetched and checked, catalogue updates. The store is a real S3-protocol server (moto) on
127.0.0.1 in its own process; pyarrow's S3 client talks HTTP to it. The whole flow on a bucket (sweep, report, Serve)
is tests/test_integration.py."""

import json
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from genrec.config import ConfigError, load_config
from genrec.shards import ShardError, open_shards, verify_shards
from genrec.storage import Store, StorageError
from tests.conftest import s3_uri, tiny_config


def _flip(store: Store, path: str, at: int | None = None) -> None:
    data = bytearray(store.read_bytes(path))
    data[len(data) // 2 if at is None else at] ^= 0xFF
    store.write_bytes(path, bytes(data))


def test_store_on_s3_writes_reads_lists_and_names_by_uri(s3_server, tmp_path):
    store = Store(s3_uri(s3_server, "unit", "root"), cache=tmp_path / "cache")
    assert store.remote and store.path("a", "b.json") == "unit/root/a/b.json"
    assert store.uri(store.path("a")) == "s3://unit/root/a"  # what a person pastes: no endpoint options
    store.write_json(store.path("a", "b.json"), {"x": 1})
    assert json.loads(store.read_text(store.path("a", "b.json"))) == {"x": 1}
    assert store.is_file(store.path("a", "b.json")) and store.is_dir(store.path("a"))
    assert [e.base_name for e in store.list(store.path("a"))] == ["b.json"]
    assert store.list(store.path("nothing-here")) == []
    # A folder goes up and comes back whole; fetch() reuses its copy unless asked for a fresh one.
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.bin").write_bytes(b"\x00\x01" * 1000)
    store.upload(src, store.path("up"))
    local = store.fetch(store.path("up"))
    assert (local / "sub" / "f.bin").read_bytes() == b"\x00\x01" * 1000
    store.write_bytes(store.path("up", "sub", "f.bin"), b"changed")
    assert (store.fetch(store.path("up")) / "sub" / "f.bin").read_bytes() == b"\x00\x01" * 1000
    assert (store.fetch(store.path("up"), fresh=True) / "sub" / "f.bin").read_bytes() == b"changed"
    # Names: a URI of this store maps to its path; another store's URI is refused, naming both.
    assert store.locate("s3://unit/root/up?region=x") == "unit/root/up"
    with pytest.raises(StorageError, match="gs://elsewhere/x: not in this config's storage"):
        store.locate("gs://elsewhere/x")
    with pytest.raises(FileNotFoundError, match="s3://unit/root/absent: no such folder"):
        store.fetch(store.path("absent"))
    with pytest.raises(StorageError, match="/tmp/x: a local path, but storage.root is s3://unit/root"):
        store.locate("/tmp/x")
    # Only some files of a folder (a checkpoint's serving files), in a cache kept per endpoint.
    (src / "big.bin").write_bytes(b"x" * 10)
    store.upload(src, store.path("some"))
    part = store.fetch(store.path("some"), only=("big.bin",))
    assert [p.name for p in part.iterdir()] == ["big.bin"]
    other = Store(s3_uri(s3_server, "unit", "root").replace("region=us-east-1", "region=eu-west-1"),
                  cache=tmp_path / "cache")
    assert other.fetch_dir(other.path("some")) != store.fetch_dir(store.path("some"))


def test_a_local_store_is_the_local_disk(tmp_path):
    """The code paths that take a Store behave on a local root as they did before there were URIs."""
    from genrec.checkpoint import load_last_good
    from genrec.recommend import list_updates, titles_table, write_titles
    from tests.test_storage import _checkpoint

    store = Store(str(tmp_path / "root"))
    assert not store.remote and store.path("a", "b") == str(tmp_path / "root" / "a" / "b")
    assert store.uri(store.path("a")) == store.path("a") and store.locate(str(tmp_path)) == str(tmp_path)
    assert store.fetch(str(tmp_path)) == tmp_path  # no copy
    store.write_json(store.path("x.json"), [1])
    assert not [p for p in (tmp_path / "root").iterdir() if p.name.startswith(".")]  # no temporary file left
    (tmp_path / "run").mkdir()
    _checkpoint(tmp_path / "run" / "checkpoint_1")
    assert load_last_good(tmp_path / "run" / "checkpoint_1", store=store)[0].path == tmp_path / "run" / "checkpoint_1"
    name = write_titles(tmp_path / "cat", titles_table([{"item_id": 5}], now=1), store)
    assert list_updates(tmp_path / "cat", store) == [name] and (tmp_path / "cat" / name).is_file()


def test_storage_root_uris_are_checked_where_the_config_is_loaded(tmp_path):
    with pytest.raises(ConfigError, match=r"storage.root: .*unknown storage scheme 'ftp'"):
        load_config(None, ["storage.root=ftp://host/x"])
    with pytest.raises(ConfigError, match="data.partitions .* needs storage.root on a folder every node mounts"):
        load_config(None, ["storage.root=s3://b/x", "data.source=parquet", f"data.path={tmp_path}",
                           f"data.items_path={tmp_path / 'items.parquet'}", "data.partitions=2"])
    cfg = load_config(None, ["storage.root=s3://b/x?region=us-east-1"])
    assert cfg.storage.remote and cfg.shards_dir() == "b/x/shards/local"
    with pytest.raises(ConfigError, match="is a URI; this operation needs a local folder"):
        cfg.storage.path("runs")


def test_shards_on_s3_are_published_whole_verified_and_rebuilt(s3_server, tmp_path):
    from genrec.preparation import prepare_shards

    cfg = tiny_config(s3_uri(s3_server, "shards"), f"storage.cache={tmp_path / 'cache'}")
    store = cfg.storage.store()
    said = []
    shards = prepare_shards(cfg, echo=said.append)
    local = prepare_shards(tiny_config(tmp_path / "local"), echo=lambda *_: None)
    # The same set as a local build (same rows, same bytes), in the bucket under one version folder.
    assert shards.manifest["counts"] == local.manifest["counts"]
    assert [f["sha256"] for f in shards.manifest["files"]] == [f["sha256"] for f in local.manifest["files"]]
    version = shards.manifest["version"]
    assert all(f.startswith(f"shards/shards/test/{version}/train/") for f in shards.files("train"))  # bucket "shards"
    folders = [e.base_name for e in store.list(cfg.shards_dir()) if e.type == pafs.FileType.Directory]
    assert folders == [version]
    assert pq.read_table(shards.files("eval"), filesystem=shards.fs).num_rows == local.manifest["counts"]["eval_users"]
    assert not list(Path(tmp_path / "cache").glob("staging/*"))  # the staging copy is gone
    # Opened again: found, not rebuilt.
    assert prepare_shards(cfg, echo=said.append).manifest["version"] == version
    # A flipped byte in one object: refused naming the object by its URI; the next run rebuilds under a new version
    # and deletes the old one.
    part = shards.files("train")[0]
    _flip(store, part)
    with pytest.raises(ShardError, match=f"s3://{part}: its sha256 differs"):
        verify_shards(open_shards(cfg.shards_dir(), store))
    again = prepare_shards(cfg, echo=said.append)
    assert any("unusable" in s and f"s3://{part}" in s for s in said), said
    assert again.manifest["version"] != version
    assert [e.base_name for e in store.list(cfg.shards_dir())
            if e.type == pafs.FileType.Directory] == [again.manifest["version"]]
    verify_shards(open_shards(cfg.shards_dir(), store))
    # A truncated object fails even the cheap open every worker does (sizes).
    store.write_bytes(again.files("eval")[0], store.read_bytes(again.files("eval")[0])[:-7])
    with pytest.raises(ShardError, match="bytes, .* says"):
        open_shards(cfg.shards_dir(), store)


def test_a_corrupt_checkpoint_on_s3_is_served_from_the_last_good_one(s3_server, tmp_path):
    from genrec.checkpoint import CHECKPOINT_WEIGHTS, CheckpointError, load_last_good
    from tests.test_storage import _checkpoint

    store = Store(s3_uri(s3_server, "ckpt"), cache=tmp_path / "cache")
    _checkpoint(tmp_path / "c")
    run = store.path("runs", "r")
    older, newer = f"{run}/checkpoint_2026-01-01_00-00-00.000000", f"{run}/checkpoint_2026-01-02_00-00-00.000000"
    store.upload(tmp_path / "c", older)
    store.upload(tmp_path / "c", newer)
    loaded, why = load_last_good(store.uri(newer), store=store)
    assert why is None and loaded.spec.num_items == 3
    good_weights = store.read_bytes(f"{newer}/{CHECKPOINT_WEIGHTS}")
    _flip(store, f"{newer}/{CHECKPOINT_WEIGHTS}")
    # The cached copy is fine, but the store's object changed: the first load of a cached copy passes its own
    # checks, so drop the cache to see what the store now holds.
    import shutil

    shutil.rmtree(tmp_path / "cache")
    loaded, why = load_last_good(store.uri(newer), store=store)
    assert loaded.path.name == Path(older).name
    assert f"s3://{newer}/{CHECKPOINT_WEIGHTS}: its sha256 differs" in why and "serving checkpoint_2026-01-01" in why
    # Repaired in the store: the corrupt cached copy is fetched again, not trusted.
    store.write_bytes(f"{newer}/{CHECKPOINT_WEIGHTS}", good_weights)
    loaded, why = load_last_good(store.uri(newer), store=store)
    assert why is None and loaded.path.name == Path(newer).name
    # A missing one, like a corrupt one, falls back to the run's newest good checkpoint; with none left, it fails.
    loaded, why = load_last_good(store.uri(f"{run}/checkpoint_missing"), store=store)
    assert loaded.path.name == Path(newer).name and "checkpoint_missing: no such checkpoint folder" in why
    with pytest.raises(CheckpointError, match="s3://ckpt/runs/gone/checkpoint_x: no such checkpoint folder"):
        load_last_good("s3://ckpt/runs/gone/checkpoint_x", store=store)


def test_catalogue_updates_on_s3(s3_server, tmp_path):
    from genrec.recommend import list_updates, titles_table, write_titles

    store = Store(s3_uri(s3_server, "cat"), cache=tmp_path / "cache")
    folder = store.path("catalogue", "x")
    assert list_updates(folder, store) == []
    first = write_titles(folder, titles_table([{"item_id": 1, "title": "a"}], now=1000), store)
    second = write_titles(folder, titles_table([{"item_id": 2}], now=1000), store)
    assert list_updates(folder, store) == [first, second]
    assert pq.read_table(f"{folder}/{first}", filesystem=store.fs).column("item_id").to_pylist() == [1]


def test_raw_data_named_by_a_uri_is_copied_and_built_as_a_local_file(s3_server, tmp_path):
    """data.path / data.items_path as s3:// URIs (the events and the item table in genrec's schema, as Parquet in the
    bucket): the shard-building driver copies them to storage.cache and builds the same shards, byte for byte, as
    from the local files; a missing object, an unknown scheme and the out-of-core build on a URI are refused by key."""
    from genrec.data.synthetic import generate
    from genrec.preparation import prepare_shards

    ds = generate(users=60, items=40, events_per_user=12, seed=3)
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(ds.events, src / "events.parquet")
    pq.write_table(ds.items, src / "items.parquet")
    bucket = Store(s3_uri(s3_server, "raw", "logs"), cache=tmp_path / "cache")
    bucket.upload(src, bucket.path("v1"))
    uri = s3_uri(s3_server, "raw", "logs/v1/events.parquet")
    items_uri = s3_uri(s3_server, "raw", "logs/v1/items.parquet")

    def build(root, path, items, *extra):
        cfg = tiny_config(tmp_path / root, f"storage.cache={tmp_path / 'cache'}", "data.source=parquet",
                          f"data.path={path}", f"data.items_path={items}", *extra)
        said = []
        return prepare_shards(cfg, echo=said.append), said

    remote, said = build("remote", uri, items_uri)
    local, _ = build("local", src / "events.parquet", src / "items.parquet")
    assert any(s.startswith(f"copied {uri} -> {tmp_path / 'cache'}") for s in said), said
    assert remote.manifest["counts"] == local.manifest["counts"] and remote.manifest["counts"]["train_events"] > 0
    assert [f["sha256"] for f in remote.manifest["files"]] == [f["sha256"] for f in local.manifest["files"]]
    with pytest.raises(ConfigError, match=r"data.path=s3://raw/logs/v1/nothing.parquet.*: no such object"):
        build("missing", s3_uri(s3_server, "raw", "logs/v1/nothing.parquet"), items_uri)
    with pytest.raises(ConfigError, match=r"data.path: .*unknown scheme 'ftp'"):
        load_config(None, ["data.source=parquet", "data.path=ftp://host/events.parquet"])
    with pytest.raises(ConfigError, match="data.partitions .* not a URI"):
        load_config(None, [f"storage.root={tmp_path}", "data.source=parquet", f"data.path={uri}",
                           f"data.items_path={items_uri}", "data.partitions=2"])
