"""BENCHMARKS.md and README tables from the benchmarks' stored JSON (benchmarks/_harness.write), not copied by hand.

    .venv/bin/python benchmarks/tables.py RESULTS.json [MORE.json ...]     # print each as its Markdown table
    .venv/bin/python benchmarks/tables.py --write BENCHMARKS.md README.md  # regenerate every marked table in place
    .venv/bin/python benchmarks/tables.py --check BENCHMARKS.md README.md  # exit 1 naming each stale table

A results file is rendered by the `table(results)` of the benchmark that wrote it (the module named in its
meta.benchmark, or the file name's first word), followed by the line that says where and how it ran (command,
machine, date, commit). In a Markdown file, a generated table sits between two marker lines:

    <!-- table: docs/benchmarks/results/leaderboard-ml100k-seeds012-exclhist.json -->
    ...
    <!-- end table -->

`--write` replaces what is between them with the rendering of that JSON (path relative to the repository root);
`--check` (run by the test suite) fails when the two differ, so a table cannot drift from the figures it shows.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BEGIN = re.compile(r"^<!-- table: (\S+) -->$")
END = "<!-- end table -->"


def benchmark_of(path: Path, doc: dict) -> str:
    """The module that wrote a results file: meta.benchmark, else (files written before meta said it) the longest
    start of the file's name that names a benchmark module (recommend-batch-ml100k.json: recommend_batch)."""
    if doc.get("meta", {}).get("benchmark"):
        return doc["meta"]["benchmark"].replace("-", "_")
    words = path.stem.split("-")
    names = ["_".join(words[:k]) for k in range(len(words), 0, -1)]
    return next((n for n in names if (REPO / "benchmarks" / f"{n}.py").is_file()), names[-1])


def render(path: Path) -> str:
    """A results file as its benchmark's Markdown table and the line saying where and how it ran."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"{path}: not a readable results JSON ({err})")
    name = benchmark_of(path, doc)
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError:
        raise SystemExit(f"{path}: written by benchmark {name!r}, which has no module benchmarks/{name}.py")
    m = doc["meta"]
    return (module.table(doc["results"]) + f"\n\n`{m['command']}` on {m['machine']} ({m['cpus']} CPUs), {m['date']}, "
            f"genrec {m['commit']}, torch {m['torch']}, ray {m['ray']}")


def regenerate(text: str, where: str) -> tuple[str, list[str]]:
    """(the Markdown with every marked table rendered again, the blocks that changed as 'FILE:LINE JSON')."""
    lines, out, stale = text.split("\n"), [], []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        begin = BEGIN.match(lines[i])
        if not begin:
            i += 1
            continue
        try:
            end = lines.index(END, i + 1)
        except ValueError:
            raise SystemExit(f"{where}:{i + 1}: a table marker without its `{END}` line")
        fresh = render(REPO / begin[1]).split("\n")
        if lines[i + 1:end] != fresh:
            stale.append(f"{where}:{i + 1} {begin[1]}")
        out += fresh
        out.append(END)
        i = end + 1
    return "\n".join(out), stale


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="results JSON files to print, or Markdown files with --write/--check")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="regenerate the marked tables of these Markdown files")
    mode.add_argument("--check", action="store_true", help="exit 1 if a marked table differs from its JSON")
    args = p.parse_args(argv)
    if not (args.write or args.check):
        for path in args.files:
            print(render(Path(path)) + "\n")
        return 0
    stale_all = []
    for name in args.files:
        path = Path(name)
        text = path.read_text()
        fresh, stale = regenerate(text, name)
        stale_all += stale
        if args.write and fresh != text:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(fresh)
            tmp.replace(path)
            print(f"{name}: {len(stale)} table(s) regenerated")
    if args.check and stale_all:
        print("tables that differ from their JSON (run benchmarks/tables.py --write on the file):\n  "
              + "\n  ".join(stale_all))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
