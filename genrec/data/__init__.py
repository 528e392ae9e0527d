"""Data layer: canonical event/item tables, loaders for real datasets, and a synthetic generator."""

from genrec.data.loaders import (
    MOVIELENS_NAMES,
    SOURCES,
    download_movielens,
    load,
    load_amazon,
    load_movielens,
    load_recbole,
    load_sequences,
    load_table,
)
from genrec.data.schema import EVENT_SCHEMA, EXTERNAL_ID, ITEM_SCHEMA, DataError, Dataset, Origin, validate
from genrec.data.synthetic import generate

__all__ = [
    "EVENT_SCHEMA",
    "EXTERNAL_ID",
    "ITEM_SCHEMA",
    "MOVIELENS_NAMES",
    "SOURCES",
    "DataError",
    "Dataset",
    "Origin",
    "download_movielens",
    "generate",
    "load",
    "load_amazon",
    "load_movielens",
    "load_recbole",
    "load_sequences",
    "load_table",
    "validate",
]
