"""Sequence files as SASRec and BERT4Rec-style repositories ship them: whitespace-separated integer ids, no header,
no timestamps, no metadata.

One rule reads both layouts in use, so nothing has to be detected or configured: each line is a user id followed by
one or more item ids in the order they happened, and a user's later lines continue their sequence.

* one line per user: ``7 12 5 33`` (S3-Rec's and CL4SRec's Beauty.txt, ...);
* one line per event: ``7 12`` (SASRec's data/ml-1m.txt, Beauty.txt, ...), file order as time.

Without timestamps only the order is known. Each user's k-th event gets the synthetic timestamp k (Unix seconds
1, 2, 3, ...), strictly increasing per user, so the leave-one-out split and the training windows see the file's
order; across users the numbers mean nothing, which is why genrec.config refuses the time split for this source.
Every title gets launch_ts 0 (available before any event): titles then never differ in age at a request, so the
title-age bias cannot rank one above another from where its first event happens to sit in the file. Titles are the
item ids as text, with no genres, year or text: the semantic tower has only the ids' digits to hash.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genrec.data.schema import DataError, Origin, first_cast_failure

FORMAT = ("each line is a user id followed by one or more item ids, integers separated by spaces or tabs "
          "(`user item item ...`, or `user item` per event)")


def sequence_events(lines: pa.ChunkedArray | pa.Array, origin: Origin) -> dict[str, np.ndarray]:
    """The lines of a sequence file -> {user_id, item_id, timestamp} int64 arrays, one entry per event, in file order.

    Pure. Line i of `lines` is data row i of `origin` (whose errors then name the file's line); lines of white space
    alone hold no event. Timestamps are each user's 1-based position in their sequence."""
    text = pc.utf8_trim_whitespace(lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines)
    # Splitting "" (a line of white space) would give one empty field: such lines become null, no fields at all.
    tokens = pc.utf8_split_whitespace(pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text))
    fields = pc.fill_null(pc.list_value_length(tokens), 0).to_numpy(zero_copy_only=False)
    offsets = tokens.offsets.to_numpy()[:-1]
    lonely = np.flatnonzero(fields == 1)
    if lonely.size:
        row = int(lonely[0])
        token = tokens[row][0].as_py()
        raise origin.error(f"one field ({token!r}), a user id without items",
                           f"{FORMAT}; add the items or drop this line{_likely_cause(token, row)}", row=row)
    flat = tokens.flatten()
    try:
        ids = pc.cast(flat, pa.int64()).to_numpy()
    except pa.ArrowInvalid:
        raise _not_an_id(flat, offsets, origin) from None
    if ids.size == 0:
        raise DataError(f"{origin.file}: no events (only blank lines); {FORMAT}")

    has_events = fields >= 2
    is_user = np.zeros(ids.size, bool)
    is_user[offsets[has_events]] = True
    users = np.repeat(ids[offsets[has_events]], fields[has_events] - 1)
    items = ids[~is_user]
    order = np.argsort(users, kind="stable")  # stable: a user's events stay in file order
    starts = np.flatnonzero(np.r_[True, users[order][1:] != users[order][:-1]])
    per_user = np.diff(np.r_[starts, users.size])
    timestamps = np.empty(users.size, np.int64)
    timestamps[order] = np.arange(users.size) - np.repeat(starts, per_user) + 1
    return {"user_id": users, "item_id": items, "timestamp": timestamps}


def _not_an_id(flat: pa.Array, offsets: np.ndarray, origin: Origin) -> DataError:
    """The error naming the first token that is not an integer: its line, its field, and the likely cause."""
    at = first_cast_failure(flat, pa.int64())
    row = int(np.searchsorted(offsets, at, side="right") - 1)
    field = at - int(offsets[row]) + 1
    token = flat[at].as_py()
    what = "user id" if field == 1 else "item id"
    return origin.error(f"field {field}: {token!r} is not an integer {what}", FORMAT + _likely_cause(token, row),
                        row=row)


def _likely_cause(token: str, row: int) -> str:
    """A hint for the two usual mistakes: a CSV file, and a header line."""
    if "," in token:
        return "; commas do not separate fields here (a CSV of events reads with data.source: csv)"
    if row == 0:
        return "; the format has no header line: drop it"
    return ""
