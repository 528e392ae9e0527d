"""Cold start and multi-token prediction, measured with genrec's own trainer on a time split.

    .venv/bin/python benchmarks/quality.py [--dataset synthetic|ml-latest-small|both] [--seeds 0,1,2]
        [--epochs 4] [--preset 2m] [--experiments masking,mtp] [--set KEY=VALUE ...] [--out results.json]
    .venv/bin/python benchmarks/quality.py --rediagnose benchmarks/results/quality-<time>.json [--out other.json]

Two experiments, each repeated over the same seeds (`train.seed` varies initial weights, negatives, id masks and the
shuffle; the data and its split stay the same):

* **masking**: collaborative-embedding masking on (`model.id_mask_rate=auto`, the shards' cold-start share of
  evaluation events) vs off (`model.id_mask_rate=0`). Read (validation split, the kept epoch): MRR on cold-start titles (`mrr_cold`: the
  first title after the cutoff that has no training event) and MRR on the next event (`mrr`), mean +- std over the
  seeds, and the per-seed paired difference (on - off). Beside them, where the model ranks cold-start titles
  (percentiles of the catalogue, from the run's last kept checkpoint; see cold_rank_diagnostic).
* **mtp**: multi-token prediction `model.mtp_k=1` vs `model.mtp_k=5` (half-life from the config) with
  `eval.delays_h=[24,48]`: task B (the next new title at each request, genrec.tasks) scored from every event before
  the request (`mrr_B`, a fresh context) and from only the events at least 24 h / 48 h older (`mrr_B_24h`,
  `mrr_B_48h`: a serving cache that stale); same users and targets at every delay. Mean +- std.

Every run evaluates all probes (next, cold, 0 h, 24 h, 48 h), so the run with masking on and
mtp_k = 1 (the config default) is the shared baseline of both experiments: 3 trainings per seed, not 4.

All runs share one embedded local Ray (started once) and one shard set per dataset under --storage. The time-split
cutoff is a per-dataset choice (--synthetic-cutoff, --movielens-cutoff; see BENCHMARKS.md for why the defaults are
not the config's 0.9). Prints the shards' counts and each run's per-epoch figures as it goes, then one table per
experiment per dataset. The results JSON (--out, default benchmarks/results/quality-<time>.json) holds the table's
rows, every run's per-epoch history, kept-epoch metrics and wall time, the shards' counts and the arguments; it is
rewritten after each dataset, so a later failure leaves the datasets done so far.

--rediagnose trains nothing: it adds the cold-rank diagnostic to the runs of an earlier results JSON (their
checkpoints must still be under its --storage), rewrites it (or writes --out) and prints its tables again.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import meta, parser, write  # noqa: E402
from genrec.checkpoint import load_checkpoint  # noqa: E402
from genrec.config import TaskConfig, load_config  # noqa: E402
from genrec.runs import read_history  # noqa: E402
from genrec.preparation import prepare_shards  # noqa: E402
from genrec.ray_session import init_ray  # noqa: E402
from genrec.selection import best_record  # noqa: E402
from genrec.shards import open_shards  # noqa: E402
from genrec.tasks import build_plan, context_batches  # noqa: E402
from genrec.train import fit  # noqa: E402

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
# The tables' columns: (header, row key, digits); a row without the key leaves its cell empty.
MASKING_COLUMNS = [("MRR cold", "mrr_cold", 4), ("NDCG@10 cold", "ndcg@10_cold", 4),
                   ("cold target rank pct", "cold_target_pct", 2), ("all cold titles rank pct", "cold_titles_pct", 2),
                   ("MRR next", "mrr", 4)]
MTP_COLUMNS = [("MRR fresh (0 h)", "mrr_B", 4), ("MRR 24 h stale", "mrr_B_24h", 4), ("MRR 48 h stale", "mrr_B_48h", 4)]


def cold_rank_diagnostic(run_dir: Path, shards_root: Path) -> dict:
    """Where the model puts cold-start titles, from the run's last kept checkpoint (plain torch, no Ray).

    MRR barely separates a title ranked 250th from one ranked 390th of 400, so this also reports percentiles
    (0 = top of the catalogue, 0.5 = a random ranking, 1 = bottom) of the cold-start target and of all cold-start
    titles, over the evaluation users that have a cold-start target. The trainer keeps the 2 checkpoints with the
    best selection figure (eval.select_metric), so the last kept one is not always the final epoch, nor always the
    kept epoch whose metrics are reported: its epoch is reported beside it."""
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


def mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else math.nan)


def stat(key: str, xs: list[float]) -> dict:
    """{key: mean, key_spread: sample std (NaN for one value)} over the values that are not NaN."""
    m, s = mean_std(xs)
    return {key: m, key + "_spread": s}


def summarise(dataset: str, runs: dict, seeds: list[int], experiments: list[str]) -> tuple[dict, list[dict]]:
    """runs[variant][seed] = kept-epoch metrics -> (summary dict, the table's rows of this dataset)."""
    summary, rows = {}, []
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
        diff_pct = [a.get("cold_target_pct", math.nan) - b.get("cold_target_pct", math.nan) for a, b in zip(on, off)]
        for variant, rs in (("on", on), ("off", off)):
            row = {"dataset": dataset, "experiment": "masking", "variant": variant,
                   "id_mask_rate": rs[0].get("id_mask_rate"), "seeds": n}
            for _, key, _ in MASKING_COLUMNS:
                row |= stat(key, [r.get(key, math.nan) for r in rs])
            rows.append(row)
        rows.append({"dataset": dataset, "experiment": "masking", "variant": "on − off (paired)", "seeds": n,
                     **stat("mrr_cold", diff_cold), **stat("cold_target_pct", diff_pct), **stat("mrr", diff_next)})
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
        for variant, rs in (("k = 1", k1), ("k = 5", k5)):
            row = {"dataset": dataset, "experiment": "mtp", "variant": variant, "seeds": n}
            for k in keys:
                row |= stat(k, [r[k] for r in rs])
            rows.append(row)
        row = {"dataset": dataset, "experiment": "mtp", "variant": "k5 − k1 (paired)", "seeds": n}
        for k in keys:
            row |= stat(k, diffs[k])
        rows.append(row)
    return summary, rows


def pm(row: dict, key: str, digits: int) -> str:
    """A row's mean ± spread (the mean alone where there is no spread; empty where the row has no such figure)."""
    if key not in row:
        return ""
    m, s = row[key], row.get(key + "_spread", math.nan)
    m = math.nan if m is None else m
    return f"{m:.{digits}f} ± {s:.{digits}f}" if s is not None and not math.isnan(s) else f"{m:.{digits}f}"


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def dataset_header(dataset: str, cutoff: float, counts: dict) -> str:
    return (f"### {dataset} (cutoff_quantile {cutoff}; {counts['train_users']} training users, "
            f"{counts['train_events']} training events, {counts['eval_users']} evaluation users, "
            f"{counts['cold_start_items']} cold-start titles, cold-start share of evaluation events "
            f"{counts['cold_start_eval_share']:.3f})\n")


def table(results: dict) -> str:
    """The Markdown of BENCHMARKS.md from the stored results alone: per dataset, its shards' counts and one table per
    experiment; then the run's settings (and its whole wall time once every dataset is done)."""
    parts = []
    for dataset, res in results["datasets"].items():
        rows = [r for r in results["rows"] if r["dataset"] == dataset]
        summary = res.get("summary", {})
        md = []
        masking = [r for r in rows if r["experiment"] == "masking"]
        if masking:
            s = summary.get("masking", {})
            per_seed = s.get("paired_diff_mrr_cold", {}).get("per_seed", [])
            label = {"on": lambda r: f"on (auto = {r['id_mask_rate']:.3f})", "off": lambda r: "off (0)"}
            cells = [[label.get(r["variant"], lambda r: r["variant"])(r), r["seeds"]] +
                     [pm(r, key, digits) for _, key, digits in MASKING_COLUMNS] for r in masking]
            md.append(f"**{dataset}: collaborative-embedding masking** ({s.get('requests_cold')} requests "
                      f"with a cold-start target, {s.get('requests')} with a next-event target; per-seed "
                      f"mrr_cold differences on − off: {', '.join(f'{d:+.4f}' for d in per_seed)})\n")
            md.append(md_table(["masking", "seeds"] + [h for h, _, _ in MASKING_COLUMNS], cells))
            md.append("\n(rank pct: 0 = top of the catalogue, 0.5 = random, 1 = bottom; from the last kept checkpoint)")
        mtp = [r for r in rows if r["experiment"] == "mtp"]
        if mtp:
            requests = summary.get("mtp", {}).get("requests", {}).get("mrr_B")
            cells = [[r["variant"], r["seeds"]] + [pm(r, key, digits) for _, key, digits in MTP_COLUMNS] for r in mtp]
            md.append(f"\n**{dataset}: multi-token prediction** ({requests} requests; the same next new title "
                      f"of each, scored from a fresh context and from one 24 h / 48 h stale)\n")
            md.append(md_table(["MTP", "seeds"] + [h for h, _, _ in MTP_COLUMNS], cells))
        parts.append(dataset_header(dataset, res["cutoff_quantile"], res["counts"]) + "\n" + "\n".join(md))
    a = results.get("args")
    total = results.get("total_wall_s")
    if a:
        parts.append(f"{a['preset']}, max_seq_len {a['max_seq_len']}, {a['epochs']} epochs, seeds {a['seeds']}"
                     + (f"; total {total:.0f} s" if total is not None else "; unfinished"))
    return "\n\n".join(parts)


def rediagnose(path: Path, out: str | None) -> None:
    """Add the cold-rank diagnostic to the runs of an existing results JSON (their checkpoints must still be under
    its --storage), write it again (in place, or to `out`) and print the tables again.

    Reads the harness's {"meta", "results"} layout and the earlier one (the results alone, at the top); writes the
    harness's. The run's meta is kept (command, machine, date and commit of the training), with the rediagnosis's
    command, date and commit beside it under "rediagnosed"."""
    doc = json.loads(path.read_text())
    layout = "meta" in doc and "results" in doc
    results = doc["results"] if layout else doc
    args = results["args"]
    storage = Path(args["storage"])
    experiments = [e.strip() for e in args["experiments"].split(",") if e.strip()]
    seeds = [int(s) for s in args["seeds"].split(",") if s.strip()]
    rows = []
    for dataset, res in results["datasets"].items():
        for name in res["histories"]:
            m = re.fullmatch(rf"quality-{re.escape(dataset)}-(\w+?)-s(\d+)-[\d-]+", name)
            if not m:
                continue
            diag = cold_rank_diagnostic(storage / "runs" / name, storage / "shards" / f"quality-{dataset}")
            add_diagnostic(res["final"][m.group(1)][m.group(2)], diag)
        runs = {v: {int(s): r for s, r in byseed.items()} for v, byseed in res["final"].items()}
        res["summary"], dataset_rows = summarise(dataset, runs, seeds, experiments)
        rows += dataset_rows
    results["rows"] = rows
    now = meta()
    extra = (doc["meta"] if layout else {}) | {"rediagnosed": {k: now[k] for k in ("command", "date", "commit")}}
    write("quality", results, out or path, extra=extra)
    print(table(results))


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--config", default=str(REPO / "configs/local.yaml"))
    p.add_argument("--dataset", choices=["synthetic", "ml-latest-small", "both"], default="both")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values (default 0,1,2)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--preset", default="2m")
    p.add_argument("--max-seq-len", type=int, default=64)
    p.add_argument("--experiments", default="masking,mtp", help="comma-separated: masking, mtp")
    p.add_argument("--synthetic-cutoff", type=float, default=0.8,
                   help="data.cutoff_quantile for synthetic (default 0.8: the config's 0.9 leaves too few titles "
                        "launching after the cutoff to measure cold start)")
    p.add_argument("--movielens-cutoff", type=float, default=0.6,
                   help="data.cutoff_quantile for ml-latest-small (default 0.6: the most evaluation users)")
    p.add_argument("--valid-window", type=float, default=0.1,
                   help="the validation window, as a share of events just before the cutoff "
                        "(data.valid_quantile = cutoff minus this)")
    p.add_argument("--storage", default=str(REPO / "benchmarks/work/quality"))
    p.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE config override")
    p.add_argument("--rediagnose", metavar="RESULTS_JSON", default=None,
                   help="train nothing: add the cold-rank diagnostic to an earlier results JSON, rewrite it in place "
                        "(or write --out) and reprint its tables")
    args = p.parse_args(argv)
    if args.rediagnose:
        rediagnose(Path(args.rediagnose), args.out)
        return 0

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    experiments = [e.strip() for e in args.experiments.split(",") if e.strip()]
    bad = [e for e in experiments if e not in NEEDS]
    if bad:
        p.error(f"unknown experiments {bad}; expected masking and/or mtp")
    variants = [v for v in VARIANTS if any(v in NEEDS[e] for e in experiments)]
    datasets = list(DATASETS) if args.dataset == "both" else [args.dataset]
    stamp = time.strftime("%Y%m%d-%H%M%S")

    results = {"args": vars(args), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": [],
               "datasets": {}}
    out = args.out  # the first write picks the file (--out or a timestamped one); later writes replace it
    t_all = time.perf_counter()
    for dataset in datasets:
        cutoff = args.synthetic_cutoff if dataset == "synthetic" else args.movielens_cutoff
        base = [f"storage.root={args.storage}", f"name=quality-{dataset}", *DATASETS[dataset],
                f"data.cutoff_quantile={cutoff}", f"data.valid_quantile={round(cutoff - args.valid_window, 6)}",
                f"model.preset={args.preset}",
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
        summary, rows = summarise(dataset, runs, seeds, experiments)
        results["rows"] += rows
        results["datasets"][dataset] = {"cutoff_quantile": cutoff, "counts": counts, "summary": summary,
                                        "final": {v: {str(s): m for s, m in r.items()} for v, r in runs.items()},
                                        "histories": histories, "run_wall_s": walls}
        out = write("quality", results, out)  # partial results survive a later failure
    results["total_wall_s"] = time.perf_counter() - t_all
    write("quality", results, out)
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
