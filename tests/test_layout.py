"""The import rules of the layout, read from the code (every import, at module level or inside a function):

- no import cycles among genrec/, trainers/, tuning/ and serving/;
- the Serve app, the ranker, the probes and the checkpoint module reach no training code (the Ray Train loop, the
  training set-up of genrec.build, DeepSpeed, trainers/, tuning/);
- trainers/ and tuning/ never import the CLI (entrypoints call into the core, never back);
- the core (genrec/, the CLI aside: it is an entrypoint) imports no entrypoint.

Checked to fail: on the tree before these rules were met (d6a3761) the three rule tests fail (12 modules on cycles;
serving.app reaching genrec.train and deepspeed; trainers.pretrain importing the CLI).
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("genrec", "trainers", "tuning", "serving")
TRAINING = ("genrec.train", "genrec.build", "genrec.engine", "genrec.ingest", "genrec.reference_loop", "deepspeed",
            "trainers", "tuning")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every module `path` imports: project modules by name (`from genrec.x import y` is genrec.x.y when that is a
    module, else genrec.x), other top-level packages by their first name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            found.add(name if name.split(".")[0] in PACKAGES else name.split(".")[0])
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) for name, path in known.items()}


def reach(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in g.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_rules_can_fail():
    g = {"a": {"b"}, "b": {"a", "deepspeed"}}
    assert reach(g, "a") == {"a", "b", "deepspeed"} and "a" in reach(g, "a")  # a cycle reaches itself


def test_no_import_cycles():
    g = graph()
    cycles = sorted(m for m in g if m in reach(g, m))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_serving_the_ranker_and_the_probes_reach_no_training_code():
    g = graph()
    for start in ("serving.app", "genrec.recommend", "genrec.probes", "genrec.checkpoint"):
        training = sorted(m for m in reach(g, start) if m.startswith(TRAINING))
        assert not training, f"{start} reaches training code: {training}"


def test_entrypoints_call_in_and_never_back():
    g = graph()
    for name, deps in g.items():
        if name.startswith(("trainers", "tuning")):
            assert "genrec.cli" not in deps, f"{name} imports the CLI"
        if name.startswith("genrec") and name != "genrec.cli":
            back = sorted(d for d in deps if d.startswith(("trainers", "tuning", "serving")))
            assert not back, f"{name} imports the entrypoints {back}"


def test_ray_datas_windowing_tasks_import_no_torch():
    """genrec.windows holds the map_batches function every training run's Ray Data tasks run: each new worker
    process imports its module, and torch alone takes ~3 s to import on this machine's cores (a fresh cluster's
    windowing took 30 s for 148 users when it did). Checked to fail: with NUM_ACTIONS imported from genrec.model
    again, torch is reached."""
    g = graph()
    assert "torch" not in reach(g, "genrec.windows"), sorted(reach(g, "genrec.windows"))


def test_the_readmes_layout_names_every_module_and_only_those():
    """README's Layout list, one line per module, matches the code: a module added, renamed or removed without its
    line fails here. A package listed as a folder (`genrec/data/`) stands for its modules."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout\n"):]
    section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
    listed = set()
    for line in section.splitlines():
        if line.startswith("- "):
            listed |= set(re.findall(r"`([\w/]+(?:\.py|/))`", line.split(": ", 1)[0]))
    folders = {p for p in listed if p.endswith("/")}
    files = {str(p.relative_to(ROOT)) for p in modules().values() if p.name != "__init__.py"}
    unlisted = sorted(f for f in files if f not in listed and not any(f.startswith(d) for d in folders))
    missing = sorted(p for p in listed if not (ROOT / p).exists())
    assert not unlisted, f"modules without a line in README's Layout: {unlisted}"
    assert not missing, f"README's Layout lists what does not exist: {missing}"
