"""The Amazon review datasets as McAuley's group ships them: reviews as JSON lines, gzip-compressed or not, and
optionally the product metadata of the same category.

Two releases, told apart by the field names of each file's first line:

* 2018 (nijianmo.github.io/amazon): reviews {reviewerID, asin, unixReviewTime (Unix seconds), overall (1-5 stars)};
  metadata meta_<Category>.json(.gz) {asin, title, category (the category path, top first), brand}. Some of its
  metadata files hold Python dict literals (single quotes) instead of JSON: such lines are read too.
* 2023 (amazon-reviews-2023.github.io): reviews {user_id, parent_asin, timestamp (Unix milliseconds), rating};
  metadata {parent_asin, title, main_category, categories, store}. Items are parent_asins, the products the
  metadata describes (an asin names one variant of one).

Events: utility = the star rating and action 0, as for MovieLens ratings. Items: the reviewed products only (a
metadata file lists millions of products its 5-core review file never mentions, which would only be scored as
candidates nobody chose), titled from the metadata (by their ASIN where it has none), genres = the category path
(2023: main_category, then categories), text = the brand (2018) or store (2023), launch_ts = the first review.
ASINs are names, never numbers: they are numbered 1..n and kept as external_id.

Arrow parses the files; only when it fails is a file read again line by line in Python, which reads what Arrow
cannot (dict literals) or names the first bad line.
"""

from __future__ import annotations

import ast
import gzip
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from genrec.data.schema import _MAX_PLAUSIBLE_SECONDS, DataError, Origin

# canonical name -> (the release's key, kind); every review field is required.
REVIEW_FIELDS = {
    "2018": {"user_id": ("reviewerID", "text"), "item_id": ("asin", "text"),
             "timestamp": ("unixReviewTime", "integer"), "utility": ("overall", "number")},
    "2023": {"user_id": ("user_id", "text"), "item_id": ("parent_asin", "text"),
             "timestamp": ("timestamp", "integer"), "utility": ("rating", "number")},
}
TIME_UNIT = {"2018": 1, "2023": 1000}  # per second: 2018 has Unix seconds, 2023 milliseconds
# Only item_id is required of metadata.
META_FIELDS = {
    "2018": {"item_id": ("asin", "text"), "title": ("title", "text"), "genres": ("category", "texts"),
             "text": ("brand", "text")},
    "2023": {"item_id": ("parent_asin", "text"), "title": ("title", "text"),
             "main_category": ("main_category", "text"), "genres": ("categories", "texts"), "text": ("store", "text")},
}
_ARROW_TYPES = {"text": pa.string(), "integer": pa.int64(), "number": pa.float64(), "texts": pa.list_(pa.string())}
_BLOCK_BYTES = 16 << 20  # Arrow's JSON blocks: a line (metadata lines reach megabytes) must fit in one


@dataclass(frozen=True)
class Reviews:
    """A review file's events as canonical columns (ids still ASIN and reviewer names), and where they came from."""

    name: str  # the file's name without .json/.jsonl/.gz: the dataset's name
    events: dict[str, pa.ChunkedArray]  # user_id, item_id (text), timestamp (Unix seconds), utility (the rating)
    origin: Origin  # rows are reviews; errors name the file's line and the release's own field names


def read_reviews(path: str | os.PathLike) -> Reviews:
    """An Amazon review file of either release (see the module docstring)."""
    reviews = _JsonLines(path, "review")
    release = reviews.release(lambda keys: "2018" if "reviewerID" in keys else "2023" if "user_id" in keys else None,
                              "an Amazon review line needs reviewerID, asin, unixReviewTime, overall (2018) or "
                              "user_id, parent_asin, timestamp, rating (2023); a metadata file goes in "
                              "data.items_path")
    fields = REVIEW_FIELDS[release]
    table = reviews.read(fields, required=list(fields))
    seconds = np.floor_divide(table.column("timestamp").to_numpy(), TIME_UNIT[release])
    too_late = np.flatnonzero(seconds >= _MAX_PLAUSIBLE_SECONDS)
    if too_late.size:
        row, key = int(too_late[0]), fields["timestamp"][0]
        raise DataError(f"{reviews.shown}: line {reviews.line_of(row)}: field '{key}': {seconds[row]} looks like "
                        f"milliseconds; the {release} release has Unix {'seconds' if release == '2018' else 'ms'} "
                        "here: fix or drop this line")
    events = {
        "user_id": table.column("user_id"),
        "item_id": table.column("item_id"),
        "timestamp": pa.chunked_array([seconds]),
        "utility": table.column("utility").cast(pa.float32()),
    }
    origin = Origin(reviews.shown, lambda row: f"line {reviews.line_of(row)}",
                    {canonical: key for canonical, (key, _) in fields.items()})
    return Reviews(reviews.name, events, origin)


def read_metadata(reviewed: pa.Array, items_path: str | os.PathLike) -> tuple[dict[str, pa.ChunkedArray], Origin]:
    """Item columns (item_id, title, genres, text) of the `reviewed` ASINs from a metadata file of either release,
    and its origin. An ASIN listed twice takes its first line; one not listed is titled by its ASIN."""
    meta = _JsonLines(items_path, "metadata")

    def release(keys: set) -> str | None:
        if "reviewerID" in keys or "user_id" in keys:
            return None  # a review file: say so rather than read it as products without titles
        return "2023" if "parent_asin" in keys else "2018" if "asin" in keys else None

    fields = META_FIELDS[meta.release(release, "an Amazon metadata line needs asin (2018) or parent_asin (2023) "
                                               "and has no reviewer; the review file goes in data.path")]
    table = meta.read(fields, required=["item_id"])
    found = pc.index_in(reviewed, value_set=table.column("item_id").combine_chunks())  # first match of repeats

    def column(name: str) -> pa.Array:  # the reviewed products' values; null where a product has no line
        return pc.take(table.column(name), found)

    titles = pc.utf8_trim_whitespace(column("title").cast(pa.string()))
    untitled = pc.fill_null(pc.equal(titles, ""), True)
    heads = column("main_category").to_pylist() if "main_category" in fields else [None] * len(reviewed)
    items = {
        "item_id": pa.chunked_array([reviewed]),
        "title": pa.chunked_array([pc.if_else(untitled, reviewed, titles)]),
        "genres": pa.chunked_array([pa.array([category_path(head, path) for head, path in
                                              zip(heads, column("genres").to_pylist())], pa.list_(pa.string()))]),
        "text": pa.chunked_array([pc.utf8_trim_whitespace(pc.fill_null(column("text").cast(pa.string()), ""))]),
    }
    # The rows are reviewed products, not lines of the file (nothing validate() checks of them can fail here).
    return items, Origin(meta.shown, lambda row: f"reviewed product {row + 1}")


def category_path(head: str | None, path: list[str] | None) -> list[str]:
    """Genres of a product: its main category (2023) then its category path, trimmed, without blanks or repeats."""
    names = [name.strip() for name in [head, *(path or [])] if name]
    return [name for name in dict.fromkeys(names) if name]


# ---------------------------------------------------------------------------------------------- JSON lines

class _JsonLines:
    """A file of one JSON object per line, gzip-compressed or not (told by its first bytes, not its name)."""

    def __init__(self, path: str | os.PathLike, what: str) -> None:
        self.shown, self.what = os.fspath(path), what
        self.path = Path(self.shown)
        if not self.path.is_file():
            raise DataError(f"{self.shown}: file not found; check the path (the Amazon {what} file, .json or .json.gz)")
        with open(self.path, "rb") as f:
            self.gzipped = f.read(2) == b"\x1f\x8b"
        name = self.path.name
        for suffix in (".gz", ".json", ".jsonl"):
            name = name.removesuffix(suffix)
        self.name = name
        self._line_numbers: list[int] | None = None  # of each record, once the file was read line by line

    def lines(self) -> Iterator[tuple[int, bytes]]:
        """(line number, line) of every line holding more than white space."""
        try:
            with (gzip.open(self.path, "rb") if self.gzipped else open(self.path, "rb")) as f:
                for number, raw in enumerate(f, start=1):
                    if raw.strip():
                        yield number, raw
        except (OSError, EOFError) as exc:  # a truncated or corrupt gzip stream
            raise DataError(f"{self.shown}: cannot be read ({exc}); download the file again") from None

    def release(self, tell: Callable[[set], str | None], needs: str) -> str:
        """The release of the file, from its first line's keys (`tell` -> "2018", "2023", or None: neither)."""
        number, raw = next(self.lines(), (None, None))
        if number is None:
            raise DataError(f"{self.shown}: no data lines (the file is empty); {needs}")
        try:
            record = parse_record(raw)
        except ValueError as exc:
            raise DataError(f"{self.shown}: line {number}: {exc}; each line is one JSON object") from None
        found = tell(set(record))
        if found is None:
            keys = ", ".join(sorted(record)[:12])
            raise DataError(f"{self.shown}: line {number}: not an Amazon {self.what} line (its keys: {keys}); {needs}")
        return found

    def line_of(self, row: int) -> int:
        """The line number of the `row`th record (0-based): counted in the file, only when an error is reported."""
        if self._line_numbers is not None:
            return self._line_numbers[row]
        for index, (number, _) in enumerate(self.lines()):
            if index == row:
                return number
        return row + 1

    def read(self, fields: Mapping[str, tuple[str, str]], required: list[str]) -> pa.Table:
        """The `fields` ({canonical name: (key, kind)}) of every line as a table with the canonical names.

        Refuses a line where a `required` field is missing or empty, or any field is of the wrong kind."""
        try:
            table = self._arrow_read(fields)
        except pa.ArrowInvalid:  # not strict JSON (dict literals), or a bad line: Python reads it or names it
            table = self._python_read(fields, required)
        except OSError as exc:
            raise DataError(f"{self.shown}: cannot be read ({exc}); download the file again") from None
        if table.num_rows == 0:
            raise DataError(f"{self.shown}: no data lines; the Amazon {self.what} file has one JSON object a line")
        for name in required:
            values = table.column(name)
            missing = values.is_null()
            if pa.types.is_string(values.type):
                missing = pc.or_kleene(missing, pc.equal(pc.utf8_trim_whitespace(values), ""))  # null or "" = true
            row = pc.index(missing, True).as_py()
            if row >= 0:
                raise self._missing(self.line_of(row), fields[name][0], fields, required)
        return table

    def _arrow_read(self, fields: Mapping[str, tuple[str, str]]) -> pa.Table:
        schema = pa.schema([(key, _ARROW_TYPES[kind]) for key, kind in fields.values()])
        stream = pa.input_stream(str(self.path), compression="gzip" if self.gzipped else None)
        table = pajson.read_json(stream, read_options=pajson.ReadOptions(block_size=_BLOCK_BYTES),
                                 parse_options=pajson.ParseOptions(explicit_schema=schema,
                                                                   unexpected_field_behavior="ignore"))
        return pa.table([table.column(key) for key, _ in fields.values()], names=list(fields))

    def _python_read(self, fields: Mapping[str, tuple[str, str]], required: list[str]) -> pa.Table:
        columns: dict[str, list] = {name: [] for name in fields}
        numbers = []
        for number, raw in self.lines():
            try:
                record = parse_record(raw)
            except ValueError as exc:
                raise DataError(f"{self.shown}: line {number}: {exc}; fix or drop this line (each line is one "
                                "JSON object)") from None
            for name, (key, kind) in fields.items():
                try:
                    value = field_value(record.get(key), kind, required=name in required)
                except ValueError as exc:
                    raise DataError(f"{self.shown}: line {number}: field '{key}': {exc}; fix or drop this line") \
                        from None
                if name in required and (value is None or (isinstance(value, str) and not value.strip())):
                    raise self._missing(number, key, fields, required)
                columns[name].append(value)
            numbers.append(number)
        self._line_numbers = numbers
        return pa.table({name: pa.array(values, _ARROW_TYPES[fields[name][1]]) for name, values in columns.items()})

    def _missing(self, number: int, key: str, fields: Mapping[str, tuple[str, str]], required: list[str]) -> DataError:
        needed = ", ".join(fields[name][0] for name in required)
        return DataError(f"{self.shown}: line {number}: field '{key}': missing or empty; every {self.what} line needs "
                         f"{needed}: fill it in or drop this line")


def parse_record(raw: bytes) -> dict:
    """One line -> its object: JSON, else a Python dict literal (2018 metadata). ValueError saying what is wrong."""
    try:
        record = json.loads(raw)
    except ValueError as exc:
        problem = f"not valid JSON ({exc.msg} at column {exc.colno})" if hasattr(exc, "msg") else "not valid JSON"
        text = raw.decode("utf-8", errors="replace").strip()
        if not text.startswith("{"):
            raise ValueError(problem) from None
        try:
            record = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"{problem}, nor a Python dict literal") from None
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    return record


def field_value(value: Any, kind: str, *, required: bool) -> Any:
    """A field's value as its kind holds it (None: absent). Required fields must have their kind; optional metadata
    is taken as it comes where it can be (a brand of 3 -> "3", a lone category -> a list of one), else absent."""
    if value is None:
        return None
    if kind == "text":
        if isinstance(value, str):
            return value
        if required:
            raise ValueError(f"{value!r} is not text (a quoted id)")
        return str(value) if isinstance(value, (int, float)) else None
    if kind == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{value!r} is not an integer (a Unix time)")
    if kind == "number":
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ValueError(f"{value!r} is not a number (the star rating)")
    if isinstance(value, str):  # kind "texts"
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if v is not None]
    return None
