"""Does a checkpoint's semantic tower match tastes? One new single-genre title per genre, added as `POST /titles` adds
it (no id row: the tower alone scores it), ranked for a "fan" of each genre (a history of that genre's most trained
single-genre titles). See genrec.probes for the design.

    .venv/bin/python benchmarks/taste.py CHECKPOINT [CHECKPOINT ...]      # checkpoint folders, or run folders (latest)
    .venv/bin/python benchmarks/taste.py genrec-runs/runs/taste-e12-m20 --history 10 [--min-titles 5] [--out R.json]

Per checkpoint: a row per genre (rank of the new title of that genre for its fan, over the catalogue without the
history, and the share of that catalogue ranked above it; its rank among the new titles; its mean rank for the other
genres' fans, their own histories left out; ties count against the title), then the summary: the share of
fans whose own genre's new title is the best new title (chance = 1 / genres) and whether one new title is the best
for every fan (a per-genre prior, not a taste match). Nothing is timed. One results JSON for all the checkpoints
(`--out`, default benchmarks/results/taste-<time>.json): a row per checkpoint with its per-genre rows in it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, write  # noqa: E402
from genrec.checkpoint import CHECKPOINT_SPEC, load_checkpoint  # noqa: E402
from genrec.probes import taste_probe  # noqa: E402
from genrec.recommend import Ranker  # noqa: E402
from genrec.console import print_table  # noqa: E402


def checkpoint_of(path: Path) -> Path:
    """A checkpoint folder, or a run folder's newest checkpoint."""
    if (path / CHECKPOINT_SPEC).exists():
        return path
    found = sorted(p for p in path.glob("checkpoint_*") if p.is_dir())
    if not found:
        raise SystemExit(f"{path}: neither a checkpoint folder nor a run folder with checkpoint_* in it")
    return found[-1]


def table(results: dict) -> str:
    """A row per checkpoint: where the fans' own new titles rank, and whether a genre prior decides."""
    out = ["| checkpoint | epochs | id mask rate | new titles | median share above the fan's own new title | "
           "own fan ranks it higher than the other fans | own genre's new title first among the new titles | "
           "one new title first for every fan |", "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        n = r["new_titles"]
        mask = "" if r["id_mask_rate"] is None else f"{r['id_mask_rate']:.3g}"
        every = "yes" if r["best_new_title_for_every_fan"] else "no"
        out.append(f"| {r['checkpoint']} | {'' if r['epochs'] is None else r['epochs']} | {mask} | {n} | "
                   f"{r['median_share_above']:.3f} | {round(r['own_fan_ranks_it_higher'] * n)} of {n} | "
                   f"{round(r['own_genre_first'] * n)} of {n} | {every} |")
    out.append(f"\nFans' histories of {results['history']} events; genres with {results['min_titles']}+ trained "
               "single-genre titles; chance for the own genre's new title first: 1 of the new titles.")
    return "\n".join(out)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("paths", nargs="+", type=Path, help="checkpoint or run folders")
    p.add_argument("--history", type=int, default=20, help="events in each fan's history")
    p.add_argument("--min-titles", type=int, default=5, help="trained single-genre titles a genre needs")
    args = p.parse_args(argv)
    rows = []
    for path in args.paths:
        ck = checkpoint_of(path)
        loaded = load_checkpoint(ck)
        res = taste_probe(Ranker(loaded, ck.name), history_len=args.history, min_titles=args.min_titles)
        print(f"\n{ck}")
        print_table(res["genres"], list(res["genres"][0]))
        rows.append({"checkpoint": str(ck), "epochs": loaded.info.get("metrics", {}).get("epoch"),
                     "id_mask_rate": loaded.info.get("metrics", {}).get("id_mask_rate"), **res})
    results = {"rows": rows, "history": args.history, "min_titles": args.min_titles}
    print()
    print(table(results))
    write("taste", results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
