"""How genrec.metrics.relevant_ranks should rank: count the scores above each relevant title, or sort each row once.

    .venv/bin/python benchmarks/rank_count.py [--titles 1682 24000 100000] [--relevant 1 2 4 8 16 32] [--rows 256]
        [--repeats 3] [--out FILE]

Validation ranks every title for each request: a (rows, titles) score matrix and R relevant titles a row (one for the
next event, more for a long-horizon task). Counting takes two passes over a row per relevant title; a sort takes one
row sort (O(V log V)) and two binary searches. This times both on random scores (rounded to 1/1000, so titles tie) in
this process, with the threads torch has here, and checks they give the same ranks. The cut-over
(genrec.metrics.COUNT_RANKS_UP_TO) is the largest R at which counting is still faster.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, write  # noqa: E402
from genrec.metrics import COUNT_RANKS_UP_TO, relevant_ranks  # noqa: E402


def best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` calls, in seconds (after one call to warm up)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def table(results: dict) -> str:
    out = ["| titles | relevant a row | count (ms) | sort (ms) | count / sort |", "|---|---|---|---|---|"]
    for r in results["rows"]:
        out.append(f"| {r['titles']:,} | {r['relevant']} | {1e3 * r['count_s']:.1f} | {1e3 * r['sort_s']:.1f} | "
                   f"{r['count_s'] / r['sort_s']:.2f} |")
    out.append(f"\n{results['rows_per_call']} rows a call, the fastest of {results['repeats']} calls, "
               f"{results['threads']} torch threads; genrec counts up to {results['count_up_to']} relevant titles")
    return "\n".join(out)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--titles", type=int, nargs="+", default=[1682, 24_000, 100_000])
    p.add_argument("--relevant", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for v in a.titles:
        # rounded to 1/1000 so that some titles tie, as low-precision scores do
        scores = (torch.rand(a.rows, v, generator=gen) * 1000).round() / 1000
        scores[:, 0] = float("-inf")  # the padding column, as evaluation masks it
        for r in a.relevant:
            relevant = torch.randint(1, v, (a.rows, r), generator=gen)
            valid = torch.ones(a.rows, r, dtype=torch.bool)
            counted = relevant_ranks(scores, relevant, valid, count_up_to=r)
            sorted_ = relevant_ranks(scores, relevant, valid, count_up_to=0)
            if not torch.equal(counted, sorted_):
                raise SystemExit(f"counting and sorting disagree at {v} titles, {r} relevant a row")
            rows.append({"titles": v, "relevant": r,
                         "count_s": best_time(lambda: relevant_ranks(scores, relevant, valid, count_up_to=r),
                                              a.repeats),
                         "sort_s": best_time(lambda: relevant_ranks(scores, relevant, valid, count_up_to=0),
                                             a.repeats)})
            print(f"{v:,} titles, {r} relevant: count {1e3 * rows[-1]['count_s']:.1f} ms, "
                  f"sort {1e3 * rows[-1]['sort_s']:.1f} ms", file=sys.stderr)
    results = {"rows": rows, "rows_per_call": a.rows, "repeats": a.repeats, "threads": torch.get_num_threads(),
               "count_up_to": COUNT_RANKS_UP_TO}
    print(table(results))
    write("rank_count", results, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
