"""Warm-started retrains link by link, beside the retrains from scratch on the same windows, from finished sweeps.

    .venv/bin/python benchmarks/warm_chain.py --sweep LABEL=DIR [--sweep LABEL=DIR ...] [--out RESULTS.json]

Each DIR is a sweep's Tune folder run with `tune.warm_start: true` (several variants of one sweep: copies of its
folder without the warm-w* levels, each resumed with other tune.warm_* settings, share its retrains from scratch).
Per warm link: the epochs it trained, the epoch it kept (0: the weights it started from), the validation NDCG@10 it
started at, kept, and the best of its trained epochs, its primary task's MRR, its whole run's wall time and FLOPs;
and the retrain from scratch of the same (preset, max_seq_len, seed, window). Validation figures only, as the sweep
recorded them; nothing is trained here.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, write  # noqa: E402
from genrec.selection import VALID  # noqa: E402
from genrec.study import load_experiment  # noqa: E402

KEY = VALID + "ndcg@10"


def links(label: str, folder: str) -> list[dict]:
    """One row per warm link of the sweep in `folder` (oldest window first), with its cold twin's figures."""
    exp = load_experiment(folder)
    primary = f"{VALID}mrr_{exp.config.eval.primary}"
    cold = {(t.preset, t.max_seq_len, t.seed, t.window_shift_h): t.final for t in exp.ok}
    rows = []
    for t in sorted(exp.warm, key=lambda t: (t.params, t.max_seq_len, t.seed, -t.window_shift_h)):
        h = t.history
        start = h[0] if h and h[0].get("epoch") == 0 else {}  # absent in a sweep run before epoch 0 was recorded
        trained = [r[KEY] for r in h if r.get("epoch", 0) > 0 and r.get(KEY) is not None]
        twin = cold.get((t.preset, t.max_seq_len, t.seed, t.window_shift_h), {})
        rows.append({"variant": label, "preset": t.preset, "max_seq_len": t.max_seq_len, "seed": t.seed,
                     "window_shift_h": t.window_shift_h, "epochs": len(trained), "kept_epoch": t.final.get("epoch"),
                     "start": start.get(KEY, h[0].get("start_" + KEY) if h else None), "kept": t.final.get(KEY),
                     "best_trained": max(trained, default=None), "mrr": t.final.get(primary),
                     "run_wall_s": t.spent.get("wall_time_s"), "run_flops": t.spent.get("train_flops"),
                     "cold": twin.get(KEY), "cold_mrr": twin.get(primary), "cold_flops": twin.get("train_flops")})
    return rows


def table(results: dict) -> str:
    def f(v, digits=4):
        return "" if v is None else f"{v:.{digits}f}"

    out = ["| variant | preset | window h | epochs | kept epoch | start | best trained epoch | kept | from scratch | "
           "kept − from scratch | run wall s | run FLOPs / from scratch |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["links"]:
        diff = r["kept"] - r["cold"] if r["kept"] is not None and r["cold"] is not None else None
        ratio = r["run_flops"] / r["cold_flops"] if r["run_flops"] and r["cold_flops"] else None
        out.append(f"| {r['variant']} | {r['preset']} | {r['window_shift_h']:g} | {r['epochs']} | {r['kept_epoch']} | "
                   f"{f(r['start'])} | {f(r['best_trained'])} | {f(r['kept'])} | {f(r['cold'])} | "
                   f"{'' if diff is None else f'{diff:+.4f}'} | {f(r['run_wall_s'], 1)} | {f(ratio, 3)} |")
    out.append("\nValidation NDCG@10 (the sweep's validation requests); start: the weights a link starts from, "
               "scored before its first step")
    return "\n".join(out)


def main(argv=None) -> None:
    p = parser(__doc__)
    p.add_argument("--sweep", action="append", required=True, metavar="LABEL=DIR",
                   help="a finished sweep's Tune folder with warm-started retrains, and the label its rows get")
    args = p.parse_args(argv)
    rows = []
    for spec in args.sweep:
        label, sep, folder = spec.partition("=")
        if not sep or not Path(folder).is_dir():
            p.error(f"--sweep {spec}: expected LABEL=DIR, DIR a sweep's Tune folder")
        rows += links(label, folder)
    results = {"links": rows}
    print(table(results))
    write("warm_chain", results, args.out)


if __name__ == "__main__":
    main()
