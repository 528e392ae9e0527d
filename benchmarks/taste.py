"""Does a checkpoint's semantic tower match tastes? One new single-genre title per genre, added as `POST /titles` adds
it (no id row: the tower alone scores it), ranked for a "fan" of each genre (a history of that genre's most trained
single-genre titles). See genrec.probes for the design.

    .venv/bin/python benchmarks/taste.py CHECKPOINT [CHECKPOINT ...]      # checkpoint folders, or run folders (latest)
    .venv/bin/python benchmarks/taste.py genrec-runs/runs/taste-e12-m20 --history 10

Per checkpoint: a row per genre (rank of the new title of that genre for its fan, over the catalogue without the
history, and the share of that catalogue ranked above it; its rank among the new titles; its mean rank for the other
genres' fans, their own histories left out; ties count against the title), then the summary: the share of
fans whose own genre's new title is the best new title (chance = 1 / genres) and whether one new title is the best
for every fan (a per-genre prior, not a taste match).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genrec.checkpoint import load_checkpoint  # noqa: E402
from genrec.probes import taste_probe  # noqa: E402
from genrec.recommend import Ranker  # noqa: E402
from genrec.runtime import print_table  # noqa: E402
from genrec.checkpoint import CHECKPOINT_SPEC  # noqa: E402


def checkpoint_of(path: Path) -> Path:
    """A checkpoint folder, or a run folder's newest checkpoint."""
    if (path / CHECKPOINT_SPEC).exists():
        return path
    found = sorted(p for p in path.glob("checkpoint_*") if p.is_dir())
    if not found:
        raise SystemExit(f"{path}: neither a checkpoint folder nor a run folder with checkpoint_* in it")
    return found[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, help="checkpoint or run folders")
    p.add_argument("--history", type=int, default=20, help="events in each fan's history")
    p.add_argument("--min-titles", type=int, default=5, help="trained single-genre titles a genre needs")
    p.add_argument("--out", default="benchmarks/results/taste.jsonl")
    args = p.parse_args()
    summary = []
    for path in args.paths:
        ck = checkpoint_of(path)
        loaded = load_checkpoint(ck)
        res = taste_probe(Ranker(loaded, ck.name), history_len=args.history, min_titles=args.min_titles)
        print(f"\n{ck}")
        print_table(res["genres"], list(res["genres"][0]))
        row = {"checkpoint": str(ck), "epochs": loaded.info.get("metrics", {}).get("epoch"),
               "id_mask_rate": loaded.info.get("metrics", {}).get("id_mask_rate"),
               **{k: v for k, v in res.items() if k != "genres"}}
        summary.append(row)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps({**row, "genres": res["genres"]}) + "\n")
    print()
    print_table(summary, ["checkpoint", "epochs", "id_mask_rate", "new_titles", "median_share_above",
                          "own_fan_ranks_it_higher", "own_genre_first", "best_new_title_for_every_fan"])


if __name__ == "__main__":
    main()
