"""The config documents itself: every key has a description, `genrec config explain` prints them, `genrec config show`
prints a resolved config, and configs/local.yaml's comments are the descriptions' summaries (no Ray)."""

import re
import shutil
from pathlib import Path
from typing import get_args

import yaml
from pydantic import BaseModel

from genrec.cli import main
from genrec.config import GenrecConfig, load_config
from genrec.config_docs import doc_for, key_docs, summary

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "configs" / "local.yaml"

KEY_LINE = re.compile(r"(?P<indent> *)(?P<key>[A-Za-z_][\w@-]*):(?P<rest>.*)")


def sections(model: type[BaseModel] = GenrecConfig, found: dict | None = None) -> dict[str, type[BaseModel]]:
    """Every section class the schema reaches, by name."""
    found = {} if found is None else found
    found[model.__name__] = model
    for field in model.model_fields.values():
        for sub in section_classes(field.annotation):
            if sub.__name__ not in found:
                sections(sub, found)
    return found


def section_classes(tp):
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        yield tp
    for arg in get_args(tp):
        yield from section_classes(arg)


def comment_start(line: str) -> int | None:
    """Column of the `#` that starts a trailing comment (outside quoted scalars, after white space), or None."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'" and line[:i].rstrip()[-1:] in ("", ":", ",", "[", "{", "-"):
            quote = ch  # only where a scalar starts: an apostrophe in plain text opens nothing
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return i
    return None


def trailing_comments(text: str) -> tuple[list[str], dict[str, str]]:
    """(every key line's dotted key, {dotted key: its trailing comment}) of a YAML file of block mappings whose values
    are scalars or flow collections. A comment-only line whose `#` is in the column of the previous line's comment
    continues it."""
    keys, comments = [], {}
    path: list[tuple[int, str]] = []  # (indent, key) of the mappings the line is in
    continued = None  # (key, column) of the comment a comment-only line may continue
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continued = None
            continue
        column = comment_start(line)
        if column is not None and not line[:column].strip():
            if continued and continued[1] == column:
                comments[continued[0]] += " " + line[column + 1:].strip()
            else:
                continued = None
            continue
        m = KEY_LINE.fullmatch(line)
        assert m, f"line {n}: not a `key: value` line the check can read: {line!r}"
        indent = len(m["indent"])
        while path and path[-1][0] >= indent:
            path.pop()
        path.append((indent, m["key"]))
        key = ".".join(k for _, k in path)
        keys.append(key)
        continued = None
        if column is not None:
            comments[key] = line[column + 1:].strip()
            continued = (key, column)
    return keys, comments


def drift(path: Path) -> list[str]:
    """What a config file's comments say that the schema's summaries do not."""
    docs = list(key_docs())
    keys, comments = trailing_comments(path.read_text())
    problems = [f"{k}: not a config key" for k in keys if doc_for(k, docs) is None]
    for key, comment in comments.items():
        doc = doc_for(key, docs)
        if doc and comment != doc.summary:
            problems.append(f"{key}: the comment says {comment!r}, the description's summary {doc.summary!r}")
    return problems


def test_every_field_has_a_description_with_a_short_summary():
    found = sections()
    assert {"StorageConfig", "SyntheticConfig", "TaskConfig", "SearchDimension", "AutoscalingConfig",
            "NodeGroupConfig", "ClusterConfig", "TrackingConfig"} <= set(found)
    for name, model in found.items():
        for field_name, field in model.model_fields.items():
            where = f"{name}.{field_name}"
            assert field.description and field.description.strip(), f"{where}: no description"
            first = summary(field.description)
            assert 0 < len(first) <= 100, f"{where}: summary of {len(first)} characters: {first!r}"
            assert not first.endswith(("e.g", "i.e")), f"{where}: the summary stops at an abbreviation: {first!r}"


def test_key_docs_read_types_defaults_and_bounds():
    docs = {d.key: d for d in key_docs()}
    lr = docs["train.lr"]
    assert (lr.type, lr.default, lr.bounds) == ("float", "0.002", "> 0") and lr.summary == "AdamW's learning rate"
    assert docs["model.max_seq_len"].type == 'int | "auto"' and docs["model.max_seq_len"].default == "auto"
    assert docs["data.split"].type == '"time" | "leave_one_out"'
    assert docs["data.split"].choices == ("time", "leave_one_out")
    assert docs["train.zero_stage"].choices == ("auto", 0, 1, 2, 3)
    assert docs["eval.delays_h"].type == "list[float]" and docs["eval.delays_h"].default == "[]"
    assert docs["storage.cache"].type == "str | null" and docs["storage.cache"].default == "null"
    assert docs["serve.port"].bounds == "1..65535" and docs["data.cutoff_quantile"].bounds == "> 0 and < 1"
    assert docs["serve.token"].bounds == "at least 16 characters"
    # a factory-built section shows the schema's default, not this machine's resolved path
    assert docs["storage.root"].default == "genrec-runs"
    # a section's own default values, not its class's
    assert docs["cluster.head.cpus"].default == "8" and docs["cluster.gpu_workers.gpus"].default == "8"
    assert docs["tune.space.*.kind"].default == "(required)"
    assert yaml.safe_load(docs["eval.tasks"].default)["C"]["candidates"] == "popular"
    assert docs["eval.tasks"].section and docs["eval.tasks.*"].section and not lr.section
    assert doc_for("eval.tasks.B.targets").key == "eval.tasks.*.targets"
    assert doc_for("tune.space.model.dropout.low").key == "tune.space.*.low"
    assert doc_for("train.lrr") is None


def test_comment_parser_reads_sections_continuations_and_flow_mappings():
    keys, comments = trailing_comments(
        "# a file comment\n"
        "eval:            # section comment\n"
        "  primary: B     # first part\n"
        "                 # and its continuation\n"
        "  # a comment of its own\n"
        "  tasks:\n"
        "    B: {targets: next, description: \"next # event\"}   # flow mapping\n"
        "    C: {description: the last 3 days' top}   # an apostrophe in plain text\n"
        "serve:\n"
        "  port: 8000\n")
    assert keys == ["eval", "eval.primary", "eval.tasks", "eval.tasks.B", "eval.tasks.C", "serve", "serve.port"]
    assert comments == {"eval": "section comment", "eval.primary": "first part and its continuation",
                        "eval.tasks.B": "flow mapping", "eval.tasks.C": "an apostrophe in plain text"}


def test_local_yaml_comments_are_the_descriptions_summaries():
    keys, comments = trailing_comments(LOCAL.read_text())
    assert len(comments) > 40 and "eval" in comments and "storage.root" in comments
    assert not drift(LOCAL), "configs/local.yaml and the schema disagree:\n" + "\n".join(drift(LOCAL))


def test_the_drift_check_catches_a_changed_comment(tmp_path):
    changed = tmp_path / "local.yaml"
    shutil.copy(LOCAL, changed)
    text = changed.read_text()
    assert "# AdamW's learning rate\n" in text
    changed.write_text(text.replace("# AdamW's learning rate\n", "# the learning rate\n"))
    assert drift(changed) == ["train.lr: the comment says 'the learning rate', the description's summary "
                              "\"AdamW's learning rate\""]


def test_explain_prints_type_default_bounds_and_description(capsys):
    assert main(["config", "explain", "train.lr"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("train.lr: float = 0.002  [> 0]\n") and "AdamW's learning rate" in out
    assert main(["config", "explain", "model"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model: section\n") and "\nmodel.preset: str = auto\n" in out and "train." not in out
    assert main(["config", "explain", "eval.tasks.B.targets"]) == 0
    assert capsys.readouterr().out.startswith('eval.tasks.*.targets: "next" | "horizon" | "cold" = next\n')
    assert main(["config", "explain"]) == 0
    assert len(re.findall(r"^\S+: ", capsys.readouterr().out, re.M)) == len(list(key_docs()))


def test_explain_an_unknown_key_names_it_and_suggests(capsys):
    assert main(["config", "explain", "train.lrr"]) == 2
    err = capsys.readouterr().err
    assert "'train.lrr' is unknown" in err and "did you mean train.lr?" in err


def test_show_prints_the_resolved_config_without_the_token(tmp_path, capsys):
    token = "s3cret-token-0123456789"
    assert main(["config", "show", "--config", str(LOCAL), "--set", "train.lr=0.005",
                 "--set", f"serve.token={token}"]) == 0
    out = capsys.readouterr().out
    assert token not in out
    shown = GenrecConfig.model_validate(yaml.safe_load(out))
    assert shown.train.lr == 0.005 and shown.serve.token is None
    assert shown == load_config(LOCAL, ["train.lr=0.005"])
    (tmp_path / "shown.yaml").write_text(out)
    assert load_config(tmp_path / "shown.yaml") == shown
