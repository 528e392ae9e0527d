"""Where genrec keeps what it writes: `storage.root`, a local folder or a `pyarrow.fs` URI.

A URI root (`s3://bucket/prefix` or `gs://bucket/prefix`, with pyarrow's query options such as
`?region=eu-west-1` or `?endpoint_override=host:port&scheme=http` for an S3-compatible store) holds the same tree as a
local folder: shards, runs (Ray Train checkpoints), tune (Ray Tune results), winners, catalogue. Every node reaches
it by itself, so a cluster needs no shared mount. Credentials come from the environment of each node (an instance
role, or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), never from the config.

Paths handed around inside genrec are paths *in the store's filesystem* (for S3 "bucket/prefix/..."); `Store.uri`
turns one back into what a person reads and can paste (`s3://bucket/prefix/...`, without the query options).

Atomic writes: on a local disk a temporary sibling is renamed over the target (readers see the old file or the new
one); on an object store one PUT (or a completed multipart upload) is atomic by itself: the object appears whole or
not at all. (pyarrow completes an upload when its stream closes, also after a failed write: a write that fails
midway on the network can leave a short object; the manifests' sizes and sha256s are what catch that.) Folders cannot be swapped atomically on an object store, so multi-file artefacts there (shard sets) are
published under a fresh version folder and made visible by writing their manifest last (genrec.shards).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from functools import lru_cache
from pathlib import Path

import pyarrow.fs as pafs

from genrec.errors import ConfigError


class StorageError(ConfigError):
    """A storage root or a name in it that cannot be used (unreachable, refused, not in this store). A ConfigError:
    the entrypoints print it as one line."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, fsync, then rename: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves the old file and no debris
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def relative_inside(name: str, origin: str, error: type[Exception] | None = None) -> str:
    """`name` (a path a manifest or a listing gives, relative to its folder) if it stays inside that folder: not
    absolute, no `..` part. Manifests are files anyone with write access to the store can edit; a path that climbs
    out of its folder would have genrec read, hash or copy files elsewhere (into the local cache too). `error`
    (default StorageError) naming `origin` (the manifest) otherwise."""
    parts = str(name).replace("\\", "/").split("/")
    if not name or str(name).startswith(("/", "~")) or ":" in parts[0] or ".." in parts:
        raise (error or StorageError)(f"{origin}: lists {name!r}, which is not a path inside its folder (absolute, "
                                      "or with '..'); refused. Rebuild or rewrite the file that lists it")
    return str(name)


def is_uri(root: str) -> bool:
    return "://" in str(root)


def default_cache() -> Path:
    return Path(os.environ.get("GENREC_CACHE", "~/.cache/genrec")).expanduser().resolve()


class Store:
    """A root folder on a pyarrow filesystem, local or remote, with the few operations genrec needs."""

    def __init__(self, root: str, cache: str | Path | None = None):
        self.root = str(root)
        self.remote = is_uri(self.root)
        if self.remote:
            self.scheme = self.root.split("://", 1)[0]
            try:
                self.fs, base = pafs.FileSystem.from_uri(self.root)
            except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise StorageError(f"storage.root={self.root}: {exc}; expected a local folder or a URI pyarrow.fs "
                                   "reads (s3://bucket/prefix, gs://bucket/prefix, hdfs://host/path)") from None
            self.base = base.rstrip("/")
            # The cache keeps copies per endpoint too: the same bucket name on two S3-compatible stores differs.
            options = self.root.split("?", 1)[1] if "?" in self.root else ""
            self._cache_key = self.scheme + (f"-{hashlib.sha256(options.encode()).hexdigest()[:8]}" if options else "")
        else:
            self.scheme = self._cache_key = ""
            self.fs = pafs.LocalFileSystem()
            self.base = str(Path(self.root).expanduser().resolve())
        # Local copies of remote artefacts (checkpoints to serve, sweep results to analyse) and wandb's offline runs.
        self.cache = Path(cache).expanduser().resolve() if cache else default_cache()

    def __reduce__(self):  # rebuilt from the root on a Ray worker: filesystems are cheap to make, not always to pickle
        return Store, (self.root, str(self.cache))

    # -- names ---------------------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """A path in this store's filesystem."""
        return "/".join([self.base, *(str(p).strip("/") for p in parts if str(p))])

    def uri(self, path: str | Path) -> str:
        """How a person names `path` (a path in this filesystem): the local path, or scheme://bucket/key."""
        return f"{self.scheme}://{path}" if self.remote else str(path)

    def locate(self, name: str | Path) -> str:
        """A path in this filesystem from what a manifest or a person gives: a path, or a URI of this store's scheme."""
        name = str(name)
        if self.remote and not is_uri(name) and name.startswith(("/", "~", ".")):  # bucket/key paths never do
            raise StorageError(f"{name}: a local path, but storage.root is {self.uri(self.base)}; give a path or URI "
                               "in that store (upload the folder there first)")
        if is_uri(name):
            scheme, rest = name.split("://", 1)
            if not self.remote or scheme != self.scheme:
                raise StorageError(f"{name}: not in this config's storage ({self.root}); set storage.root to its "
                                   "store, or copy it there")
            return rest.split("?", 1)[0].rstrip("/")
        return name if self.remote else str(Path(name).expanduser().resolve())

    def local(self, *parts: str) -> Path:
        """A local folder for `parts`: under the root when it is a local folder, else under the cache."""
        if self.remote:
            return (self.cache / "local" / self._cache_key
                    / relative_inside(self.path(*parts).lstrip("/"), f"storage {self.root}"))
        return Path(self.path(*parts))

    # -- reading -------------------------------------------------------------------------------------------------
    def info(self, path: str) -> pafs.FileInfo:
        return self.fs.get_file_info(path)

    def is_file(self, path: str) -> bool:
        return self.info(path).type == pafs.FileType.File

    def is_dir(self, path: str) -> bool:
        return self.info(path).type == pafs.FileType.Directory

    def size(self, path: str) -> int | None:
        i = self.info(path)
        return i.size if i.type == pafs.FileType.File else None

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode()

    def sha256(self, path: str) -> str:
        h = hashlib.sha256()
        with self.fs.open_input_stream(path) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    def list(self, path: str) -> list[pafs.FileInfo]:
        """The entries directly under `path` (empty when it does not exist)."""
        if not self.is_dir(path):
            return []
        return self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))

    # -- writing -------------------------------------------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes) -> None:
        """Atomically: readers see the old content or the new, never part of it (see the module docstring)."""
        if not self.remote:
            atomic_write_bytes(Path(path), data)
            return
        self.ensure_root()
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def ensure_root(self) -> None:
        """The root's bucket and prefix exist before the first write (an S3 root creates its bucket only with
        ?allow_bucket_creation=true; otherwise a missing bucket is an error naming the root)."""
        if getattr(self, "_root_ready", False):
            return
        try:
            self.fs.create_dir(self.base, recursive=True)
        except OSError as exc:
            raise StorageError(f"storage.root={self.root}: cannot write there ({exc}); create the bucket, check the "
                               "credentials of this node, or add ?allow_bucket_creation=true") from None
        self._root_ready = True

    def write_json(self, path: str, obj) -> None:
        self.write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())

    def delete_dir(self, path: str) -> None:
        if self.is_dir(path):
            self.fs.delete_dir(path)

    def upload(self, local_dir: str | Path, path: str) -> None:
        """Copy a local folder's tree to `path` in this store."""
        if self.remote:
            self.ensure_root()
        pafs.copy_files(str(local_dir), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)

    def download(self, path: str, local_dir: str | Path, replace: bool = True,
                 only: tuple[str, ...] | None = None) -> Path:
        """A local copy of the store's folder `path` at `local_dir`, copied beside it and renamed into place (a
        reader never sees half of it). replace=False keeps a copy already there (for folders written once, such
        as checkpoints: two workers of a node fetching the same one share it). `only`: just these files of the
        folder (a checkpoint's serving files, not its optimizer state)."""
        local_dir = Path(local_dir)
        if local_dir.is_dir() and not replace:
            return local_dir
        local_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = local_dir.with_name(f".{local_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
        old = local_dir.with_name(f".{local_dir.name}.old-{uuid.uuid4().hex[:8]}")
        try:
            tmp.mkdir()  # copy_files makes the folders of nested files, not the top one
            if only is None:
                pafs.copy_files(path, str(tmp), source_filesystem=self.fs,
                                destination_filesystem=pafs.LocalFileSystem())
            for name in only or ():
                if self.is_file(f"{path}/{name}"):  # a missing one is for the reader's checks to name
                    with self.fs.open_input_stream(f"{path}/{name}") as src, open(tmp / name, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
            if replace:
                try:
                    os.replace(local_dir, old)
                except FileNotFoundError:  # none there yet, or another process is replacing it too
                    pass
            try:
                os.replace(tmp, local_dir)
            except OSError:
                if not local_dir.is_dir():
                    raise  # else: another process placed its copy first; use that one
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        return local_dir

    def fetch(self, path: str, fresh: bool = False, only: tuple[str, ...] | None = None) -> Path:
        """A local folder with the content of the store's folder `path`: itself on a local store, else a copy in
        the cache. fresh=False reuses a copy already there (checkpoint folders never change once written, and their
        readers verify them against their checksums); fresh=True copies again (a sweep's results, which grow)."""
        if not self.remote:
            return Path(path)
        if not self.is_dir(path):
            raise FileNotFoundError(f"{self.uri(path)}: no such folder")
        return self.download(path, self.fetch_dir(path), replace=fresh, only=only)

    def fetch_dir(self, path: str) -> Path:
        """Where fetch() puts its copy of `path` (a path with `..` would land outside the cache: refused)."""
        return self.cache / "fetched" / self._cache_key / relative_inside(path.lstrip("/"), f"storage {self.root}")


def local_store() -> Store:
    """The local disk as a Store (for code that takes a store and was given none)."""
    return store("/")


@lru_cache(maxsize=16)
def store(root: str, cache: str | None = None) -> Store:
    """One Store per (root, cache) per process."""
    return Store(root, cache)
