"""Public datasets read as they ship: SASRec/BERT4Rec-style sequence files and the Amazon review releases (no Ray).

Every file here is written by the test itself, small enough to check each event and title by hand."""

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.cli import build_parser
from genrec.config import load_config
from genrec.data import DataError, load, load_amazon, load_sequences
from genrec.errors import ConfigError
from genrec.preparation import prepare_shards
from genrec.shards import split_sequences, split_tables


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()


# -------------------------------------------------------------------------------------------------- sequences

# The same three users twice over: one line per user (user 1's sequence continued on a later line), and one line per
# event as SASRec's data/ml-1m.txt has it. File order is time.
PER_USER = "1 10 11 12 \n2 11 13 14\n\n  \n 3 12  10\r\n1 14 13\n"  # stray white space and CRLF are no fields
PER_EVENT = "1 10\n1 11\n1 12\n2 11\n2 13\n2 14\n3 12\n3 10\n1 14\n1 13\n"
SEQUENCES = {1: [10, 11, 12, 14, 13], 2: [11, 13, 14], 3: [12, 10]}


def sequences_of(events: pa.Table) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for user, item in zip(column(events, "user_id"), column(events, "item_id")):
        out.setdefault(user, []).append(item)
    return out


@pytest.mark.parametrize("text", [PER_USER, PER_EVENT], ids=["one-line-per-user", "one-line-per-event"])
def test_sequences_keep_each_users_file_order_with_synthetic_times(tmp_path, text):
    ds = load_sequences(write(tmp_path, "Beauty.txt", text))
    assert ds.name == "Beauty"
    assert sequences_of(ds.events) == SEQUENCES
    # each user's k-th event at second k: strictly increasing per user, the file's order kept
    users, ts = np.array(column(ds.events, "user_id")), np.array(column(ds.events, "timestamp"))
    for user, items in SEQUENCES.items():
        assert ts[users == user].tolist() == list(range(1, len(items) + 1))
    assert set(column(ds.events, "action")) == {0} and set(column(ds.events, "utility")) == {1.0}
    # no metadata: titles are the ids, every title launched before any event
    assert column(ds.items, "item_id") == [10, 11, 12, 13, 14]
    assert column(ds.items, "title") == ["10", "11", "12", "13", "14"]
    assert column(ds.items, "genres") == [[]] * 5 and column(ds.items, "text") == [""] * 5
    assert column(ds.items, "launch_ts") == [0] * 5


def test_both_sequence_layouts_give_the_same_dataset(tmp_path):
    per_user = load("sequences", write(tmp_path, "a.txt", PER_USER))
    per_event = load("sequences", write(tmp_path, "b.txt", PER_EVENT.replace(" ", "\t")))  # tabs separate too
    assert per_user.events.equals(per_event.events) and per_user.items.equals(per_event.items)


def test_sequences_build_leave_one_out_shards(tmp_path):
    ds = load_sequences(write(tmp_path, "ml-1m.txt", PER_EVENT))
    vocab, tables, stats = split_tables(ds, None, min_train_events=2, split="leave_one_out")
    index = dict(zip(column(vocab, "item_id"), column(vocab, "index")))
    # users 1 and 2 have 3+ events: the last is the test target, the second-to-last the validation target
    assert column(tables["eval"], "user_id") == [1, 2]
    assert column(tables["eval"], "targets") == [[index[13]], [index[14]]]
    assert column(tables["valid"], "targets") == [[index[14]], [index[13]]]
    assert column(tables["eval"], "items") == [[index[i] for i in [10, 11, 12, 14]], [index[i] for i in [11, 13]]]
    # training: everything before the last two; user 3 (2 events) is not evaluated and trains on both
    assert column(tables["train"], "user_id") == [1, 3]
    assert column(tables["train"], "items") == [[index[i] for i in [10, 11, 12]], [index[12], index[10]]]
    assert column(tables["train"], "ts") == [[1, 2, 3], [1, 2]]
    assert stats["split"] == "leave_one_out" and stats["eval_events"] == 2


def test_sequences_pipeline_builds_shards_without_ray(tmp_path):
    data = write(tmp_path, "seq.txt", PER_USER)
    cfg = load_config(None, [f"storage.root={tmp_path / 'runs'}", "data.source=sequences", f"data.path={data}",
                             "data.split=leave_one_out"])
    shards = prepare_shards(cfg, echo=lambda *_: None)
    counts = shards.manifest["counts"]
    assert (counts["users"], counts["events"], counts["eval_users"], counts["items"]) == (3, 10, 2, 5)
    assert shards.manifest["data_config"]["source"] == "sequences"


@pytest.mark.parametrize("overrides, pattern", [
    ([], r"data: data\.split: time needs real timestamps, and data\.source: sequences has none .*; set "
         r"data\.split: leave_one_out"),
    (["data.split=leave_one_out", "eval.delays_h=[24]"],
     r"eval\.delays_h needs real timestamps .*data\.source: sequences has none; set eval\.delays_h: \[\]"),
    (["data.split=leave_one_out", "data.items_path=items.csv"],
     r"data\.items_path: data\.source: sequences reads no item table .*; remove data\.items_path"),
])
def test_config_refuses_what_sequences_cannot_give(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, ["data.source=sequences", "data.path=seq.txt", *overrides])


@pytest.mark.parametrize("text, pattern", [
    ("1 10 11\n2 11\n7\n", r"s\.txt: line 3: one field \('7'\), a user id without items; each line is a user id "
                           r"followed by one or more item ids.*; add the items or drop this line"),
    ("1 10 11\n\n2 11 x 12\n", r"s\.txt: line 3: field 3: 'x' is not an integer item id; each line is a user id"),
    ("u1 10 11\n", r"s\.txt: line 1: field 1: 'u1' is not an integer user id; .*the format has no header line: "
                   r"drop it"),
    ("1 10\n1,11 12\n", r"s\.txt: line 2: field 1: '1,11' is not an integer user id; .*commas do not separate "
                        r"fields here \(a CSV of events reads with data\.source: csv\)"),
    ("1,10\n", r"s\.txt: line 1: one field \('1,10'\).*; commas do not separate fields here"),
    ("1 10 2.5\n", r"s\.txt: line 1: field 3: '2\.5' is not an integer item id"),
    ("", r"s\.txt: file is empty"),
    ("  \n\t\n", r"s\.txt: no events \(only blank lines\)"),
])
def test_sequence_errors_name_file_line_and_field(tmp_path, text, pattern):
    with pytest.raises(DataError, match=pattern):
        load_sequences(write(tmp_path, "s.txt", text))


def test_sequences_missing_file_or_folder(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: file not found"):
        load_sequences(tmp_path / "nope.txt")
    with pytest.raises(DataError, match=r": a folder; data\.source: sequences reads one file"):
        load_sequences(tmp_path)


# ----------------------------------------------------------------------------------------------------- Amazon

REVIEWS_2018 = [
    {"overall": 5.0, "verified": True, "reviewTime": "09 13, 2009", "reviewerID": "A2SUAM1J3GNN3B",
     "asin": "0000013714", "style": {"Format:": " Hardcover"}, "reviewerName": "J. McDonald",
     "reviewText": "I bought this for my husband.", "summary": "Heavenly", "unixReviewTime": 1252800000},
    {"overall": 3, "reviewerID": "A2SUAM1J3GNN3B", "asin": "B00002N5ZV", "unixReviewTime": 1252900000},
    {"overall": 4.0, "reviewerID": "A1ZZZ", "asin": "0000013714", "unixReviewTime": 1252700000, "vote": "2"},
    {"overall": 1.0, "reviewerID": "A1ZZZ", "asin": "B0NOMETA00", "unixReviewTime": 1252750000},
]
META_2018 = [
    {"asin": "0000013714", "title": " Heavenly Highway Hymns ", "category": ["Books", "Christian Books & Bibles", ""],
     "brand": "Cokesbury", "description": ["For the choir."], "also_buy": ["0001"]},
    {"asin": "B00002N5ZV", "title": "", "category": ["Books"]},  # no title: the ASIN stands in
    {"asin": "B0UNSEEN00", "title": "Never reviewed", "category": ["Books"]},  # dropped: nobody reviewed it
    {"asin": "0000013714", "title": "a repeat", "category": []},  # the first line of an ASIN wins
]


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def check_2018(ds):
    # users and ASINs are names, numbered 1..n in sorted order; ASINs of digits stay names (kept as external_id)
    assert column(ds.items, "external_id") == ["0000013714", "B00002N5ZV", "B0NOMETA00"]
    by_user = {u: [] for u in column(ds.events, "user_id")}
    for u, i, t, r in zip(*(column(ds.events, c) for c in ("user_id", "item_id", "timestamp", "utility"))):
        by_user[u].append((i, t, r))
    # A1ZZZ (user 1) and A2SUAM1J3GNN3B (user 2), each in time order, the star rating as utility
    assert by_user == {1: [(1, 1252700000, 4.0), (3, 1252750000, 1.0)],
                       2: [(1, 1252800000, 5.0), (2, 1252900000, 3.0)]}
    assert set(column(ds.events, "action")) == {0}
    assert column(ds.items, "launch_ts") == [1252700000, 1252900000, 1252750000]  # first review


def test_amazon_2018_reviews_with_metadata(tmp_path):
    reviews = write(tmp_path, "Books_5.json", jsonl(REVIEWS_2018))
    ds = load_amazon(reviews, write(tmp_path, "meta_Books.json", jsonl(META_2018)))
    assert ds.name == "Books_5"
    check_2018(ds)
    assert column(ds.items, "title") == ["Heavenly Highway Hymns", "B00002N5ZV", "B0NOMETA00"]
    assert column(ds.items, "genres") == [["Books", "Christian Books & Bibles"], ["Books"], []]
    assert column(ds.items, "text") == ["Cokesbury", "", ""]


def test_amazon_2018_gzip_and_dict_literal_metadata_read_the_same(tmp_path):
    plain = load_amazon(write(tmp_path, "r.json", jsonl(REVIEWS_2018)), write(tmp_path, "m.json", jsonl(META_2018)))
    (tmp_path / "Books.json.gz").write_bytes(gzip.compress(jsonl(REVIEWS_2018).encode()))
    # Python dict literals (single quotes, True), as some 2018 metadata files are, and gzip-compressed
    literal = "".join(repr(r) + "\n" for r in META_2018).replace("'description'", "'fake': True, 'description'")
    assert "'asin': '0000013714'" in literal
    (tmp_path / "meta_Books.json.gz").write_bytes(gzip.compress(literal.encode()))
    packed = load("amazon", tmp_path / "Books.json.gz", items_path=tmp_path / "meta_Books.json.gz")
    assert packed.name == "Books"
    assert packed.events.equals(plain.events) and packed.items.equals(plain.items)


def test_amazon_without_metadata_titles_products_by_asin(tmp_path):
    ds = load_amazon(write(tmp_path, "r.json", jsonl(REVIEWS_2018)))
    check_2018(ds)
    assert column(ds.items, "title") == ["0000013714", "B00002N5ZV", "B0NOMETA00"]
    assert column(ds.items, "genres") == [[]] * 3


def test_amazon_asins_of_digits_stay_names(tmp_path):
    # Book ASINs are ISBN-10s: all digits in a small file, yet "0000013714" is a name, not the number 13714
    reviews = [{**REVIEW, "asin": "0000013714"}, {**REVIEW, "asin": "0000000116", "unixReviewTime": 6}]
    ds = load_amazon(write(tmp_path, "r.json", jsonl(reviews)))
    assert column(ds.items, "item_id") == [1, 2]
    assert column(ds.items, "external_id") == column(ds.items, "title") == ["0000000116", "0000013714"]


def test_amazon_dict_literal_reviews_name_the_files_line(tmp_path):
    # Lines Arrow cannot parse are read in Python; a later error still names the file's line, blank lines counted
    lines = [repr(REVIEW), "", repr({**REVIEW, "reviewerID": "A2"}), repr({**REVIEW, "unixReviewTime": 10**12})]
    with pytest.raises(DataError, match=r"r\.json: line 4: field 'unixReviewTime': 1000000000000 looks like "
                                        r"milliseconds"):
        load_amazon(write(tmp_path, "r.json", "\n".join(lines) + "\n"))
    assert column(load_amazon(write(tmp_path, "ok.json", "\n".join(lines[:3]))).events, "user_id") == [1, 2]


def test_amazon_2023_release(tmp_path):
    reviews = [
        {"rating": 5.0, "title": "Great", "text": "...", "images": [], "asin": "B01VARIANT",
         "parent_asin": "B01PARENT0", "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ", "timestamp": 1588687728923,
         "helpful_vote": 0, "verified_purchase": True},
        {"rating": 2, "asin": "B02", "parent_asin": "B02PARENT0", "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ",
         "timestamp": 1588687729999},
    ]
    meta = [{"main_category": "All Beauty", "title": "Howard LC0008 Leather Conditioner", "average_rating": 4.8,
             "features": [], "categories": ["Beauty", "All Beauty"], "store": "Howard Products",
             "parent_asin": "B01PARENT0", "details": {"Brand": "Howard"}}]
    (tmp_path / "All_Beauty.jsonl.gz").write_bytes(gzip.compress(jsonl(reviews).encode()))
    ds = load_amazon(tmp_path / "All_Beauty.jsonl.gz", write(tmp_path, "meta_All_Beauty.jsonl", jsonl(meta)))
    assert ds.name == "All_Beauty"
    assert column(ds.events, "timestamp") == [1588687728, 1588687729]  # milliseconds -> seconds, floored
    assert column(ds.events, "utility") == [5.0, 2.0]
    assert column(ds.items, "external_id") == ["B01PARENT0", "B02PARENT0"]  # parent_asin: the product
    assert column(ds.items, "title") == ["Howard LC0008 Leather Conditioner", "B02PARENT0"]
    assert column(ds.items, "genres") == [["All Beauty", "Beauty"], []]  # main category first, no repeats
    assert column(ds.items, "text") == ["Howard Products", ""]


def test_amazon_shards_leave_one_out_and_time(tmp_path):
    ds = load_amazon(write(tmp_path, "r.json", jsonl(REVIEWS_2018 + [
        {"overall": 2.0, "reviewerID": "A1ZZZ", "asin": "B00002N5ZV", "unixReviewTime": 1253000000}])))
    _, tables, _ = split_tables(ds, None, min_train_events=1, split="leave_one_out")
    assert column(tables["eval"], "user_id") == [1]  # A1ZZZ: 3 reviews
    assert column(tables["eval"], "targets") == [[2]] and column(tables["valid"], "targets") == [[3]]
    _, train, ev, _ = split_sequences(ds, cutoff=1252850000, min_train_events=1)  # real times: the time split too
    assert column(ev, "targets") == [[2], [2]] and column(train, "items") == [[1, 3], [1]]


def test_amazon_config_reads_metadata_through_items_path(tmp_path):
    reviews = write(tmp_path, "r.json", jsonl(REVIEWS_2018))
    meta = write(tmp_path, "m.json", jsonl(META_2018))
    cfg = load_config(None, [f"storage.root={tmp_path / 'runs'}", "data.source=amazon", f"data.path={reviews}",
                             f"data.items_path={meta}", "data.split=leave_one_out"])
    shards = prepare_shards(cfg, echo=lambda *_: None)
    titles = column(pq.read_table(shards.items_path), "title")
    assert titles == ["Heavenly Highway Hymns", "B00002N5ZV", "B0NOMETA00"]


REVIEW = {"reviewerID": "A1", "asin": "B1", "unixReviewTime": 5, "overall": 4.0}


@pytest.mark.parametrize("lines, pattern", [
    ([REVIEW, "{\"reviewerID\": \"A2\", \"asin\": \"B1\""],
     r"r\.json: line 2: not valid JSON \(.* at column \d+\), nor a Python dict literal; fix or drop this line"),
    ([REVIEW, "", {**REVIEW, "overall": None}],  # a blank line: line numbers are the file's, not the record's
     r"r\.json: line 3: field 'overall': missing or empty; every review line needs reviewerID, asin, "
     r"unixReviewTime, overall: fill it in or drop this line"),
    ([REVIEW, {k: v for k, v in REVIEW.items() if k != "asin"}], r"r\.json: line 2: field 'asin': missing or empty"),
    ([REVIEW, {**REVIEW, "asin": " "}], r"r\.json: line 2: field 'asin': missing or empty"),
    ([REVIEW, {**REVIEW, "unixReviewTime": "1252800000"}],
     r"r\.json: line 2: field 'unixReviewTime': '1252800000' is not an integer \(a Unix time\); fix or drop"),
    ([REVIEW, {**REVIEW, "unixReviewTime": 1.5}], r"line 2: field 'unixReviewTime': 1\.5 is not an integer"),
    ([REVIEW, {**REVIEW, "overall": "five"}], r"line 2: field 'overall': 'five' is not a number \(the star rating\)"),
    ([REVIEW, {**REVIEW, "asin": 17}], r"line 2: field 'asin': 17 is not text"),
    ([REVIEW, "[1, 2]"], r"r\.json: line 2: a JSON list, not an object"),
    (["not json"], r"r\.json: line 1: not valid JSON .*; each line is one JSON object"),
    ([{"asin": "B1", "title": "a product"}], r"r\.json: line 1: not an Amazon review line \(its keys: asin, title\); "
                                             r".*a metadata file goes in data\.items_path"),
    ([{**REVIEW, "unixReviewTime": 1252800000000}], r"r\.json: line 1: field 'unixReviewTime': 1252800000000 looks "
                                                    r"like milliseconds; the 2018 release has Unix seconds"),
])
def test_amazon_review_errors_name_file_line_and_field(tmp_path, lines, pattern):
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    with pytest.raises(DataError, match=pattern):
        load_amazon(write(tmp_path, "r.json", text))


@pytest.mark.parametrize("lines, pattern", [
    ([{"asin": "B1"}, {"title": "no id"}], r"m\.json: line 2: field 'asin': missing or empty; every metadata line "
                                           r"needs asin"),
    ([{"asin": "B1"}, "{'asin': 'B2', 'title': }"], r"m\.json: line 2: not valid JSON .*nor a Python dict literal"),
    ([REVIEW], r"m\.json: line 1: not an Amazon metadata line .*; the review file goes in data\.path"),
])
def test_amazon_metadata_errors_name_file_line_and_field(tmp_path, lines, pattern):
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    reviews = write(tmp_path, "r.json", jsonl([REVIEW]))
    with pytest.raises(DataError, match=pattern):
        load_amazon(reviews, write(tmp_path, "m.json", text))


def test_amazon_unreadable_files(tmp_path):
    with pytest.raises(DataError, match=r"gone\.json: file not found"):
        load_amazon(tmp_path / "gone.json")
    with pytest.raises(DataError, match=r"e\.json: no data lines"):
        load_amazon(write(tmp_path, "e.json", "\n\n"))
    (tmp_path / "cut.json.gz").write_bytes(gzip.compress(jsonl([REVIEW] * 50).encode())[:-20])
    with pytest.raises(DataError, match=r"cut\.json\.gz: cannot be read .*; download the file again"):
        load_amazon(tmp_path / "cut.json.gz")


def test_pipeline_accepts_the_new_sources():
    for source in ("sequences", "amazon"):
        assert build_parser().parse_args(["pipeline", "--data", "x", "--source", source]).source == source
