"""Data layer: canonical schema, loaders (MovieLens CSV/.dat, RecBole, generic tables), synthetic generator."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.data import (
    EVENT_SCHEMA,
    ITEM_SCHEMA,
    DataError,
    Dataset,
    download_movielens,
    generate,
    load,
    load_movielens,
    load_recbole,
    load_table,
    validate,
)
from genrec.data.loaders import with_tag_text


def write(folder: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = folder / name
    path.write_bytes(text.encode(encoding))
    return path


def column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()


def item_row(ds: Dataset, item_id: int) -> dict:
    rows = ds.items.filter(pa.compute.equal(ds.items["item_id"], item_id)).to_pylist()
    assert len(rows) == 1
    return rows[0]


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())


# ------------------------------------------------------------------------------------------------ validate

def tiny(events: dict | None = None, items: dict | None = None) -> Dataset:
    ev = {"user_id": [2, 1, 1], "item_id": [10, 11, 10], "timestamp": [5, 9, 3], "action": [0, 0, 1],
          "utility": [1.0, 0.5, 1.0]}
    it = {"item_id": [10, 11], "title": ["a", "b"], "genres": [["x"], []], "year": [None, 1999],
          "launch_ts": [None, None], "text": ["", "t"]}
    ev.update(events or {})
    it.update(items or {})
    return Dataset(pa.table(ev, schema=EVENT_SCHEMA), pa.table(it, schema=ITEM_SCHEMA), "tiny")


def test_validate_sorts_events_by_user_then_time_stably():
    ds = tiny({"user_id": [2, 1, 1, 1], "item_id": [10, 11, 10, 11], "timestamp": [5, 9, 3, 3],
               "action": [0, 0, 1, 2], "utility": [1.0, 0.5, 1.0, 1.0]})
    out = validate(ds, "tiny")
    assert column(out.events, "user_id") == [1, 1, 1, 2]
    assert column(out.events, "timestamp") == [3, 3, 9, 5]
    assert column(out.events, "action") == [1, 2, 0, 0]  # same-second events keep their order
    assert out.events.schema == EVENT_SCHEMA


def test_validate_accepts_external_id_and_refuses_other_extra_columns():
    ds = tiny()
    ds.items = ds.items.append_column("external_id", pa.array(["A", "B"]))
    assert validate(ds, "tiny").items.column_names[-1] == "external_id"
    ds.items = ds.items.append_column("extra", pa.array([1, 2]))
    with pytest.raises(DataError, match=r"tiny: items has unexpected columns \['extra'\]"):
        validate(ds, "tiny")


@pytest.mark.parametrize("dataset, pattern", [
    (lambda: tiny({"item_id": [10, 99, 10]}), r"tiny: events row 2: field 'item_id': item 99 is not in tiny"),
    (lambda: tiny(items={"item_id": [10, 10]}), r"tiny: items row 2: field 'item_id': item 10 is listed more"),
    (lambda: tiny({"timestamp": [5, None, 3]}), r"tiny: events row 2: field 'timestamp': value is missing"),
    (lambda: tiny({"timestamp": [1_700_000_000_000, 9, 3]}), r"events row 1: field 'timestamp': .* milliseconds"),
    (lambda: tiny({"utility": [1.0, float("nan"), 1.0]}), r"events row 2: field 'utility': nan is not a finite"),
    (lambda: Dataset(tiny().events.drop_columns("action"), tiny().items, "t"), r"events has no column 'action'"),
    (lambda: Dataset(tiny().events.set_column(0, "user_id", pa.array([1, 2, 3], pa.int32())), tiny().items, "t"),
     r"events column 'user_id' has type int32, expected int64; cast it"),
    (lambda: Dataset(tiny().events.slice(0, 0), tiny().items, "t"), r"tiny: there are no events"),
])
def test_validate_refuses_bad_datasets(dataset, pattern):
    with pytest.raises(DataError, match=pattern):
        validate(dataset(), "tiny")


# ----------------------------------------------------------------------------------------- MovieLens (CSV)

RATINGS_CSV = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n\n2,2,3.0,964982224\n"
MOVIES_CSV = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children\n"
    '2,"American President, The (1995) ",Comedy|Drama\n'
    "3,Hyena Road,(no genres listed)\n"
    '4,"Big Bang Theory, The (2007-)",Comedy\n'
)
TAGS_CSV = "userId,movieId,tag,timestamp\n1,1,pixar,1\n2,1,fun,2\n3,1,pixar,3\n2,3, war ,4\n9,404,orphan,5\n"


def movielens_csv(folder: Path, ratings: str = RATINGS_CSV, movies: str = MOVIES_CSV,
                  tags: str | None = TAGS_CSV) -> Path:
    folder.mkdir(exist_ok=True)
    write(folder, "ratings.csv", ratings)
    write(folder, "movies.csv", movies)
    if tags is not None:
        write(folder, "tags.csv", tags)
    return folder


def test_movielens_csv_round_trip(tmp_path):
    ds = load_movielens(movielens_csv(tmp_path / "ml-latest-small"))
    assert ds.name == "ml-latest-small"
    assert ds.events.schema == EVENT_SCHEMA
    assert column(ds.events, "user_id") == [1, 1, 2]
    assert column(ds.events, "item_id") == [3, 1, 2]  # sorted by time within the user
    assert column(ds.events, "timestamp") == [964981247, 964982703, 964982224]
    assert column(ds.events, "utility") == [4.5, 4.0, 3.0]
    assert column(ds.events, "action") == [0, 0, 0]
    toy = item_row(ds, 1)
    assert (toy["title"], toy["year"], toy["genres"]) == ("Toy Story (1995)", 1995, ["Adventure", "Animation",
                                                                                      "Children"])
    assert toy["text"] == ""  # tags wait, with their times, until shards know where training ends
    assert ds.tags.column("tag").to_pylist()[:2] == ["pixar", "fun"]
    toy = item_row(with_tag_text(ds, None), 1)
    assert toy["text"] == "pixar, fun"  # distinct tags in order of first use
    assert toy["launch_ts"] == 964982703  # no release time in MovieLens: the first rating
    president = item_row(ds, 2)
    assert (president["title"], president["year"]) == ("American President, The (1995)", 1995)
    assert item_row(ds, 3)["genres"] == [] and item_row(ds, 3)["year"] is None
    assert item_row(with_tag_text(ds, None), 3)["text"] == "war"
    unrated = item_row(ds, 4)
    assert (unrated["year"], unrated["launch_ts"], unrated["text"]) == (2007, None, "")


@pytest.mark.parametrize("ratings, pattern", [
    ("userId,movieId,rating\n1,1,4\n", r"ratings\.csv: field 'timestamp': column not found"),
    ("userId,movieId,rating,timestamp\n1,1,4,964982703\n\n1,2,4,abc\n",
     r"ratings\.csv: line 4: field 'timestamp': 'abc' is not a Unix timestamp \(integer seconds\); fix or drop"),
    ("userId,movieId,rating,timestamp\n1,1,4,964982703\n1,9,4,964982704\n",
     r"ratings\.csv: line 3: field 'movieId': item 9 is not in .*movies\.csv; add the item"),
    ("userId,movieId,rating,timestamp\n1,1,x,964982703\n", r"ratings\.csv: line 2: field 'rating': 'x' is not a"),
    ("userId,movieId,rating,timestamp\n1,,4,964982703\n", r"ratings\.csv: line 2: field 'movieId': value is missing"),
    ("userId,movieId,rating,timestamp\n1,1,4,964982703\n1,2,4\n", r"ratings\.csv: line 3: expected 4 fields"),
    ("userId,movieId,rating,timestamp\n1,1,nan,964982703\n", r"ratings\.csv: line 2: field 'rating': nan is not"),
    ("", r"ratings\.csv: file is empty"),
    ("userId,movieId,rating,timestamp\n", r"ratings\.csv: no data rows"),
])
def test_movielens_csv_errors_name_file_and_line(tmp_path, ratings, pattern):
    with pytest.raises(DataError, match=pattern):
        load_movielens(movielens_csv(tmp_path / "ml", ratings=ratings))


def test_movielens_csv_missing_and_malformed_files(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: folder not found"):
        load_movielens(tmp_path / "nowhere")
    (tmp_path / "blank").mkdir()
    with pytest.raises(DataError, match=r"blank: no ratings\.csv or ratings\.dat"):
        load_movielens(tmp_path / "blank")
    folder = movielens_csv(tmp_path / "ml")
    (folder / "movies.csv").unlink()
    with pytest.raises(DataError, match=r"ml/movies\.csv: file not found"):
        load_movielens(folder)
    write(folder, "movies.csv", "movieId,name,genres\n1,x,y\n")
    with pytest.raises(DataError, match=r"movies\.csv: field 'title': column not found"):
        load_movielens(folder)
    write(folder, "movies.csv", MOVIES_CSV + "2,Duplicate (1990),Drama\n")
    with pytest.raises(DataError, match=r"movies\.csv: line 6: field 'movieId': item 2 is listed more than once"):
        load_movielens(folder)
    write(folder, "movies.csv", MOVIES_CSV)
    write(folder, "tags.csv", "userId,movieId,tag,timestamp\n1,one,x,1\n")
    with pytest.raises(DataError, match=r"tags\.csv: line 2: field 'movieId': 'one' is not an integer id"):
        load_movielens(folder)
    (folder / "ratings.csv").unlink()
    write(folder, "u.data", "1\t1\t5\t881250949\n")
    with pytest.raises(DataError, match=r"ml-100k's own u\.data layout"):
        load_movielens(folder)


def test_error_paths_are_shown_as_given(tmp_path, monkeypatch):
    movielens_csv(tmp_path / "ml", ratings="userId,movieId,rating,timestamp\n1,1,4,x\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^ml/ratings\.csv: line 2: field 'timestamp'"):
        load_movielens("ml")


# ----------------------------------------------------------------------------------------- MovieLens (.dat)

RATINGS_DAT = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4.5::978298413\n"
MOVIES_DAT = ("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
              "661::Misérables, Les (1995)::Drama|Musical\n"
              "260::Star Wars: Episode IV - A New Hope (1977)::Action|Sci-Fi\n")


def movielens_dat(folder: Path, ratings: str = RATINGS_DAT, movies: str = MOVIES_DAT, encoding: str = "latin-1",
                  tags: str | None = None) -> Path:
    folder.mkdir(exist_ok=True)
    write(folder, "ratings.dat", ratings)
    write(folder, "movies.dat", movies, encoding)
    if tags is not None:
        write(folder, "tags.dat", tags)
    return folder


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])  # ml-1m is latin-1, ml-10m utf-8
def test_movielens_dat_round_trip(tmp_path, encoding):
    tags = "1::260::space opera::1188263880\n2::260::a::b::tag with '::'::1188263881\n"
    ds = load_movielens(movielens_dat(tmp_path / "ml-1m", encoding=encoding, tags=tags))
    assert ds.name == "ml-1m"
    assert column(ds.events, "item_id") == [1193, 661, 1193]
    assert column(ds.events, "timestamp") == [978300760, 978302109, 978298413]
    assert column(ds.events, "utility") == [5.0, 3.0, 4.5]
    assert item_row(ds, 661)["title"] == "Misérables, Les (1995)"
    assert item_row(ds, 661)["genres"] == ["Drama", "Musical"]
    star_wars = item_row(ds, 260)
    assert (star_wars["title"], star_wars["year"]) == ("Star Wars: Episode IV - A New Hope (1977)", 1977)
    assert star_wars["text"] == "" and ds.tags.column("timestamp").to_pylist() == [1188263880, 1188263881]
    assert item_row(with_tag_text(ds, None), 260)["text"] == "space opera, a::b::tag with '::'"
    assert item_row(with_tag_text(ds, 1188263881), 260)["text"] == "space opera"
    assert star_wars["launch_ts"] is None


@pytest.mark.parametrize("ratings, pattern", [
    ("1::1193::5::978300760\n1::661::3\n", r"ratings\.dat: line 2: expected 4 fields separated by '::' "
                                           r"\(UserID::MovieID::Rating::Timestamp\), found 3"),
    ("1::1193::5::978300760\n\n1::661::3::then\n", r"ratings\.dat: line 3: field 'Timestamp': 'then' is not"),
    ("1::1193::5::978300760\n1::7::3::978300761\n", r"ratings\.dat: line 2: field 'MovieID': item 7 is not in "
                                                    r".*movies\.dat"),
    ("", r"ratings\.dat: file is empty"),
])
def test_movielens_dat_errors_name_file_and_line(tmp_path, ratings, pattern):
    with pytest.raises(DataError, match=pattern):
        load_movielens(movielens_dat(tmp_path / "ml", ratings=ratings))


def test_movielens_dat_missing_movies(tmp_path):
    folder = movielens_dat(tmp_path / "ml")
    (folder / "movies.dat").unlink()
    with pytest.raises(DataError, match=r"movies\.dat: file not found"):
        load_movielens(folder)


# ---------------------------------------------------------------------------------------------------- RecBole

INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "196\t242\t3\t881250949\n186\t302\t3\t891717742.7\n196\t302\t5\t881250950\n")
ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"
        '1\t"Toy Story"\t\tAnimation Children\'s Comedy\n')


def recbole(folder: Path, inter: str = INTER, item: str | None = ITEM, name: str = "ml-100k") -> Path:
    folder.mkdir(exist_ok=True)
    write(folder, f"{name}.inter", inter)
    if item is not None:
        write(folder, f"{name}.item", item)
    return folder


def test_recbole_round_trip(tmp_path):
    ds = load_recbole(recbole(tmp_path / "rb"))
    assert ds.name == "ml-100k"
    assert column(ds.events, "user_id") == [186, 196, 196]
    assert column(ds.events, "timestamp") == [891717742, 881250949, 881250950]  # float seconds, floored
    assert column(ds.events, "utility") == [3.0, 3.0, 5.0]
    confidential = item_row(ds, 302)
    assert (confidential["title"], confidential["year"]) == ("L.A. Confidential", 1997)
    assert confidential["genres"] == ["Crime", "Film-Noir", "Mystery", "Thriller"]
    toy = item_row(ds, 1)
    assert (toy["title"], toy["year"], toy["genres"]) == ('"Toy Story"', None, ["Animation", "Children's", "Comedy"])
    assert load_recbole(tmp_path / "rb" / "ml-100k.inter").events == ds.events  # the .inter file itself


def test_recbole_without_item_file_and_with_string_tokens(tmp_path):
    inter = "user_id:token\titem_id:token\ttimestamp:float\nu2\tB07\t10\nu1\tA01\t20\nu1\tB07\t30\n"
    ds = load_recbole(recbole(tmp_path / "rb", inter=inter, item=None, name="shop"))
    assert column(ds.events, "user_id") == [1, 1, 2]  # u1, u2 numbered in sorted order
    assert column(ds.events, "item_id") == [1, 2, 2]
    assert column(ds.events, "utility") == [1.0, 1.0, 1.0]
    assert column(ds.items, "external_id") == ["A01", "B07"]
    assert column(ds.items, "title") == ["A01", "B07"]
    assert column(ds.items, "genres") == [[], []]
    assert column(ds.items, "launch_ts") == [20, 10]


def test_recbole_numeric_tokens_without_item_file_are_titled_by_id(tmp_path):
    ds = load_recbole(recbole(tmp_path / "rb", item=None))
    assert column(ds.items, "item_id") == [242, 302] and column(ds.items, "title") == ["242", "302"]
    assert "external_id" not in ds.items.column_names


@pytest.mark.parametrize("inter, pattern", [
    ("user_id:token\titem_id:token\trating:float\n196\t242\t3\n",
     r"ml-100k\.inter: field 'timestamp': no 'timestamp:<type>' column"),
    (INTER + "196\t242\t3\tyesterday\n",
     r"ml-100k\.inter: line 5: field 'timestamp:float': 'yesterday' is not a Unix timestamp"),
    (INTER + "196\t999\t3\t881250951\n",
     r"ml-100k\.inter: line 5: field 'item_id:token': item 999 is not in .*ml-100k\.item"),
    ("", r"ml-100k\.inter: file is empty"),
    ("user_id:token\titem_id:token\ttimestamp:float\n", r"ml-100k\.inter: no data rows"),
])
def test_recbole_errors_name_file_and_line(tmp_path, inter, pattern):
    with pytest.raises(DataError, match=pattern):
        load_recbole(recbole(tmp_path / "rb", inter=inter))


def test_recbole_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"folder not found"):
        load_recbole(tmp_path / "none")
    folder = recbole(tmp_path / "rb")
    # A placeholder year ("unknown"; ML-100K itself ships "unkonwn") is a missing year, not an error.
    write(folder, "ml-100k.item", ITEM.replace("1997", "unkonwn"))
    years = load_recbole(folder).items.column("year").to_pylist()
    assert None in years and all(y is None or 1900 < y < 2100 for y in years)
    write(folder, "other.inter", INTER)
    with pytest.raises(DataError, match=r"several \.inter files \(ml-100k, other\); pass the RecBole dataset name"):
        load_recbole(folder)
    with pytest.raises(DataError, match=r"nope\.inter: file not found"):
        load_recbole(folder, name="nope")


# ------------------------------------------------------------------------------------------ generic tables

EVENTS_CSV = ("uid,sku,when,kind,score\n"
              "anna,B-2,2024-01-02T03:04:05Z,0,0.5\n"
              "bob,A-1,2024-01-01T00:00:00+01:00,1,\n"
              "anna,A-1,2024-01-03T00:00:00.9Z,,1.0\n")
ITEMS_CSV = "sku,name,tags,released\nA-1,Apple,Fruit|Red,2023-12-01T00:00:00Z\nB-2,Bean,,\nC-3,Corn,Veg,\n"
MAPPING = {"user_id": "uid", "item_id": "sku", "timestamp": "when", "action": "kind", "utility": "score",
           "title": "name", "genres": "tags", "launch_ts": "released"}


def test_csv_with_string_ids_iso_times_and_mapping(tmp_path):
    ds = load_table(write(tmp_path, "ev.csv", EVENTS_CSV), write(tmp_path, "it.csv", ITEMS_CSV), columns=MAPPING)
    assert ds.name == "ev"
    assert column(ds.events, "user_id") == [1, 1, 2]  # anna, bob
    assert column(ds.events, "item_id") == [2, 1, 1]  # sorted raw ids: A-1 -> 1, B-2 -> 2, C-3 -> 3
    assert column(ds.events, "timestamp") == [utc("2024-01-02T03:04:05"), utc("2024-01-03T00:00:00"),
                                              utc("2023-12-31T23:00:00")]
    assert column(ds.events, "action") == [0, 0, 1]  # empty -> 0
    assert column(ds.events, "utility") == [0.5, 1.0, 1.0]  # empty -> 1.0
    assert column(ds.items, "external_id") == ["A-1", "B-2", "C-3"]
    assert column(ds.items, "genres") == [["Fruit", "Red"], [], ["Veg"]]
    # launch_ts from the file where given, else the first event, else null
    assert column(ds.items, "launch_ts") == [utc("2023-12-01T00:00:00"), utc("2024-01-02T03:04:05"), None]
    assert load("csv", str(tmp_path / "ev.csv"), items_path=str(tmp_path / "it.csv"), columns=MAPPING).items == ds.items


def test_parquet_with_arrow_timestamps_lists_and_canonical_names(tmp_path):
    pq.write_table(pa.table({
        "user_id": pa.array([7, 7, 8], pa.int32()),
        "item_id": [30, 10, 30],
        "timestamp": pa.array([datetime(2024, 5, 1, 12, tzinfo=timezone.utc)] * 2 + [datetime(2024, 5, 2)],
                              pa.timestamp("ms", "UTC")),
    }), tmp_path / "ev.parquet")
    pq.write_table(pa.table({
        "item_id": [10, 30], "title": ["Ten", None], "genres": [["a", "b"], None], "year": [2001, None],
        "text": ["ten words", None],
    }), tmp_path / "it.parquet")
    ds = load_table(tmp_path / "ev.parquet", tmp_path / "it.parquet")
    assert ds.name == "ev"
    assert column(ds.events, "timestamp") == [utc("2024-05-01T12:00:00")] * 2 + [utc("2024-05-02T00:00:00")]
    assert column(ds.items, "title") == ["Ten", ""]
    assert column(ds.items, "genres") == [["a", "b"], []]
    assert column(ds.items, "year") == [2001, None]
    assert column(ds.items, "text") == ["ten words", ""]
    assert "external_id" not in ds.items.column_names


def test_timestamp_formats(tmp_path):
    write(tmp_path, "ms.csv", "user_id,item_id,timestamp\n1,1,1700000000999\n")
    assert column(load_table(tmp_path / "ms.csv", timestamp_format="ms").events, "timestamp") == [1700000000]
    with pytest.raises(DataError, match=r"field 'timestamp': 1700000000999 looks like milliseconds"):
        load_table(tmp_path / "ms.csv")
    write(tmp_path, "eu.csv", "user_id,item_id,timestamp\n1,1,02/01/2024\n1,2,31/12/2023\n")
    assert column(load_table(tmp_path / "eu.csv", timestamp_format="%d/%m/%Y").events, "timestamp") == [
        utc("2023-12-31T00:00:00"), utc("2024-01-02T00:00:00")]
    with pytest.raises(DataError, match=r"eu\.csv: line 2: field 'timestamp': '02/01/2024' is not a Unix timest"):
        load_table(tmp_path / "eu.csv")
    with pytest.raises(DataError, match=r"eu\.csv: line 3: field 'timestamp': '31/12/2023' does not match"):
        load_table(tmp_path / "eu.csv", timestamp_format="%m/%d/%Y")
    write(tmp_path, "mixed.csv", "user_id,item_id,timestamp\n1,1,2024-01-01\n1,2,1700000000\n")
    with pytest.raises(DataError, match=r"mixed\.csv: line 3: field 'timestamp': '1700000000' is not an ISO-8601"):
        load_table(tmp_path / "mixed.csv")


def test_minimal_items_when_no_items_file(tmp_path):
    ds = load_table(write(tmp_path, "ev.tsv", "user_id\titem_id\ttimestamp\n1\t5\t100\n2\t3\t50\n2\t5\t60\n"))
    assert column(ds.items, "item_id") == [3, 5]
    assert column(ds.items, "title") == ["3", "5"]
    assert column(ds.items, "launch_ts") == [50, 60]
    assert column(ds.items, "year") == [None, None]


@pytest.mark.parametrize("events, kwargs, pattern", [
    ("uid,item_id,timestamp\n1,1,5\n", {}, r"ev\.csv: field 'user_id': column not found \(the file has 'uid', "
                                           r"'item_id', 'timestamp'\); pass the column that holds user_id as "),
    ("user_id,item_id,timestamp\n1,1,5\n", {"columns": {"utility": "stars"}}, r"field 'stars': column not found"),
    ("user_id,item_id,timestamp\n1,1,5\n", {"columns": {"usr": "u"}}, r"columns: unknown canonical names \['usr'\]"),
    ("user_id,item_id,timestamp\n1,1,5\n1,2,soon\n", {}, r"ev\.csv: line 3: field 'timestamp': 'soon' is not a Unix"),
    ("user_id,item_id,timestamp\n1,1,5\n1,2,6\n", {"items_path": "it.csv"},
     r"ev\.csv: line 3: field 'item_id': item 2 is not in .*it\.csv"),
    ("user_id,item_id,timestamp,action\n1,1,5,2.5\n", {}, r"line 2: field 'action': '2\.5' is not an integer event"),
    ("", {}, r"ev\.csv: file is empty"),
])
def test_generic_csv_errors_name_file_and_field(tmp_path, events, kwargs, pattern):
    write(tmp_path, "it.csv", "item_id,title\n1,One\n")
    if "items_path" in kwargs:
        kwargs = {**kwargs, "items_path": tmp_path / kwargs["items_path"]}
    with pytest.raises(DataError, match=pattern):
        load_table(write(tmp_path, "ev.csv", events), **kwargs)


def test_generic_parquet_errors_name_file_and_row(tmp_path):
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [1, None], "timestamp": [5, 6]}), tmp_path / "ev.parquet")
    with pytest.raises(DataError, match=r"ev\.parquet: row 2: field 'item_id': value is missing"):
        load_table(tmp_path / "ev.parquet")
    pq.write_table(pa.table({"user_id": [1], "item_id": [1], "timestamp": [b"x"]}), tmp_path / "bin.parquet")
    with pytest.raises(DataError, match=r"bin\.parquet: field 'timestamp': column has type binary"):
        load_table(tmp_path / "bin.parquet")
    pq.write_table(pa.table({"user_id": pa.array([], pa.int64()), "item_id": pa.array([], pa.int64()),
                             "timestamp": pa.array([], pa.int64())}), tmp_path / "none.parquet")
    with pytest.raises(DataError, match=r"none\.parquet: no data rows"):
        load_table(tmp_path / "none.parquet")
    write(tmp_path, "junk.parquet", "not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable Parquet file"):
        load_table(tmp_path / "junk.parquet")
    with pytest.raises(DataError, match=r"missing\.parquet: file not found"):
        load_table(tmp_path / "missing.parquet")
    with pytest.raises(DataError, match=r"ev\.json: unknown file type '\.json'"):
        load_table(tmp_path / "ev.json")


# ------------------------------------------------------------------------------------------ dispatch, download

def test_load_dispatch(tmp_path):
    assert load("synthetic", users=20, items=30, events_per_user=5).events.num_rows > 0
    assert load("movielens", str(movielens_csv(tmp_path / "ml"))).events.num_rows == 3
    assert load("recbole", str(recbole(tmp_path / "rb"))).events.num_rows == 3
    with pytest.raises(DataError, match=r"data source 'lastfm': unknown; use one of synthetic, movielens, recbole, "
                                        r"parquet, csv"):
        load("lastfm", "x")
    with pytest.raises(DataError, match=r"data source 'movielens': needs a path; .*--data PATH"):
        load("movielens", None)


def test_download_offline_says_to_pass_a_local_path(tmp_path):
    with pytest.raises(DataError, match=r"127\.0\.0\.1:9/ml-latest-small\.zip: download failed .*no network.*"
                                        r"--data PATH"):
        download_movielens("ml-latest-small", tmp_path, base_url="http://127.0.0.1:9/", timeout=5)
    assert list(tmp_path.iterdir()) == []  # no partial download left behind
    with pytest.raises(DataError, match=r"movielens dataset 'ml-2m': unknown"):
        download_movielens("ml-2m", tmp_path)


# ------------------------------------------------------------------------------------------------- synthetic

@pytest.fixture(scope="module")
def synth() -> Dataset:
    return generate(users=400, items=300, events_per_user=50, days=90, genres=10, seed=3)


def test_synthetic_is_deterministic_and_canonical(synth):
    again = generate(users=400, items=300, events_per_user=50, days=90, genres=10, seed=3)
    assert again.events.equals(synth.events) and again.items.equals(synth.items)
    assert not generate(users=400, items=300, events_per_user=50, days=90, genres=10, seed=4).events.equals(
        synth.events)
    assert synth.events.schema == EVENT_SCHEMA and synth.items.schema == ITEM_SCHEMA
    assert validate(synth, "synthetic").events.equals(synth.events)
    assert set(column(synth.events, "user_id")) == set(range(1, 401))
    assert column(synth.items, "item_id") == list(range(1, 301))
    n_genres = [len(g) for g in column(synth.items, "genres")]
    assert min(n_genres) == 1 and max(n_genres) == 3
    assert all(t.endswith(f"({y})") for t, y in zip(column(synth.items, "title"), column(synth.items, "year")))
    utility = synth.events["utility"].to_numpy()
    assert utility.min() > 0 and utility.max() <= 1
    assert 0.02 < np.mean(synth.events["action"].to_numpy() == 1) < 0.15
    ts = synth.events["timestamp"].to_numpy()
    assert ts.min() >= 1_700_000_000 and ts.max() < 1_700_000_000 + 90 * 86_400


def test_synthetic_titles_appear_only_after_launch(synth):
    launch = synth.items["launch_ts"].to_numpy()
    items = synth.events["item_id"].to_numpy() - 1
    assert (synth.events["timestamp"].to_numpy() >= launch[items]).all()
    new = launch >= 1_700_000_000
    assert new.mean() == pytest.approx(0.2, abs=0.01)
    assert np.isin(np.flatnonzero(new), items).mean() > 0.8  # most new titles do get watched


def sessions(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items, genres multi-hot per event, same-session flag for each event and the one before it)."""
    users = ds.events["user_id"].to_numpy()
    ts = ds.events["timestamp"].to_numpy()
    items = ds.events["item_id"].to_numpy() - 1
    names = sorted({g for gs in column(ds.items, "genres") for g in gs})
    hot = np.array([[g in gs for g in names] for gs in column(ds.items, "genres")])
    same = (users[1:] == users[:-1]) & (ts[1:] - ts[:-1] < 3600)
    return items, hot[items], same


def test_synthetic_sessions_focus_on_one_genre(synth):
    _, hot, same = sessions(synth)
    assert 0.05 < same.mean() < 0.95  # there are sessions, and gaps between them
    shares = (hot[1:] & hot[:-1]).any(axis=1)
    users = synth.events["user_id"].to_numpy()
    across_sessions = (users[1:] == users[:-1]) & ~same
    random_pairs = (hot[np.random.default_rng(0).permutation(len(hot))] & hot).any(axis=1)
    # Titles have 1-3 genres from a skewed genre mix, so even random pairs often share one; within a session
    # they (nearly) always do, and more than the same user's titles across sessions (long-term taste only).
    assert shares[same].mean() > 0.95
    assert shares[across_sessions].mean() < 0.8 and random_pairs.mean() < 0.7


def test_synthetic_has_sequential_and_temporal_signal(synth):
    items, _, same = sessions(synth)
    follows_series = (items[1:] == items[:-1] + 1)[same].mean()
    top_share = np.bincount(items).max() / len(items)
    assert follows_series > 0.1 and follows_series > 3 * top_share  # "the next part" beats "the most popular"
    ts = synth.events["timestamp"].to_numpy()
    early, late = items[ts < np.quantile(ts, 0.25)], items[ts > np.quantile(ts, 0.75)]
    top = [set(np.argsort(-np.bincount(part, minlength=300))[:20]) for part in (early, late)]
    assert len(top[0] & top[1]) < 10  # what is popular changes over time


def test_synthetic_is_fast_and_checks_arguments():
    ds = generate(users=1700, events_per_user=60)
    assert ds.events.num_rows > 90_000
    with pytest.raises(DataError, match=r"synthetic: argument 'users': 0 is not a positive integer"):
        generate(users=0)
    with pytest.raises(DataError, match=r"argument 'new_item_share'"):
        generate(new_item_share=1.5)
    assert generate(users=5, items=4, genres=30, new_item_share=1.0, events_per_user=4).items.num_rows == 4


# ------------------------------------------------------------------------------------------- real MovieLens

ML_LATEST_SMALL = Path(os.environ.get("GENREC_ML_LATEST_SMALL")
                       or Path(__file__).resolve().parents[1].parent / "shared/data/ml-latest-small")


@pytest.mark.skipif(not (ML_LATEST_SMALL / "ratings.csv").is_file(),
                    reason=f"ml-latest-small not found at {ML_LATEST_SMALL} (set GENREC_ML_LATEST_SMALL)")
def test_real_ml_latest_small():
    ds = load_movielens(ML_LATEST_SMALL)
    assert ds.events.num_rows == 100_004  # ratings.csv: 100,005 lines including the header
    assert ds.items.num_rows == 9_125
    assert len(set(column(ds.events, "user_id"))) == 671
    toy = item_row(ds, 1)
    assert (toy["title"], toy["year"]) == ("Toy Story (1995)", 1995)
    assert toy["genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert item_row(with_tag_text(ds, None), 1)["text"] == "Pixar"
    assert item_row(ds, 108548)["year"] == 2007  # "Big Bang Theory, The (2007-)"
    assert item_row(ds, 143410)["genres"] == [] and item_row(ds, 143410)["year"] is None  # Hyena Road
    assert ds.events["utility"].to_numpy().min() == 0.5
