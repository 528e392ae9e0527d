"""BENCHMARKS.md tables from the benchmarks' stored JSON (benchmarks/_harness.write), not copied by hand.

    .venv/bin/python benchmarks/tables.py benchmarks/results/leaderboard-*.json [more.json ...]

Each file is printed as the Markdown table of its benchmark (by the name it was written under), followed by the line
that says where and how it ran (command, machine, date, commit).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def overhead(results: dict) -> str:
    rows = results["rows"]
    out = ["| path | training events/s | last epoch's loss | input wait | whole run |", "|---|---|---|---|---|"]
    for r in rows:
        wait = f"{r['input_wait_share']:.1%}" if "input_wait_share" in r else ""
        wall = f"{r['wall_s']:.0f} s" if "wall_s" in r else ""
        out.append(f"| {r['path']} | {r['events_per_s']:,.0f} | {r['loss_last']:.4f} | {wait} | {wall} |")
    model = results.get("config", {}).get("model", {})
    titles = f"{results['titles']:,} titles, " if "titles" in results else ""
    out.append(f"\ngenrec / plain: **{results['ratio']:.1%}** ({titles}{results.get('decoding', model.get('decoding'))} "
               f"decoding, epochs 2-{results['epochs']}, training time only)")
    return "\n".join(out)


def ablation(results: dict) -> str:
    out = ["| variant | change | validation NDCG@10 (mean ± spread) | vs the base |", "|---|---|---|---|"]
    for r in results["rows"]:
        vs = "" if r["variant"] == "base" or r.get("vs_base") is None else f"{r['vs_base']:+.1%}"
        out.append(f"| {r['variant']} | {r['change']} | {r['valid_ndcg@10']:.4f} ± {r['spread']:.4f} "
                   f"({r['seeds']} seeds) | {vs} |")
    return "\n".join(out)


def main(argv=None) -> int:
    from leaderboard import table as leaderboard

    for path in (argv if argv is not None else sys.argv[1:]):
        doc = json.loads(Path(path).read_text())
        kind = Path(path).name.split("-")[0]
        render = {"leaderboard": lambda r: leaderboard(r["rows"]), "overhead": overhead, "ablation": ablation}[kind]
        print(render(doc["results"]))
        m = doc["meta"]
        print(f"\n`{m['command']}` on {m['machine']} ({m['cpus']} CPUs), {m['date']}, genrec {m['commit']}, "
              f"torch {m['torch']}, ray {m['ray']}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
