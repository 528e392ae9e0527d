r"""Ray Data ingest: re-stream the shards every epoch vs materialize the windows once, side by side.

    .venv/bin/python benchmarks/ingest.py [--config configs/local.yaml] [--preset 250k] [--epochs 4] [--workers 1]
        [--modes stream materialize] [--set KEY=VALUE ...] [--out FILE]
    .venv/bin/python benchmarks/ingest.py --modes stream --variant train.prefetch_batches=0 \
        --variant train.prefetch_batches=4      # one run per variant (each a KEY=VALUE[,KEY=VALUE])

Runs the same pre-training twice on one embedded local Ray (`train.ingest=stream`, then `train.ingest=materialize`;
with --variant, once per mode and variant) and reports, for each: the training loop's time of epoch 1 and the mean
of the later epochs (input waits included), the share of it spent waiting for Ray Data's next batch
(`input_wait_share`, measured by the trainer around the batch iterator; epoch 1, and the later epochs together), the
run's wall time (`genrec.train.fit`: Ray Train start-up, evaluation and checkpoints included; shard preparation and
Ray start not), the final loss and validation MRR (identical data and seeds: the loss must match). Small data on a
small box is where re-streaming hurts: every epoch re-lists, re-reads and re-windows the Parquet shards. The results
JSON (benchmarks/_harness.write) keeps each run's per-epoch history beside the table's rows.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, write  # noqa: E402
from genrec.config import load_config  # noqa: E402
from genrec.preparation import prepare_shards  # noqa: E402
from genrec.ray_session import init_ray  # noqa: E402
from genrec.runs import read_history  # noqa: E402
from genrec.train import fit  # noqa: E402


def table(results: dict) -> str:
    """The Markdown table (one row per ingest mode and variant), then the run's settings."""
    def num(v) -> str:  # as genrec.console.print_table writes a float
        if v is None:
            return "-"
        return f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}"

    out = ["| ingest | variant | epoch 1 s | later epochs s (mean) | input wait, epoch 1 | input wait, later epochs | "
           "run wall s | final loss | MRR |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        out.append(f"| {r['ingest']} | {r['variant']} | {r['epoch_1_s']:.1f} | {r['later_epochs_s']:.1f} | "
                   f"{r['wait_epoch_1']:.1%} | {r['wait_later']:.1%} | {r['run_wall_s']:.1f} | {num(r['final_loss'])} | "
                   f"{num(r['valid_mrr'])} |")
    extra = "".join(f", --set {o}" for o in results.get("overrides", []))
    out.append(f"\npreset {results['preset']}, {results['epochs']} epochs, {results['workers']} worker(s), "
               f"{results['config']}{extra}")
    return "\n".join(out)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--config", default="configs/local.yaml")
    p.add_argument("--preset", default="250k")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--modes", nargs="+", default=["stream", "materialize"], choices=["stream", "materialize"])
    p.add_argument("--variant", action="append", default=None,
                   help="extra overrides for one run, KEY=VALUE[,KEY=VALUE]; one run per variant and mode")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    rows, histories = [], {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k, (mode, variant) in enumerate((m, v) for m in args.modes for v in (args.variant or [""])):
        extra = [o for o in variant.split(",") if o]
        cfg = load_config(args.config, [f"model.preset={args.preset}", f"train.epochs={args.epochs}",
                                        f"train.workers={args.workers}", f"train.ingest={mode}",
                                        "tracking.wandb=disabled", *args.overrides, *extra])
        shards = prepare_shards(cfg)
        init_ray(cfg)
        name = f"ingest-{mode}-{stamp}-{k}"
        t0 = time.perf_counter()
        fit(cfg, shards, name)
        wall = time.perf_counter() - t0
        hist = read_history(cfg, name)
        histories[name] = hist
        later = hist[1:] or hist
        rows.append({"ingest": mode, "variant": variant or "-", "epoch_1_s": hist[0]["epoch_time_s"],
                     "later_epochs_s": sum(h["epoch_time_s"] for h in later) / len(later),
                     "wait_epoch_1": hist[0]["input_wait_share"],
                     "wait_later": sum(h["input_wait_s"] for h in later) / sum(h["epoch_time_s"] for h in later),
                     "run_wall_s": wall, "final_loss": hist[-1]["loss"], "valid_mrr": hist[-1]["valid_mrr"]})
    results = {"rows": rows, "config": args.config, "preset": args.preset, "epochs": args.epochs,
               "workers": args.workers, "modes": args.modes, "variants": args.variant, "overrides": args.overrides,
               "histories": histories}
    print()
    print(table(results))
    write("ingest", results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
