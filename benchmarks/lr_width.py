"""One learning rate for every width, or one that falls as 1/width: validation NDCG@10 per epoch, preset by preset.

    .venv/bin/python benchmarks/lr_width.py [--config configs/study-synthetic.yaml] [--presets 500k 1m]
        [--lrs 0.002] [--epochs 15] [--max-seq-len 64] [--set KEY=VALUE ...] [--out RESULTS.json]

For each preset and each train.lr, two runs of the reference loop (genrec.reference_loop: genrec's model, objective
and step in one process, 2 threads) on the config's data, the same seed and steps: `train.lr_base_width` as
configured (a backbone wider than it trains at train.lr x base / width) and null (train.lr at every width). A fixed
number of epochs, no early stopping, no time budget, validation after every epoch (no serving delays). Validation
only: the benchmark chooses nothing, and the test split is not read.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, write  # noqa: E402
from genrec.build import width_scaled_lr  # noqa: E402
from genrec.config import load_config  # noqa: E402
from genrec.preparation import prepare_shards  # noqa: E402
from genrec.presets import PRESET_NAMES, PRESETS  # noqa: E402
from genrec.reference_loop import train_reference  # noqa: E402

KEY = "valid_ndcg@10"


def table(results: dict) -> str:
    out = ["| preset | width | train.lr | rate it trained at | best validation NDCG@10 (epoch) | last epoch's | "
           "last epoch's loss |", "|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        curve = r["ndcg"]
        best = max(range(len(curve)), key=curve.__getitem__)
        out.append(f"| {r['preset']} | {r['width']} | {r['lr']:g} | {r['effective_lr']:.3g} | {curve[best]:.4f} "
                   f"({best + 1}) | {curve[-1]:.4f} | {r['loss'][-1]:.3f} |")
    out.append(f"\n{results['epochs']} epochs each, {results['config']}, max_seq_len {results['max_seq_len']}"
               + (f", {' '.join(results['overrides'])}" if results["overrides"] else ""))
    return "\n".join(out)


def main(argv=None) -> None:
    p = parser(__doc__)
    p.add_argument("--config", default="configs/study-synthetic.yaml")
    p.add_argument("--presets", nargs="+", default=["500k", "1m"], choices=PRESET_NAMES)
    p.add_argument("--lrs", nargs="+", type=float, default=[2e-3])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--max-seq-len", type=int, default=64)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    base = [f"model.max_seq_len={args.max_seq_len}", "train.patience=null", "train.time_budget_s=null",
            "eval.delays_h=[]", *args.set]
    runs = []
    for preset in args.presets:
        for lr in args.lrs:
            for scaling in ("configured", "null"):
                cfg = load_config(args.config, [f"model.preset={preset}", f"train.lr={lr}", *base]
                                  + (["train.lr_base_width=null"] if scaling == "null" else []))
                width = PRESETS[preset][1]
                shards = prepare_shards(cfg, echo=lambda *_: None)
                history = train_reference(cfg, shards, epochs=args.epochs, threads=2).history
                runs.append({"preset": preset, "width": width, "lr": lr, "lr_base_width": cfg.train.lr_base_width,
                             "effective_lr": width_scaled_lr(lr, cfg.train.lr_base_width, width),
                             "ndcg": [h[KEY] for h in history], "loss": [h["loss"] for h in history]})
                print(f"{preset} lr {lr:g} (base width {cfg.train.lr_base_width}): best {max(runs[-1]['ndcg']):.4f}",
                      flush=True)
    results = {"runs": runs, "epochs": args.epochs, "config": args.config, "max_seq_len": args.max_seq_len,
               "overrides": args.set}
    print(table(results))
    write("lr_width", results, args.out)


if __name__ == "__main__":
    main()
