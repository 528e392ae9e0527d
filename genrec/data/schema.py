"""The canonical tables every loader produces, and the one check they all pass through.

A :class:`Dataset` is two Arrow tables:

* events (:data:`EVENT_SCHEMA`): one row per interaction, sorted by user then time;
* items (:data:`ITEM_SCHEMA`): one row per title, every event's item among them, plus an optional
  ``external_id`` column holding the raw id when a source's ids were not integers.

Every problem with input data is a :class:`DataError` whose message says which file, which line (or row) and
which field is wrong, and what to do about it, because the person reading it is usually looking at that file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genrec.errors import GenrecError


class DataError(GenrecError, ValueError):
    """Input data that cannot be used. The message names the file, the line/row and/or field, and the fix."""


EVENT_SCHEMA = pa.schema([
    pa.field("user_id", pa.int64()),
    pa.field("item_id", pa.int64()),
    pa.field("timestamp", pa.int64()),  # Unix seconds, UTC
    pa.field("action", pa.int32()),  # event type id; 0 when the source has only one kind of event
    pa.field("utility", pa.float32()),  # rating, watch fraction, ...; 1.0 where the source has none
])

ITEM_SCHEMA = pa.schema([
    pa.field("item_id", pa.int64()),
    pa.field("title", pa.string()),
    pa.field("genres", pa.list_(pa.string())),
    pa.field("year", pa.int32()),  # nullable
    pa.field("launch_ts", pa.int64()),  # nullable; Unix seconds of release, else the item's first event
    pa.field("text", pa.string()),  # free text (tags, keywords); "" when none
])

# Optional items column: the raw id of sources whose ids were strings and were factorized to 1..n.
EXTERNAL_ID = pa.field("external_id", pa.string())

# Unix seconds reach 10**11 only in the year 5138: larger values are almost surely milliseconds.
_MAX_PLAUSIBLE_SECONDS = 10**11


# Free-text annotations of titles with the time they were written (MovieLens tags). They become each title's `text`
# only when shards are built, from the tags written before training ends (genrec.shards.with_tag_text): words
# written later would carry the future into a title's features.
TAG_SCHEMA = pa.schema([
    pa.field("item_id", pa.int64()),
    pa.field("tag", pa.string()),
    pa.field("timestamp", pa.int64()),
])


@dataclass
class Dataset:
    events: pa.Table
    items: pa.Table
    name: str
    tags: pa.Table | None = None  # TAG_SCHEMA rows, not yet in items' text


def _row_number(index: int) -> str:
    return f"row {index + 1}"


@dataclass(frozen=True)
class Origin:
    """Where a table came from, so that an error points a person at the right file, line and column.

    `file` is shown as given; `locate` turns a 0-based row index of the parsed table into what a person finds
    in the file ("line 17" for text files, "row 17" otherwise); `columns` maps canonical field names to the
    file's own column names (e.g. item_id -> movieId).
    """

    file: str
    locate: Callable[[int], str] = _row_number
    columns: Mapping[str, str] = field(default_factory=dict)

    def error(self, problem: str, fix: str, *, row: int | None = None, column: str | None = None) -> DataError:
        parts = [self.file]
        if row is not None:
            parts.append(self.locate(row))
        if column is not None:
            parts.append(f"field '{self.columns.get(column, column)}'")
        return DataError(": ".join([*parts, problem]) + f"; {fix}")


def first_true(mask: pa.Array | pa.ChunkedArray) -> int:
    """Index of the first true value of a boolean array, or -1."""
    return pc.index(mask, True).as_py()


def first_cast_failure(values: pa.Array | pa.ChunkedArray, target: pa.DataType) -> int:
    """Index of the first value that does not cast to `target`, given that the whole column does not (bisection:
    only an error being reported pays for it)."""
    lo, hi = 0, len(values)
    while hi - lo > 1:  # invariant: values[lo:hi] holds the first failure
        mid = (lo + hi) // 2
        try:
            pc.cast(values.slice(lo, mid - lo), target)
            lo = mid
        except pa.ArrowInvalid:
            hi = mid
    return lo


def validate(dataset: Dataset, source: str, *, events_origin: Origin | None = None,
             items_origin: Origin | None = None) -> Dataset:
    """Check a dataset against the canonical schema and return it with events sorted by (user_id, timestamp).

    Loaders pass origins so that errors name the file and line; otherwise errors name `source` and the row of
    the events or items table. Items are returned sorted by item_id.
    """
    ev_origin = events_origin or Origin(source, lambda i: f"events row {i + 1}")
    it_origin = items_origin or Origin(source, lambda i: f"items row {i + 1}")
    events = _conform(dataset.events, EVENT_SCHEMA, (), ev_origin, "events")
    items = _conform(dataset.items, ITEM_SCHEMA, (EXTERNAL_ID,), it_origin, "items")

    if events.num_rows == 0:
        raise ev_origin.error("there are no events", "a dataset needs at least one interaction")
    for name in EVENT_SCHEMA.names:
        _no_nulls(events, name, ev_origin)
    for name in ("item_id", "title", "genres", "text"):
        _no_nulls(items, name, it_origin)

    utility = events.column("utility")
    bad = first_true(pc.invert(pc.is_finite(utility)))
    if bad >= 0:
        raise ev_origin.error(f"{utility[bad].as_py()} is not a finite number", "fix or drop this row",
                              row=bad, column="utility")
    timestamps = events.column("timestamp")
    bad = first_true(pc.greater_equal(timestamps, _MAX_PLAUSIBLE_SECONDS))
    if bad >= 0:
        raise ev_origin.error(f"{timestamps[bad].as_py()} looks like milliseconds, not Unix seconds",
                              "convert timestamps to seconds (load_table(..., timestamp_format='ms'))",
                              row=bad, column="timestamp")

    item_ids = items.column("item_id").to_numpy()
    order = np.argsort(item_ids, kind="stable")
    repeated = np.flatnonzero(item_ids[order][1:] == item_ids[order][:-1])
    if repeated.size:
        row = int(order[repeated + 1].min())  # the first row that repeats an id seen above it
        raise it_origin.error(f"item {item_ids[row]} is listed more than once", "keep one row per item",
                              row=row, column="item_id")

    known = pc.is_in(events.column("item_id"), value_set=pa.array(item_ids))
    bad = first_true(pc.invert(known))
    if bad >= 0:
        raise ev_origin.error(f"item {events.column('item_id')[bad].as_py()} is not in {it_origin.file}",
                              f"add the item to {it_origin.file} or drop this row", row=bad, column="item_id")

    tags = None if dataset.tags is None else _conform(dataset.tags, TAG_SCHEMA, (), it_origin, "tags")
    return Dataset(events=_sorted_events(events), items=items.take(order), name=dataset.name, tags=tags)


def _sorted_events(events: pa.Table) -> pa.Table:
    """Events by (user_id, timestamp); Arrow's sort is stable, so same-second events keep their source order."""
    users = events.column("user_id").to_numpy()
    timestamps = events.column("timestamp").to_numpy()
    step_user, step_time = np.diff(users), np.diff(timestamps)
    if np.all((step_user > 0) | ((step_user == 0) & (step_time >= 0))):
        return events
    return events.take(pc.sort_indices(events, sort_keys=[("user_id", "ascending"), ("timestamp", "ascending")]))


def _conform(table: pa.Table, schema: pa.Schema, optional: tuple[pa.Field, ...], origin: Origin,
             what: str) -> pa.Table:
    """The table's columns in canonical order and types; refuses missing, mistyped and unknown columns."""
    if not isinstance(table, pa.Table):
        raise origin.error(f"{what} is a {type(table).__name__}, not a pyarrow.Table", "build it with pa.table()")
    allowed = {f.name: f for f in [*schema, *optional]}
    unknown = [n for n in table.column_names if n not in allowed]
    if unknown:
        raise origin.error(f"{what} has unexpected columns {unknown}",
                           f"drop them; {what} columns are {', '.join(allowed)}")
    columns, fields = [], []
    for f in [*schema, *(o for o in optional if o.name in table.column_names)]:
        if f.name not in table.column_names:
            raise origin.error(f"{what} has no column '{f.name}'", f"add it (type {f.type})")
        column = table.column(f.name)
        if column.type != f.type:  # list<string> equality ignores the child's name (item vs element)
            raise origin.error(f"{what} column '{f.name}' has type {column.type}, expected {f.type}",
                               f"cast it to {f.type}")
        columns.append(column.cast(f.type))  # a no-op, except that it renames a list's child to the canonical one
        fields.append(f)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _no_nulls(table: pa.Table, name: str, origin: Origin) -> None:
    bad = first_true(table.column(name).is_null())
    if bad >= 0:
        raise origin.error("value is missing", "fill it in or drop this row", row=bad, column=name)
