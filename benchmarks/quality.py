"""Cold start and multi-token prediction, measured with genrec's own trainer on a time split.

    .venv/bin/python benchmarks/quality.py [--dataset synthetic|ml-latest-small|both] [--seeds 0,1,2]
        [--epochs 4] [--preset 2m] [--experiments masking,mtp] [--set KEY=VALUE ...] [--out results.json]

Two experiments, each repeated over the same seeds (`train.seed` varies initial weights, negatives, id masks and the
shuffle; the data and its split stay the same):

* **masking**: collaborative-embedding masking on (`model.id_mask_rate=auto`, the shards' cold-start share of
  evaluation events) vs off (`model.id_mask_rate=0`). Read (validation split, the kept epoch): MRR on cold-start titles (`mrr_cold`: the
  first title after the cutoff that has no training event) and MRR on the next event (`mrr`), mean +- std over the
  seeds, and the per-seed paired difference (on - off).
* **mtp**: multi-token prediction `model.mtp_k=1` vs `model.mtp_k=5` (half-life from the config) with
  `eval.delays_h=[24,48]`: task B (the next new title at each request, genrec.tasks) scored from every event before
  the request (`mrr_B`, a fresh context) and from only the events at least 24 h / 48 h older (`mrr_B_24h`,
  `mrr_B_48h`: a serving cache that stale); same users and targets at every delay. Mean +- std.

Every run evaluates all probes (next, cold, 0 h, 24 h, 48 h), so the run with masking on and
mtp_k = 1 (the config default) is the shared baseline of both experiments: 3 trainings per seed, not 4.

All runs share one embedded local Ray (started once) and one shard set per dataset under --storage. The time-split
cutoff is a per-dataset choice (--synthetic-cutoff, --movielens-cutoff; see BENCHMARKS.md for why the defaults are
not the config's 0.9). Prints the shards' counts, one table per experiment per dataset, and writes every run's
per-epoch history and the summaries to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import statistics
import time
from pathlib import Path

from genrec.config import load_config
from genrec.runtime import init_ray, prepare_shards
from genrec.shards import open_shards
from genrec.selection import best_record
from genrec.runs import read_history
from genrec.train import fit

REPO = Path(__file__).resolve().parent.parent
DATASETS = {
    "synthetic": ["data.source=synthetic"],
    "ml-latest-small": ["data.source=movielens", f"data.path={(REPO.parent / 'shared/data/ml-latest-small')}"],
}
# variant -> overrides; "base" (masking auto, mtp_k 1) serves both experiments.
VARIANTS = {
    "base": ["model.id_mask_rate=auto", "model.mtp_k=1"],
    "nomask": ["model.id_mask_rate=0", "model.mtp_k=1"],
    "mtp5": ["model.id_mask_rate=auto", "model.mtp_k=5"],
}
NEEDS = {"masking": ["base", "nomask"], "mtp": ["base", "mtp5"]}
COUNT_KEYS = ["train_users", "train_events", "eval_users", "eval_events", "items", "cold_start_items",
              "cold_start_eval_share", "cutoff"]


def cold_rank_diagnostic(run_dir: Path, shards_root: Path) -> dict:
    """Where the model puts cold-start titles, from the run's last kept checkpoint (plain torch, no Ray).

    MRR barely separates a title ranked 250th from one ranked 390th of 400, so this also reports percentiles
    (0 = top of the catalogue, 0.5 = a random ranking, 1 = bottom) of the cold-start target and of all cold-start
    titles, over the evaluation users that have a cold-start target. The trainer keeps the 2 checkpoints with the
    best MRR, so the last kept one is not always the final epoch: its epoch is reported beside it."""
    import torch

    from genrec.checkpoint import load_checkpoint

    ckpts = [d for d in run_dir.glob("checkpoint_2*") if (d / "model.json").is_file()]
    if not ckpts:
        return {}
    epoch_of = {d: json.loads((d / "model.json").read_text())["metrics"]["epoch"] for d in ckpts}
    path = max(ckpts, key=epoch_of.get)
    lm = load_checkpoint(path)
    model = lm.model.eval()
    cold = ~model.items.known.numpy()
    cold[0] = False
    if not cold.any():
        return {}
    from genrec.config import TaskConfig, load_config
    from genrec.tasks import build_plan, context_batches

    ecfg = load_config(None).eval.model_copy(update={"tasks": {"cold": TaskConfig(targets="cold")}, "primary": "cold",
                                                     "delays_h": []})
    plan = build_plan(open_shards(shards_root), ecfg, cold)
    cold_cols = torch.from_numpy(cold)
    target_pct, all_pct = [], []
    with torch.no_grad():
        matrix = model.item_matrix()
        for uses, b in context_batches(plan, lm.spec.max_seq_len, 0, 1, 256):
            scores = model.score_last(b["items"], b["actions"], b["gaps"], b["utils"], b["lengths"], matrix,
                                      b["request_ts"]).float()
            scores[b["exclude_rows"], b["exclude_cols"]] = float("-inf")
            candidates = torch.isfinite(scores).sum(1, keepdim=True).float()  # the ranked titles of each row
            order = scores.argsort(dim=1, descending=True).argsort(dim=1).float()  # 0-based rank of every column
            pct = order / (candidates - 1).clamp(min=1)
            for row, row_uses in enumerate(uses):
                for u in row_uses:
                    if "cold" in u.request.targets:
                        target_pct.append(float(pct[row, int(u.request.targets["cold"][0])]))
                        all_pct.append(float(pct[row, cold_cols].mean()))
    return {"checkpoint_epoch": epoch_of[path], "users": len(target_pct),
            "cold_target_pct": float(statistics.fmean(target_pct)) if target_pct else math.nan,
            "cold_titles_pct": float(statistics.fmean(all_pct)) if all_pct else math.nan}


def add_diagnostic(metrics: dict, diag: dict) -> None:
    metrics |= {"cold_target_pct": diag.get("cold_target_pct", math.nan),
                "cold_titles_pct": diag.get("cold_titles_pct", math.nan),
                "diag_checkpoint_epoch": diag.get("checkpoint_epoch")}


def dataset_header(dataset: str, cutoff: float, counts: dict) -> str:
    return (f"### {dataset} (cutoff_quantile {cutoff}; {counts['train_users']} training users, "
            f"{counts['train_events']} training events, {counts['eval_users']} evaluation users, "
            f"{counts['cold_start_items']} cold-start titles, cold-start share of evaluation events "
            f"{counts['cold_start_eval_share']:.3f})\n")


def rediagnose(path: Path) -> None:
    """Add the cold-rank diagnostic to the runs of an existing results JSON (their checkpoints must still be under
    its --storage), rewrite it and print the tables again."""
    results = json.loads(path.read_text())
    args = results["args"]
    storage = Path(args["storage"])
    experiments = [e.strip() for e in args["experiments"].split(",") if e.strip()]
    seeds = [int(s) for s in args["seeds"].split(",") if s.strip()]
    markdown = []
    for dataset, res in results["datasets"].items():
        for name in res["histories"]:
            m = re.fullmatch(rf"quality-{re.escape(dataset)}-(\w+?)-s(\d+)-[\d-]+", name)
            if not m:
                continue
            diag = cold_rank_diagnostic(storage / "runs" / name, storage / "shards" / f"quality-{dataset}")
            add_diagnostic(res["final"][m.group(1)][m.group(2)], diag)
        runs = {v: {int(s): r for s, r in byseed.items()} for v, byseed in res["final"].items()}
        res["summary"], md = summarise(dataset, runs, seeds, experiments, res["counts"])
        markdown.append(dataset_header(dataset, res["cutoff_quantile"], res["counts"]) + "\n" + md)
    path.write_text(json.dumps(results, indent=2, default=str))
    print("\n\n".join(markdown))


def mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else math.nan)


def pm(xs: list[float], digits: int = 4) -> str:
    m, s = mean_std(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if not math.isnan(s) else f"{m:.{digits}f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def summarise(dataset: str, runs: dict, seeds: list[int], experiments: list[str], counts: dict) -> tuple[dict, str]:
    """runs[variant][seed] = final-epoch metrics -> (summary dict, markdown)."""
    summary, md = {}, []
    n = len(seeds)
    if "masking" in experiments:
        on = [runs["base"][s] for s in seeds]
        off = [runs["nomask"][s] for s in seeds]
        diff_cold = [a["mrr_cold"] - b["mrr_cold"] for a, b in zip(on, off)]
        diff_next = [a["mrr"] - b["mrr"] for a, b in zip(on, off)]
        summary["masking"] = {
            "id_mask_rate_auto": on[0]["id_mask_rate"],
            "on": {k: mean_std([r[k] for r in on]) for k in ("mrr_cold", "ndcg@10_cold", "mrr")},
            "off": {k: mean_std([r[k] for r in off]) for k in ("mrr_cold", "ndcg@10_cold", "mrr")},
            "paired_diff_mrr_cold": {"per_seed": diff_cold, "mean_std": mean_std(diff_cold)},
            "paired_diff_mrr": {"per_seed": diff_next, "mean_std": mean_std(diff_next)},
            "requests_cold": on[0].get("requests_cold"), "requests": on[0].get("requests"),
            "cold_target_pct": {"on": mean_std([r.get("cold_target_pct", math.nan) for r in on]),
                                "off": mean_std([r.get("cold_target_pct", math.nan) for r in off])},
        }
        pct = lambda rs, k: pm([r.get(k, math.nan) for r in rs], 2)  # noqa: E731
        diff_pct = [a.get("cold_target_pct", math.nan) - b.get("cold_target_pct", math.nan) for a, b in zip(on, off)]
        rows = [
            [f"on (auto = {on[0]['id_mask_rate']:.3f})", n, pm([r["mrr_cold"] for r in on]),
             pm([r["ndcg@10_cold"] for r in on]), pct(on, "cold_target_pct"), pct(on, "cold_titles_pct"),
             pm([r["mrr"] for r in on])],
            ["off (0)", n, pm([r["mrr_cold"] for r in off]), pm([r["ndcg@10_cold"] for r in off]),
             pct(off, "cold_target_pct"), pct(off, "cold_titles_pct"), pm([r["mrr"] for r in off])],
            ["on − off (paired)", n, pm(diff_cold), "", pm(diff_pct, 2), "", pm(diff_next)],
        ]
        md.append(f"**{dataset}: collaborative-embedding masking** ({on[0].get('requests_cold')} requests "
                  f"with a cold-start target, {on[0].get('requests')} with a next-event target; per-seed "
                  f"mrr_cold differences on − off: {', '.join(f'{d:+.4f}' for d in diff_cold)})\n")
        md.append(md_table(["masking", "seeds", "MRR cold", "NDCG@10 cold", "cold target rank pct",
                              "all cold titles rank pct", "MRR next"], rows))
        md.append("\n(rank pct: 0 = top of the catalogue, 0.5 = random, 1 = bottom; from the last kept checkpoint)")
    if "mtp" in experiments:
        k1 = [runs["base"][s] for s in seeds]
        k5 = [runs["mtp5"][s] for s in seeds]
        keys = ("mrr_B", "mrr_B_24h", "mrr_B_48h")
        diffs = {k: [a[k] - b[k] for a, b in zip(k5, k1)] for k in keys}
        summary["mtp"] = {
            "k1": {k: mean_std([r[k] for r in k1]) for k in keys},
            "k5": {k: mean_std([r[k] for r in k5]) for k in keys},
            "paired_diff_k5_minus_k1": {k: {"per_seed": v, "mean_std": mean_std(v)} for k, v in diffs.items()},
            "requests": {k: k1[0].get(k.replace("mrr", "requests")) for k in keys},
        }
        rows = [[f"k = {label}", n] + [pm([r[k] for r in rs]) for k in keys] for label, rs in (("1", k1), ("5", k5))]
        rows.append(["k5 − k1 (paired)", n] + [pm(diffs[k]) for k in keys])
        users = [k1[0].get(k.replace("mrr", "requests")) for k in keys]
        md.append(f"\n**{dataset}: multi-token prediction** ({users[0]} requests; the same next new title "
                  f"of each, scored from a fresh context and from one 24 h / 48 h stale)\n")
        md.append(md_table(["MTP", "seeds", "MRR fresh (0 h)", "MRR 24 h stale", "MRR 48 h stale"], rows))
    return summary, "\n".join(md)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs/local.yaml"))
    p.add_argument("--dataset", choices=["synthetic", "ml-latest-small", "both"], default="both")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values (default 0,1,2)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--preset", default="2m")
    p.add_argument("--max-seq-len", type=int, default=64)
    p.add_argument("--experiments", default="masking,mtp", help="comma-separated: masking, mtp")
    p.add_argument("--synthetic-cutoff", type=float, default=0.8,
                   help="data.cutoff_quantile for synthetic (default 0.8: 0.9 leaves 5 cold-start titles)")
    p.add_argument("--movielens-cutoff", type=float, default=0.6,
                   help="data.cutoff_quantile for ml-latest-small (default 0.6: the most evaluation users)")
    p.add_argument("--storage", default=str(REPO / "benchmarks/work/quality"))
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/quality-<time>.json)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE config override")
    p.add_argument("--rediagnose", metavar="RESULTS_JSON", default=None,
                   help="train nothing: add the cold-rank diagnostic to an earlier results JSON and reprint its tables")
    args = p.parse_args()
    if args.rediagnose:
        rediagnose(Path(args.rediagnose))
        return

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    experiments = [e.strip() for e in args.experiments.split(",") if e.strip()]
    bad = [e for e in experiments if e not in NEEDS]
    if bad:
        p.error(f"unknown experiments {bad}; expected masking and/or mtp")
    variants = [v for v in VARIANTS if any(v in NEEDS[e] for e in experiments)]
    datasets = list(DATASETS) if args.dataset == "both" else [args.dataset]
    out = Path(args.out) if args.out else REPO / f"benchmarks/results/quality-{time.strftime('%Y%m%d-%H%M%S')}.json"
    stamp = time.strftime("%Y%m%d-%H%M%S")

    results = {"args": vars(args), "machine": platform.processor() or platform.machine(),
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "datasets": {}}
    markdown = []
    t_all = time.perf_counter()
    for dataset in datasets:
        cutoff = args.synthetic_cutoff if dataset == "synthetic" else args.movielens_cutoff
        base = [f"storage.root={args.storage}", f"name=quality-{dataset}", *DATASETS[dataset],
                f"data.cutoff_quantile={cutoff}", f"model.preset={args.preset}",
                f"model.max_seq_len={args.max_seq_len}", f"train.epochs={args.epochs}", "eval.delays_h=[24,48]",
                "tracking.wandb=disabled"]
        cfg = load_config(args.config, base + args.overrides)
        shards = prepare_shards(cfg)
        counts = {k: shards.manifest["counts"].get(k) for k in COUNT_KEYS}
        print(f"[{dataset}] cutoff_quantile {cutoff}: " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
        init_ray(cfg)
        runs: dict[str, dict[int, dict]] = {v: {} for v in variants}
        histories: dict[str, list] = {}
        walls: dict[str, float] = {}
        for seed in seeds:
            for variant in variants:
                # --set comes last so that it can override anything, the variant's own keys included.
                cfg = load_config(args.config, base + VARIANTS[variant] + [f"train.seed={seed}"] + args.overrides)
                name = f"quality-{dataset}-{variant}-s{seed}-{stamp}"
                print(f"[{dataset}] {variant} seed {seed}: {' '.join(VARIANTS[variant])}", flush=True)
                t0 = time.perf_counter()
                fit(cfg, shards, name)
                walls[name] = time.perf_counter() - t0
                hist = read_history(cfg, name)
                histories[name] = hist
                # The kept epoch's validation figures, names without their prefix (the test split is not read).
                kept = best_record(hist, "valid_ndcg@10") or hist[-1]
                last = {k.removeprefix("valid_"): v for k, v in kept.items()}
                for k in ("mrr_cold", "ndcg@10_cold", "mrr_B", "mrr_B_24h", "mrr_B_48h"):
                    last.setdefault(k, math.nan)  # a probe with no target (e.g. no cold-start title) is absent
                add_diagnostic(last, cold_rank_diagnostic(cfg.storage.path("runs", name), shards.root))
                runs[variant][seed] = last
                print(f"[{dataset}] {variant} seed {seed}: {walls[name]:.0f} s; per epoch loss "
                      f"{[round(h['loss'], 3) for h in hist]} valid mrr {[round(h['valid_mrr'], 4) for h in hist]}; kept "
                      f"mrr_cold {last.get('mrr_cold', math.nan):.4f} mrr_B {last.get('mrr_B', math.nan):.4f} mrr_B_24h {last.get('mrr_B_24h', math.nan):.4f} "
                      f"mrr_B_48h {last.get('mrr_B_48h', math.nan):.4f}", flush=True)
        summary, md = summarise(dataset, runs, seeds, experiments, counts)
        markdown.append(dataset_header(dataset, cutoff, counts) + "\n" + md)
        results["datasets"][dataset] = {"cutoff_quantile": cutoff, "counts": counts, "summary": summary,
                                        "final": {v: {str(s): m for s, m in r.items()} for v, r in runs.items()},
                                        "histories": histories, "run_wall_s": walls}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str))  # partial results survive a later failure
    results["total_wall_s"] = time.perf_counter() - t_all
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\n{args.preset}, max_seq_len {args.max_seq_len}, {args.epochs} epochs, seeds {seeds}; "
          f"total {results['total_wall_s']:.0f} s; results -> {out}\n")
    print("\n\n".join(markdown))


if __name__ == "__main__":
    main()
