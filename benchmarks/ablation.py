"""What each change to the loop and the model is worth: one change at a time, validation NDCG@10, over seeds.

    .venv/bin/python benchmarks/ablation.py [--base configs/recipe-ml-100k.yaml] [--seeds 0 1]
        [--budget-s 240] [--variants NAME ...]

Every run is the reference loop (genrec.reference_loop: genrec's model, objective and step in one process, 2
threads), leave-one-out on the base config's data, trained to early stopping on validation (patience 5) within
--budget-s seconds of training. Each variant is the base with one setting put back the way genrec had it before
(or one feature switched), so a row reads "what this one change does here"; the hstu-* variants change the HSTU
block's own settings (run them beside `hstu`, their reference), and 4-layers-dropout-0.5 tries the
same two changes on the transformer (run it beside `base`). Only validation figures: the ablation chooses
nothing, and the test split is left to the leaderboard.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import mean_spread, parser, write  # noqa: E402
from genrec.config import load_config  # noqa: E402
from genrec.defaults import resolve as resolve_defaults  # noqa: E402
from genrec.reference_loop import train_reference  # noqa: E402
from genrec.preparation import prepare_shards  # noqa: E402

# name -> (what it changes, overrides); applied to the base one at a time.
VARIANTS = {
    "base": ("the base config as it is (--base)", []),
    "features-random": ("action/utility/gap embeddings drawn at random (std 0.02), as before", ["features_random"]),
    "warmup-cosine": ("20 warm-up steps and a cosine to 10% over 100 epochs, as before",
                      ["train.warmup_steps=20", "train.lr_schedule=cosine"]),
    "decay-everything": ("weight decay 0.01 on every parameter, embeddings included, as before",
                         ["train.weight_decay=0.01", "train.weight_decay_on=all"]),
    "head-d/8": ("the projected head at d/8, the old default", ["model.projection_ratio=8"]),
    "sampled-64": ("sampled softmax with 64 uniform negatives instead of the full softmax",
                   ["model.decoding=sampled", "model.num_negatives=64"]),
    "tied": ("one item table for input and output, as SASRec ties them", ["model.tie_embeddings=true"]),
    "no-semantic": ("no semantic item tower", ["model.semantic=false"]),
    "semantic": ("the semantic item tower on (genres, year, title words)", ["model.semantic=true"]),
    "no-title-age": ("no title-age bias", ["model.title_age=false"]),
    "id-masking": ("collaborative-embedding masking at 10%", ["model.id_mask_rate=0.1"]),
    "transformer": ("the transformer block", ["model.block=transformer"]),
    "hstu": ("the HSTU block", ["model.block=hstu"]),
    "mtp-1": ("next-event prediction only", ["model.mtp_k=1"]),
    "exclude-history": ("the context's titles left out of the training softmax", ["model.exclude_history=true"]),
    # The HSTU block with settings of its own: it learns fastest with the transformer's recipe, then overfits early.
    "hstu-dropout-0.5": ("the HSTU block, dropout 0.5", ["model.block=hstu", "model.dropout=0.5"]),
    "hstu-lr-5e-4": ("the HSTU block, learning rate 5e-4", ["model.block=hstu", "train.lr=0.0005"]),
    "hstu-4-layers": ("the HSTU block, 4 layers", ["model.block=hstu", "model.layers=4"]),
    "hstu-4-layers-dropout-0.5": ("the HSTU block, 4 layers, dropout 0.5", ["model.block=hstu", "model.layers=4",
                                                                            "model.dropout=0.5"]),
    # Against the defaults (configs/defaults-ml-100k-loo.yaml): what learns more within the pipeline's budget?
    "lr-4e-3": ("learning rate 4e-3", ["train.lr=0.004"]),
    "batch-32": ("batch 32", ["train.batch_size=32"]),
    "mtp-2": ("two-token prediction", ["model.mtp_k=2"]),
    "exclude-history-batch-32": ("the context's titles left out of the training softmax, batch 32",
                                 ["model.exclude_history=true", "train.batch_size=32"]),
    # Against the defaults on a larger catalogue (configs/defaults-ml-latest-small-loo.yaml, 9,125 titles): does a
    # cheaper softmax learn more within the budget than the full one?
    "sampled-1024": ("sampled softmax with 1,024 uniform negatives a batch instead of the full softmax",
                     ["model.decoding=sampled", "model.num_negatives=1024"]),
    "sampled-1024-logq": ("sampled softmax with 1,024 uniform negatives a batch, logQ-corrected",
                          ["model.decoding=sampled", "model.num_negatives=1024", "model.logq=true"]),
    "exclude-history-sampled-1024": ("the context's titles left out of the training softmax, sampled softmax with "
                                     "1,024 uniform negatives a batch",
                                     ["model.exclude_history=true", "model.decoding=sampled",
                                      "model.num_negatives=1024"]),
    "dropout-0.3": ("dropout 0.3 (the recipes': 0.39)", ["model.dropout=0.3"]),
    "sampled-1024-dropout-0.3": ("sampled softmax with 1,024 uniform negatives a batch, dropout 0.3",
                                 ["model.decoding=sampled", "model.num_negatives=1024", "model.dropout=0.3"]),
    # The same two changes on the transformer block: does the deeper, more regularised model help it too?
    "4-layers-dropout-0.5": ("the transformer block, 4 layers, dropout 0.5", ["model.layers=4", "model.dropout=0.5"]),
}


def apply_old(flags: list[str], run) -> None:
    """What no config key restores: random feature embeddings."""
    import torch

    if "features_random" in flags:
        with torch.no_grad():
            for table in (run.model.embed.action, run.model.embed.utility, run.model.embed.gap):
                table.weight.normal_(0.0, 0.02)


def table(results: dict) -> str:
    """The Markdown table of a stored run: each variant's validation NDCG@10 over its seeds against the base, with
    each seed's kept epoch, the mean of its last 8 epochs (less sensitive to one lucky epoch) and its events/s."""
    def per_seed(name, figure):
        return ", ".join(figure(r["history"]) for r in results.get("runs", {}).get(name, [])) or ""

    def kept(history):
        best = max(history, key=lambda h: h["valid_ndcg@10"])
        return f"{best['epoch']}/{len(history)}"

    def plateau(history):
        return f"{sum(h['valid_ndcg@10'] for h in history[-8:]) / len(history[-8:]):.4f}"

    def rate(history):
        return f"{sum(h['events_per_s'] for h in history) / len(history):,.0f}"

    out = ["| variant | change | validation NDCG@10 (mean ± spread) | kept epoch / epochs | mean of the last 8 epochs "
           "| training events/s | vs the base |", "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        vs = "" if r["variant"] == "base" or r.get("vs_base") is None else f"{r['vs_base']:+.1%}"
        figure = (f"{r['valid_ndcg@10']:.4f} ± {r['spread']:.4f} ({r['seeds']} seeds)" if r["seeds"] > 1 else
                  f"{r['valid_ndcg@10']:.4f} (1 seed)")
        out.append(f"| {r['variant']} | {r['change']} | {figure} | "
                   f"{per_seed(r['variant'], kept)} | {per_seed(r['variant'], plateau)} | "
                   f"{per_seed(r['variant'], rate)} | {vs} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--base", default="configs/recipe-ml-100k.yaml")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--budget-s", type=float, default=240.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--storage", default="benchmarks/work/ablation")
    args = p.parse_args(argv)
    rows, runs = [], {}
    base_cfg = load_config(args.base, [])
    for name in args.variants:
        what, changes = VARIANTS[name]
        flags = [c for c in changes if "=" not in c]
        sets = [c for c in changes if "=" in c]
        if name != "base" and not flags and load_config(args.base, sets) == base_cfg:
            print(f"{name}: skipped, the base already has it ({' '.join(sets)})", flush=True)
            continue
        figures = []
        for seed in args.seeds:
            cfg = load_config(args.base, [f"storage.root={args.storage}", f"train.seed={seed}", "train.patience=5",
                                       f"train.time_budget_s={args.budget_s}", "tracking.wandb=disabled", *sets])
            shards = prepare_shards(cfg, echo=lambda *_: None)
            cfg = resolve_defaults(cfg, shards, echo=lambda *_: None)
            history = train_reference(cfg, shards, threads=args.threads,
                                      prepare=lambda run: apply_old(flags, run)).history
            best = max(history, key=lambda h: h["valid_ndcg@10"])
            figures.append(best["valid_ndcg@10"])
            runs.setdefault(name, []).append({"seed": seed, "history": [{k: v for k, v in h.items() if k != "losses"}
                                                                         for h in history]})
            print(f"{name} seed {seed}: valid NDCG@10 {best['valid_ndcg@10']:.4f} (epoch {best['epoch']} of "
                  f"{len(history)})", flush=True)
        mean, spread = mean_spread(figures)
        rows.append({"variant": name, "change": what, "valid_ndcg@10": mean, "spread": spread,
                     "seeds": len(figures)})
    base = next((r["valid_ndcg@10"] for r in rows if r["variant"] == "base"), None)
    for r in rows:
        r["vs_base"] = (r["valid_ndcg@10"] / base - 1) if base else None
    results = {"rows": rows, "runs": runs, "base": args.base, "budget_s": args.budget_s}
    print(table(results))
    write("ablation", results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
