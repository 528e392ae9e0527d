"""Does averaging the weights lift the kept epoch? The trained weights and exponential moving averages of them,
validated after every epoch of one run.

    .venv/bin/python benchmarks/weight_average.py [--base configs/recipe-ml-100k.yaml] [--epochs 52]
        [--decays 0.99 0.998] [--set KEY=VALUE ...]

One run of the reference loop (genrec.reference_loop: genrec's model, objective and step in one process, 2 threads)
for a fixed number of epochs (no early stopping, no time budget, so every copy sees the same steps). After every
optimizer step each average moves toward the weights by (1 - decay): avg <- avg + (1 - decay) * (w - avg), from the
initial weights. After every epoch the weights and each average are scored on the validation split; the table gives
each one's best epoch and the mean of its last 8 epochs (the plateau, which one lucky epoch moves less). Validation
only: the benchmark chooses nothing, and the test split is not read.
"""

from __future__ import annotations

import copy
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, write  # noqa: E402
from genrec.config import load_config  # noqa: E402
from genrec.defaults import resolve as resolve_defaults  # noqa: E402
from genrec.preparation import prepare_shards  # noqa: E402
from genrec.reference_loop import train_reference, validation_figures  # noqa: E402
from genrec.tasks import build_plan  # noqa: E402

KEY = "valid_ndcg@10"
PLATEAU = 8  # epochs in "the mean of the last epochs"


def label(decay: float | None) -> str:
    return "trained weights" if decay is None else f"average, decay {decay:g}"


def table(results: dict) -> str:
    """Each copy's best validation NDCG@10 (its epoch) and the mean of its last PLATEAU epochs, against the trained
    weights'."""
    curves = results["curves"]
    raw = curves["trained weights"]
    raw_plateau = statistics.mean(raw[-PLATEAU:])
    out = ["| weights | best validation NDCG@10 (epoch) | mean of the last 8 epochs | vs the trained weights' "
           "(best / mean of the last 8) |", "|---|---|---|---|"]
    for name, curve in curves.items():
        best = max(range(len(curve)), key=curve.__getitem__)
        plateau = statistics.mean(curve[-PLATEAU:])
        vs = "" if curve is raw else f"{curve[best] / max(raw) - 1:+.1%} / {plateau / raw_plateau - 1:+.1%}"
        out.append(f"| {name} | {curve[best]:.4f} ({best + 1}) | {plateau:.4f} | {vs} |")
    out.append(f"\n{len(raw)} epochs of {results['steps_per_epoch']} steps, {results['base']}"
               + (f" with {' '.join(results['overrides'])}" if results["overrides"] else ""))
    return "\n".join(out)


def ema_update(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """avg <- avg + (1 - decay) * (w - avg) for every parameter; buffers copied as they are."""
    with torch.no_grad():
        torch._foreach_lerp_(list(average.parameters()), list(model.parameters()), 1.0 - decay)
        for a, b in zip(average.buffers(), model.buffers()):
            a.copy_(b)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--base", default="configs/recipe-ml-100k.yaml")
    p.add_argument("--epochs", type=int, default=52)
    p.add_argument("--decays", nargs="+", type=float, default=[0.99, 0.998])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--storage", default="benchmarks/work/weight-average")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    if any(not 0.0 < d < 1.0 for d in args.decays):
        p.error("--decays: each between 0 and 1 (exclusive)")
    cfg = load_config(args.base, [f"storage.root={args.storage}", "tracking.wandb=disabled", "train.patience=null",
                                  "train.time_budget_s=null", *args.overrides])
    shards = prepare_shards(cfg, echo=lambda *_: None)
    cfg = resolve_defaults(cfg, shards, echo=lambda *_: None)
    averages: dict[float, torch.nn.Module] = {}
    plans = []

    def prepare(run):  # before the first step: each average starts at the initial weights
        averages.update({d: copy.deepcopy(run.model) for d in args.decays})
        plans.append(build_plan(shards, cfg.eval, run.cold, split="valid"))

    def on_step(model):
        for d, average in averages.items():
            ema_update(average, model, d)

    curves: dict[str, list[float]] = {label(None): [], **{label(d): [] for d in args.decays}}

    def log(record):
        curves[label(None)].append(record[KEY])
        for d, average in averages.items():
            curves[label(d)].append(validation_figures(plans[0], average, cfg)[KEY])
        print(f"epoch {record['epoch']}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in curves.items()), flush=True)

    run = train_reference(cfg, shards, epochs=args.epochs, threads=args.threads, prepare=prepare, on_step=on_step,
                          log=log)
    results = {"base": args.base, "overrides": args.overrides, "decays": args.decays, "curves": curves,
               "steps_per_epoch": run.history[0]["steps"],
               "history": [{k: v for k, v in h.items() if k != "losses"} for h in run.history]}
    print(table(results))
    write("weight_average", results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
