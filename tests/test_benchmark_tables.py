"""The benchmarks share one frame (benchmarks/_harness.py), and the tables in BENCHMARKS.md and the README are the
renderings of the stored results they name (benchmarks/tables.py), so that a figure there cannot drift from its JSON.
Nothing is run here: the stored JSON is rendered again and compared."""

import importlib
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import tables

ROOT = Path(__file__).resolve().parents[1]
# Modules of benchmarks/ that are not benchmarks: the frame, the table maker, and the peers' runners.
NOT_BENCHMARKS = {"_harness", "_recbole_runner", "tables", "plain_sasrec", "recbole_peer"}
BENCHMARKS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in NOT_BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_takes_the_harness_arguments_and_renders_its_own_table(name):
    module = importlib.import_module(f"benchmarks.{name}")
    source = inspect.getsource(module)
    assert callable(getattr(module, "table", None)) and callable(getattr(module, "main", None)), name
    assert "parser(__doc__)" in source and f'write("{name}"' in source, f"{name}: not on benchmarks/_harness.py"


def test_the_tables_in_benchmarks_and_readme_are_their_json_rendered():
    assert tables.main(["--check", str(ROOT / "BENCHMARKS.md"), str(ROOT / "README.md")]) == 0
    marked = [line for f in ("BENCHMARKS.md", "README.md") for line in (ROOT / f).read_text().splitlines()
              if tables.BEGIN.match(line)]
    assert len(marked) >= 10  # the leaderboard, ablation, overhead and batch tables


def test_a_table_edited_by_hand_is_found(tmp_path, capsys):
    copy = tmp_path / "BENCHMARKS.md"
    shutil.copy(ROOT / "BENCHMARKS.md", copy)
    text = copy.read_text()
    start = text.index("<!-- table: docs/benchmarks/results/leaderboard-ml100k-seeds012-exclhist.json -->")
    row = text.index("| ml-100k | genrec-exclude-history |", start)
    copy.write_text(text[:row] + text[row:].replace("0.1095", "0.1195", 1))
    assert tables.main(["--check", str(copy)]) == 1
    assert "leaderboard-ml100k-seeds012-exclhist.json" in capsys.readouterr().out
    assert tables.main(["--write", str(copy)]) == 0 and tables.main(["--check", str(copy)]) == 0
    assert copy.read_text() == text


def test_no_benchmark_puts_its_own_folder_on_the_import_path():
    """benchmarks/serving.py must not shadow the serving package: a benchmark module that put benchmarks/ first on
    sys.path made every later `import serving.app` of the test session find benchmarks/serving.py instead. The
    benchmarks import each other as benchmarks.<name>, with the repository's root alone on the path."""
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        for line in path.read_text().splitlines():
            if "sys.path.insert" in line or "sys.path.append" in line:
                assert "parents[1]" in line or "(REPO)" in line, f"{path.name}: {line.strip()}"
    probe = ("import sys; from importlib.machinery import PathFinder; import benchmarks.tables; "
             "print(PathFinder.find_spec('serving', sys.path).origin)")
    found = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert Path(found.stdout.strip()).resolve() == ROOT / "serving" / "__init__.py", found.stdout + found.stderr
