"""The leaderboard: popularity, a plain SASRec and genrec, side by side in one invocation on one machine.

    .venv/bin/python benchmarks/leaderboard.py [--datasets ml-100k ml-latest-small] [--seeds 0 1 2]
        [--models popularity sasrec genrec-defaults genrec-recipe genrec-hstu genrec-hstu-4l genrec-exclude-history
                  genrec-average]
        [--out results.json]
    .venv/bin/python benchmarks/leaderboard.py --table results.json   # the Markdown table of a stored run

Protocol (../shared/notes/baselines.md): leave-one-out (per user, the last event is the test target, the one before
the validation target), every title ranked, the titles in the user's context excluded, ties at their mean rank. Every
model is chosen on validation only (epochs, early stopping); the test split is read once per trained model, and
every model's test users are ranked by one evaluator (plain_sasrec.rank_users), so the figures are comparable.

* popularity: the titles most often in training rows, the user's own excluded;
* sasrec: benchmarks/plain_sasrec.py (one process, no Ray), early stopping on validation NDCG@10 (patience 20),
  within the same training-time cap as the data set's genrec recipe (its `train.time_budget_s`);
* genrec-defaults: `genrec train` with no flag but the data (configs/local.yaml's defaults, leave-one-out);
* genrec-recipe: the data set's recipe found by search (configs/recipe-<dataset>.yaml);
* genrec-hstu: the recipe with `model.block: hstu`;
* genrec-hstu-4l: the recipe with the HSTU block at 4 layers and dropout 0.5, the best of the HSTU ablation on
  validation (BENCHMARKS.md; picked from five variants on seed 0, not searched);
* genrec-exclude-history: the recipe with `model.exclude_history: true` (the context's titles left out of the
  training softmax), the best variant of the ablation on seed 0's validation split (BENCHMARKS.md);
* genrec-average: genrec-exclude-history keeping an exponential moving average of its weights (`train.ema_decay:
  0.99`, about the last hundred steps), which it validates, keeps and is tested with (BENCHMARKS.md: on seed 0's
  validation split the average's plateau was 3.5% higher and three times steadier than the trained weights');
* recbole-sasrec (ML-100K only: RecBole's bundled copy is the same data): RecBole 1.2.1's SASRec in its own venv
  (benchmarks/recbole_peer.py; its defaults, CE over every title, batch 256, length 200 as the plain SASRec's),
  early-stopped by RecBole on validation NDCG@10 (20 validations without a gain) within the same time cap. Its best
  model's scores of every test user are ranked here by the same evaluator as every other row (RecBole's own
  evaluation masks no history for sequential models); the users whose test target differs between RecBole's split
  and genrec's (same-second events ordered differently) are counted and said.

genrec runs its real path: shards -> Ray Data -> Ray Train -> DeepSpeed, on an embedded local Ray. Reported per model:
HR@10, NDCG@10, MRR (mean and spread over seeds), the wall time to the selected checkpoint, training events/s, and
the wall time a genrec run took to reach the plain SASRec's best validation NDCG@10 (on validation: the test split is
not read per epoch). The paired bootstrap draws users with replacement (each user's NDCG@10 averaged over the seeds,
the same users for both models) and gives a 95% interval of genrec minus the plain SASRec.

ML-100K comes from the `recbole` 1.2.1 wheel (`genrec data download ml-100k --dest data`, done here when missing);
ml-latest-small from ../shared/data. Neither is committed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import REPO, mean_spread, parser, write  # noqa: E402
from benchmarks.plain_sasrec import LooData, loo_data, metrics, rank_users, train_plain  # noqa: E402

WORK = REPO / "benchmarks" / "work" / "leaderboard"
DATA = {"ml-100k": ("recbole", None), "ml-latest-small": ("movielens", REPO.parent / "shared/data/ml-latest-small")}
MODELS = ["popularity", "sasrec", "genrec-defaults", "genrec-recipe", "genrec-hstu", "genrec-hstu-4l",
          "genrec-exclude-history", "genrec-average", "recbole-sasrec"]
# What a genrec row changes in its data set's recipe.
RECIPE_CHANGES = {"genrec-recipe": [], "genrec-hstu": ["model.block=hstu"],
                  "genrec-hstu-4l": ["model.block=hstu", "model.layers=4", "model.dropout=0.5"],
                  "genrec-exclude-history": ["model.exclude_history=true"],
                  "genrec-average": ["model.exclude_history=true", "train.ema_decay=0.99"]}
BOOTSTRAP = 2000


def ml100k() -> Path:
    """RecBole's ML-100K atomic files under data/ (`genrec data download ml-100k`: from the recbole wheel)."""
    from genrec.data.loaders import download_recbole_ml100k

    return download_recbole_ml100k(REPO / "data")


def data_path(name: str) -> tuple[str, Path]:
    source, path = DATA[name]
    return source, (ml100k() if name == "ml-100k" else path)


def genrec_overrides(name: str, model: str) -> tuple[str | None, list[str]]:
    """(config file, flags) of a genrec row."""
    if model == "genrec-defaults":
        return None, []
    recipe = REPO / "configs" / f"recipe-{name}.yaml"
    if not recipe.is_file():
        raise SystemExit(f"{recipe}: no recipe for {name}; run its search first (docs in BENCHMARKS.md)")
    return str(recipe), RECIPE_CHANGES[model]


def run_genrec(name: str, model: str, seed: int, data: LooData) -> dict:
    """Train through genrec's real path, then rank the test users with the kept checkpoint."""
    from genrec.checkpoint import load_checkpoint
    from genrec.config import load_config
    from genrec.console import console
    from genrec.runs import read_history
    from trainers.pretrain import run

    source, path = data_path(name)
    config, extra = genrec_overrides(name, model)
    storage = WORK / "runs"
    cfg = load_config(config, [f"data.source={source}", f"data.path={path}", "data.split=leave_one_out",
                               f"name={name}-loo", f"storage.root={storage}", f"train.seed={seed}",
                               "tracking.wandb=disabled", *extra])
    run_name = f"{name}-{model}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    t0 = time.perf_counter()
    with console():  # as `genrec train` runs: Ray's and the workers' lines to the run's log, progress only on a tty
        run(cfg, run_name)
    wall = time.perf_counter() - t0
    store = cfg.storage.store()
    selected = json.loads(store.read_text(store.path("runs", run_name, "selected.json")))
    history = read_history(cfg, run_name)
    kept = next(h for h in history if h["epoch"] == selected["epoch"])
    loaded = load_checkpoint(selected["checkpoint"])
    return {"ranks": rank_checkpoint(loaded, data), "valid_ndcg@10": selected["valid"]["ndcg@10"],
            "genrec_test": selected["test"], "wall_s": wall, "wall_to_best_s": kept["wall_time_s"],
            "events_per_s": float(np.mean([h["events_per_s"] for h in history])), "epochs": len(history),
            "best_epoch": selected["epoch"], "curve": [(h["wall_time_s"], h["valid_ndcg@10"]) for h in history]}


def rank_checkpoint(loaded, data: LooData) -> np.ndarray:
    """The benchmark's evaluator over a genrec checkpoint: each test user's context as the app would send it."""
    import pyarrow.parquet as pq

    from genrec.windows import context_window

    model, spec = loaded.model.eval(), loaded.spec
    table = pq.read_table(data.test_files).sort_by("user_id")
    rows = {u: (i, t, a, w, tt[0]) for u, i, t, a, w, tt in zip(
        table.column("user_id").to_pylist(), table.column("items").to_pylist(), table.column("ts").to_pylist(),
        table.column("actions").to_pylist(), table.column("utils").to_pylist(), table.column("target_ts").to_pylist())}
    position = {id(c): u for c, u in zip(data.test_ctx, data.users)}
    matrix = model.item_matrix()

    def score(contexts):
        users = [position[id(c)] for c in contexts]
        win = [context_window(rows[u][0], rows[u][1], rows[u][2], spec.max_seq_len, rows[u][3]) for u in users]
        it, ac, gp, ut, ts, n = (torch.from_numpy(np.stack([w[j] for w in win])) for j in range(6))
        request = torch.tensor([rows[u][4] for u in users])
        return model.score_last(it, ac, gp, ut, n, matrix, request, ts)

    return rank_users(score, data.test_ctx, data.test_target, data.num_items)


def run_popularity(data: LooData) -> dict:
    counts = np.bincount(np.concatenate(data.train), minlength=data.num_items + 1).astype(float)
    ranks = rank_users(lambda ctx: torch.from_numpy(np.tile(counts, (len(ctx), 1))), data.test_ctx,
                       data.test_target, data.num_items)
    return {"ranks": ranks, "wall_s": 0.0}


def recipe_time_cap(name: str) -> float:
    """The training-time cap of the data set's genrec recipe: the plain SASRec gets the same, so neither row
    trains longer than the other may."""
    from genrec.config import load_config

    recipe = REPO / "configs" / f"recipe-{name}.yaml"
    return load_config(str(recipe)).train.time_budget_s if recipe.is_file() else 1e9


def run_sasrec(data: LooData, seed: int, max_seconds: float) -> dict:
    out = train_plain(data, seed, max_seconds=max_seconds, log=lambda *_: None)
    return {"ranks": rank_users(out["score"], data.test_ctx, data.test_target, data.num_items),
            "valid_ndcg@10": out["valid_ndcg@10"], "wall_s": out["wall_s"], "wall_to_best_s": out["wall_to_best_s"],
            "events_per_s": out["events_per_s"], "epochs": out["epochs"], "best_epoch": out["best_epoch"],
            "time_cap_s": max_seconds, "curve": [(c["wall_s"], c["valid_ndcg@10"]) for c in out["curve"]]}


def peer_ranks(peer, data: LooData, items_path: str) -> tuple[np.ndarray, int]:
    """(each test user's rank of their target, ranked by this benchmark's evaluator from a peer's scores; the users
    whose test target is the same in the peer's split). `peer`: users, targets and items as the data's own ids (a
    peer's tokens), and scores (users x items)."""
    items = pq.read_table(items_path, columns=["item_id", "index"])
    index_of = dict(zip(map(str, items.column("item_id").to_pylist()), items.column("index").to_pylist()))
    columns = np.asarray([index_of.get(str(token), 0) for token in peer["items"]])  # 0: the peer's padding
    matrix = np.full((len(peer["users"]), data.num_items + 1), -np.inf, np.float32)
    matrix[:, columns[columns > 0]] = peer["scores"][:, columns > 0]
    row_of = {str(token): k for k, token in enumerate(peer["users"])}
    rows = np.asarray([row_of[str(u)] for u in data.users])
    agree = int(sum(index_of.get(str(t)) == target for t, target in zip(peer["targets"][rows], data.test_target)))
    position = {id(c): k for k, c in enumerate(data.test_ctx)}
    ranks = rank_users(lambda ctx: torch.from_numpy(matrix[rows[[position[id(c)] for c in ctx]]]), data.test_ctx,
                       data.test_target, data.num_items)
    return ranks, agree


def run_recbole_sasrec(name: str, seed: int, data: LooData, items_path: str, max_seconds: float) -> dict:
    """RecBole's SASRec trained in its own venv; its test scores ranked by this benchmark's evaluator."""
    if name != "ml-100k":
        raise SystemExit(f"recbole-sasrec: RecBole's bundled data is ML-100K; leave it out of --models for {name}")
    work = WORK / "recbole"
    work.mkdir(parents=True, exist_ok=True)
    result, scores_file = work / f"result-s{seed}.json", work / f"scores-s{seed}.npz"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "recbole_peer.py"), "--epochs", "400", "--max-len",
                    "200", "--stopping-step", "20", "--max-seconds", str(max_seconds), "--seed", str(seed),
                    "--scores-file", str(scores_file), "--out", str(result)], check=True)
    rb = json.loads(result.read_text())
    ranks, agree = peer_ranks(np.load(scores_file), data, items_path)
    best = max(rb["history"], key=lambda h: h["valid_ndcg@10"])
    return {"ranks": ranks, "wall_s": rb["wall_s"], "wall_to_best_s": best["elapsed_s"],
            "events_per_s": rb["samples_per_s"], "epochs": rb["epochs"], "best_epoch": best["epoch"],
            "recbole_valid_ndcg@10": rb["best_valid_ndcg@10"], "recbole_test": {k: rb[f"test_{k}"] for k in (
                "hr@10", "ndcg@10", "mrr@10")}, "targets_agree": agree, "time_cap_s": max_seconds}


def user_ndcg(ranks: np.ndarray) -> np.ndarray:
    return np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = BOOTSTRAP, seed: int = 0) -> dict:
    """Mean of a - b (per-user values, the same users) and its 95% percentile interval over users drawn with
    replacement; relative to b's mean too."""
    diff = a - b
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(diff), (resamples, len(diff)))
    means = diff[draws].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diff.mean()), "lo": float(lo), "hi": float(hi), "relative": float(diff.mean() / b.mean())}


def time_to_reach(curve: list, target: float) -> float | None:
    """Wall seconds until a run's validation NDCG@10 first reached `target` (None: never)."""
    return next((t for t, v in curve if v is not None and v >= target), None)


def summarize(name: str, runs: dict[str, list[dict]]) -> list[dict]:
    rows = []
    base = runs.get("sasrec")
    target = np.mean([r["valid_ndcg@10"] for r in base]) if base else None
    for model, seeds in runs.items():
        per_seed = [metrics(r["ranks"]) for r in seeds]
        row = {"dataset": name, "model": model, "seeds": len(seeds)}
        for m in ("hr@10", "ndcg@10", "mrr"):
            row[m], row[m + "_spread"] = mean_spread([p[m] for p in per_seed])
        for k in ("wall_to_best_s", "events_per_s", "valid_ndcg@10", "best_epoch"):
            if all(k in r for r in seeds):
                row[k] = float(np.mean([r[k] for r in seeds]))
        if base and model != "sasrec":
            mine = np.mean([user_ndcg(r["ranks"]) for r in seeds], axis=0)
            theirs = np.mean([user_ndcg(r["ranks"]) for r in base], axis=0)
            row["vs_sasrec"] = paired_bootstrap(mine, theirs)
            if all("curve" in r for r in seeds):
                reach = [time_to_reach(r["curve"], target) for r in seeds]
                row["time_to_sasrec_valid_s"] = None if None in reach else float(np.mean(reach))
        rows.append(row)
    return rows


def table(results: dict) -> str:
    """The Markdown table of a stored run (BENCHMARKS.md and the README)."""
    return rows_table(results["rows"])


def rows_table(rows: list[dict]) -> str:
    """The leaderboard's rows as a Markdown table: mean ± spread over seeds (the mean alone for one seed)."""
    def ms(r, m):
        return f"{r[m]:.4f}" + (f" ± {r[m + '_spread']:.4f}" if r["seeds"] > 1 else "")

    out = ["| data | model | seeds | HR@10 | NDCG@10 | MRR | genrec − SASRec NDCG@10 (95% CI) | to selected ckpt | "
           "events/s | to SASRec's valid NDCG@10 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vs = r.get("vs_sasrec")
        vs_s = (f"{vs['mean']:+.4f} [{vs['lo']:+.4f}, {vs['hi']:+.4f}] ({vs['relative']:+.1%})" if vs else "")
        to_best = f"{r['wall_to_best_s']:,.0f} s" if "wall_to_best_s" in r else ""
        rate = f"{r['events_per_s']:,.0f}" if "events_per_s" in r else ""
        reach = r.get("time_to_sasrec_valid_s")
        reach_s = ("" if r["model"] in ("popularity", "sasrec") or "time_to_sasrec_valid_s" not in r else
                   "never" if reach is None else f"{reach:,.0f} s")
        out.append(f"| {r['dataset']} | {r['model']} | {r['seeds']} | {ms(r, 'hr@10')} | {ms(r, 'ndcg@10')} | "
                   f"{ms(r, 'mrr')} | {vs_s} | {to_best} | {rate} | {reach_s} |")
    return "\n".join(out)


def merge_runs(stored: list[dict]) -> dict:
    """The per-dataset, per-model runs of several stored results, pooled; popularity (seedless) is kept once."""
    pooled: dict[str, dict[str, list[dict]]] = {}
    for runs in stored:
        for name, models in runs.items():
            for model, rs in models.items():
                have = pooled.setdefault(name, {}).setdefault(model, [])
                if model == "popularity" and have:
                    continue
                seen = {r.get("seed") for r in have}
                if any(r.get("seed") in seen for r in rs):
                    raise SystemExit(f"{name} {model}: seed {sorted(seen)} stored twice among the merged results")
                have.extend(rs)
    return pooled


def jsonable(runs: dict[str, list[dict]]) -> dict:
    """A data set's runs as stored: every user's ranks as a list."""
    return {m: [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in rs]
            for m, rs in runs.items()}


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--datasets", nargs="+", default=list(DATA), choices=list(DATA))
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--table", default=None, help="print the table of a stored results JSON and exit")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="pool the runs of stored results (e.g. one invocation per seed, each running every model "
                        "side by side) into one table and results JSON, then exit")
    args = p.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())["results"]))
        return 0
    if args.merge:
        raw = merge_runs([json.loads(Path(f).read_text())["results"]["runs"] for f in args.merge])
        rows = [row for name, runs in raw.items() for row in summarize(name, {
            m: [{k: (np.asarray(v) if k == "ranks" else v) for k, v in r.items()} for r in rs] for m, rs in runs.items()})]
        write("leaderboard", {"rows": rows, "runs": raw, "merged": [str(f) for f in args.merge]}, args.out)
        print(rows_table(rows))
        return 0
    from genrec.config import load_config
    from genrec.preparation import prepare_shards

    all_rows, raw = [], {}
    for name in args.datasets:
        source, path = data_path(name)
        cfg = load_config(None, [f"data.source={source}", f"data.path={path}", "data.split=leave_one_out",
                                 f"name={name}-loo", f"storage.root={WORK / 'runs'}"])
        shards = prepare_shards(cfg)
        data = loo_data(shards)
        runs: dict[str, list[dict]] = {}
        for model in args.models:
            for seed in ([0] if model == "popularity" else args.seeds):
                print(f"== {name}: {model}, seed {seed}", flush=True)
                if model == "popularity":
                    out = run_popularity(data)
                elif model == "sasrec":
                    out = run_sasrec(data, seed, recipe_time_cap(name))
                elif model == "recbole-sasrec":
                    out = run_recbole_sasrec(name, seed, data, shards.items_path, recipe_time_cap(name))
                    print(f"   test targets equal to RecBole's split for {out['targets_agree']} of {len(data.users)} "
                          f"users; RecBole's own evaluator (no history masked): {out['recbole_test']}", flush=True)
                else:
                    out = run_genrec(name, model, seed, data)
                runs.setdefault(model, []).append(out | {"seed": seed})
                print(f"   test {metrics(out['ranks'])}"
                      + (f" (genrec's own evaluator: {out['genrec_test']['ndcg@10']:.4f} NDCG@10)"
                         if "genrec_test" in out else ""), flush=True)
                # Each finished run is kept at once: a long invocation stopped later loses only the run under way.
                write("leaderboard", {"rows": all_rows + summarize(name, runs), "partial": True,
                                      "runs": raw | {name: jsonable(runs)}}, args.out)
        rows = summarize(name, runs)
        all_rows += rows
        raw[name] = jsonable(runs)
        print(rows_table(rows), flush=True)
    write("leaderboard", {"rows": all_rows, "runs": raw}, args.out)
    print(rows_table(all_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
