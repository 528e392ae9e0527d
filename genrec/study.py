"""From a Tune experiment to the answers: scaling fits per task, retrain cost vs stability, gains vs headroom.

`load_experiment(DIR)` reads what Tune wrote for a `tuning.sweep` run (one folder per trial: `params.json`, the
trial's `genrec_run.json` naming its genrec run, `error.txt` when it failed) and each run's per-epoch history and
top-k lists. `analyse(...)` turns the trials into the report's tables with the pure functions of `genrec.analysis`:

* every figure is read at the epoch a run keeps (genrec.selection: the highest validation figure of
  `eval.select_metric`), and is a **validation** figure: the test split is read once, for the sweep's winner only
  (its manifest); cost is what a retrain spent up to that epoch;
* scaling fits and the gain from the smallest to the largest size use the retrains trained up to the cutoff
  (window shift 0; every seed is one observation), or, in a sweep of one seed, every window's retrains on the
  validation requests they share (`compared_retrains`);
* stability uses every retrain of a (preset, max_seq_len) cell: seeds and shifted training windows alike.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from genrec.console import say
from genrec.analysis import (bootstrap_power_law, compute_optimal, fit_cost, fit_log_linear, fit_offset_power_law,
                             mean_pairwise_overlap, relative_gain, spearman_with_interval)
from genrec.config import ConfigError, GenrecConfig, stored_config
from genrec.data.synthetic import Oracle, simulate
from genrec.report import write_report
from genrec.selection import SHARED, VALID, best_record, selection_key
from genrec.shards import ShardError, open_shards
from genrec.storage import Store, is_uri, local_store

RUN_FILE = "genrec_run.json"  # in each Tune trial folder: which genrec run (history, top-k lists) the trial is


@dataclass
class Trial:
    preset: str
    max_seq_len: int
    seed: int
    window_shift_h: float
    status: str
    error: str | None
    history: list[dict]
    run: str | None = None
    topk_path: str | None = None
    folder: str = ""
    select: str = "valid_ndcg@10"  # the history key the run's kept epoch was chosen by
    warm: bool = False  # started from the previous window's retrain (tune.warm_start), not from scratch
    spans: list[tuple[float, float]] = field(default_factory=list)  # Unix seconds: when it ran (tune_spans)

    @property
    def final(self) -> dict:
        """The record of the epoch the run keeps (its validation figures, its cost so far)."""
        return best_record(self.history, self.select) or (self.history[-1] if self.history else {})

    @property
    def spent(self) -> dict:
        """The record of the run's last epoch: its whole cost, the epochs after the kept one (patience) included."""
        return self.history[-1] if self.history else {}

    @property
    def params(self) -> float:
        return float(self.final.get("backbone_params", math.nan))


@dataclass
class Experiment:
    path: Path
    config: GenrecConfig
    shards: str
    trials: list[Trial] = field(default_factory=list)

    @property
    def ok(self) -> list[Trial]:
        """The finished retrains from scratch: what the fits, gains and the cost-stability question read."""
        return [t for t in self.trials if t.status == "ok" and not t.warm]

    @property
    def warm(self) -> list[Trial]:
        """The finished warm-started retrains (tune.warm_start), compared with the ones from scratch."""
        return [t for t in self.trials if t.status == "ok" and t.warm]


def load_experiment(path: str | Path) -> Experiment:
    """Read a Tune experiment folder written by `tuning.sweep` (storage/tune/<sweep>)."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: no such folder; pass a sweep's results folder (storage.root/tune/<sweep>)")
    # A warm-started sweep keeps each window's warm retrains in a Tune experiment of its own inside (warm-w<shift>).
    levels = [path] + sorted(d for d in path.iterdir() if d.is_dir() and d.name.startswith("warm-w"))
    folders = sorted(d for level in levels for d in level.iterdir() if (d / "params.json").is_file())
    if not folders:
        raise ConfigError(f"{path}: no Tune trial folders (with params.json) in it; pass a sweep's results folder "
                          "(storage.root/tune/<sweep>, printed by `genrec sweep`)")
    trials, base, shards, store = [], None, None, None
    for d in folders:
        params = json.loads((d / "params.json").read_text())
        params |= params.get("link") or {}  # a warm level's trial: its cell, seed, window and predecessor
        base, shards = base or params.get("base"), shards or params.get("shards")
        if store is None and base:  # histories and top-k lists live under the sweep's storage (local or a URI)
            store = stored_config(base).storage.store()
        run = json.loads((d / RUN_FILE).read_text()) if (d / RUN_FILE).is_file() else {}
        reports = tune_reports(d)  # what Tune received: the trial's periods, and its history when the run's is gone
        history = reports
        if run.get("history") and store is not None and store.is_file(run["history"]):
            history = json.loads(store.read_text(run["history"]))
        error = (d / "error.txt").read_text().strip() if (d / "error.txt").is_file() else None
        spans = tune_spans(reports)
        status = "ok" if history and not error else "failed"
        want = params.get("epochs") or (params.get("base") or base or {}).get("train", {}).get("epochs")
        search = ((params.get("base") or base or {}).get("tune") or {}).get("search", "grid") != "grid"
        if status == "ok" and want and history[-1].get("epoch", 0) < want and not history[-1].get("end") \
                and not search:  # a search's scheduler (ASHA) stops trials early by design
            # Stopped with no error and not by early stopping or its budget (a killed driver): not a finished retrain.
            status, error = "incomplete", f"stopped after epoch {history[-1].get('epoch')} of {want}"
        select = selection_key(stored_config(params.get("base") or base).eval.select_metric)
        # "auto" sizes are resolved by each trial from the data: its run file says what it trained
        length = run.get("max_seq_len", params["max_seq_len"])
        trials.append(Trial(run.get("preset", params["preset"]), int(length) if length != "auto" else 0,
                            int(params.get("seed", 0)),
                            float(params.get("window_shift_h", 0.0)), status,
                            error or (None if history else "no metrics reported"), history, run.get("run"),
                            run.get("topk"), d.name, select, bool(params.get("init_from")), spans))
    if base is None:
        raise ConfigError(f"{path}: the trials' params.json hold no 'base' config; not a genrec sweep")
    return Experiment(path, stored_config(base), shards, trials)


RESUME_GAP_S = 60.0  # more wall time than run time between two reports: the trial was stopped and resumed there


def tune_reports(trial_dir: Path) -> list[dict]:
    """Every report Tune received from a trial (its folder's result.json, one JSON object a line); empty without."""
    result_file = trial_dir / "result.json"
    if not result_file.is_file():
        return []
    return [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]


def tune_spans(reports: list[dict]) -> list[tuple[float, float]]:
    """When a trial ran, as (start, end) Unix seconds, from its Tune reports (`tune_reports`: each report's
    `timestamp` and `time_total_s`, the seconds it had run). A new period starts where the wall clock moved more than
    RESUME_GAP_S beyond the run time between two reports (a stop and `--resume`); empty without a timed report."""
    rows = [r for r in reports if isinstance(r.get("timestamp"), (int, float))
            and isinstance(r.get("time_total_s"), (int, float))]
    if not rows:
        return []
    spans = [[rows[0]["timestamp"] - rows[0]["time_total_s"], rows[0]["timestamp"]]]
    for prev, row in zip(rows, rows[1:]):
        # Tune carries the run time over a restore; a trial rerun from its start counts from 0 again
        ran = row["time_total_s"] - prev["time_total_s"]
        ran = ran if ran >= 0 else row["time_total_s"]
        if row["timestamp"] - prev["timestamp"] > ran + RESUME_GAP_S:
            spans.append([row["timestamp"] - ran, row["timestamp"]])
        else:
            spans[-1][1] = row["timestamp"]
    return [(float(a), float(b)) for a, b in spans]


def covered_s(spans: list[tuple[float, float]]) -> float:
    """Seconds of the time line covered by at least one (start, end) span."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def sweep_cost(trials: list[Trial]) -> dict:
    """What one run of a sweep cost. `wall_s`: the wall time during which a trial was running (Tune's clock; the data
    step before the trials, the report and serving after them, and any time between a stop and `--resume` are not
    in it). `trial_s`: the trials' run times summed (Ray Train start-up, training, validation, checkpoints: what the
    concurrent slots were busy with). `train_s`, `train_flops`: every epoch each run trained (with its validation),
    the patience epochs after its kept one included. Failed and stopped trials count: their time was spent. nan where
    no trial has the figure."""
    spans = [s for t in trials for s in t.spans]
    spent = [t.spent for t in trials]

    def total(key):
        xs = [r[key] for r in spent if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        return float(sum(xs)) if xs else math.nan

    return {"trials": len(trials), "warm": sum(t.warm for t in trials),
            "unfinished": sum(t.status != "ok" for t in trials),
            "wall_s": covered_s(spans) if spans else math.nan,
            "trial_s": float(sum(e - s for s, e in spans)) if spans else math.nan,
            "train_s": total("wall_time_s"), "train_flops": total("train_flops")}


def read_topk(path: str | None, store=None) -> dict:
    """(user_id, request ts) -> top-k item indices, from a run's topk.parquet (empty when missing); `path` is in
    `store`'s filesystem (default: the local disk)."""
    if store is None:
        store = local_store()
    if not path or not store.is_file(path):
        return {}
    t = pq.read_table(path, filesystem=store.fs).to_pydict()
    return {(u, ts): items for u, ts, items in zip(t["user_id"], t["ts"], t["items"])}


def _metric(task: str, delay: float = 0.0, name: str = "mrr") -> str:
    """A validation figure's history key (valid_mrr_B, valid_mrr_B_24h, ...)."""
    return f"{VALID}{name}_{task}" + ("" if delay == 0 else f"_{delay:g}h")


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(xs)) if xs else math.nan


def _std(xs) -> float:
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else math.nan


def trial_rows(exp: Experiment) -> list[dict]:
    tasks = list(exp.config.eval.tasks)
    rows = []
    for t in exp.trials:
        f = t.final
        row = {"preset": t.preset, "backbone_params": int(f["backbone_params"]) if "backbone_params" in f else None,
               "max_seq_len": t.max_seq_len, "seed": t.seed, "window_shift_h": t.window_shift_h, "warm": t.warm,
               "status": t.status,
               "epochs": f.get("epoch"), "loss": f.get("loss"), "wall_time_s": f.get("wall_time_s"),
               "events_processed": f.get("events_processed"), "train_flops": f.get("train_flops")}
        row |= {_metric(k): f.get(_metric(k)) for k in tasks}
        # The trial's selection figure and popularity's on the same validation requests (the bar beside it).
        row |= {t.select: f.get(t.select), "popularity_" + t.select: f.get("popularity_" + t.select)}
        row["end"] = t.spent.get("end")  # how the run ended: early stopping, its time budget, or its epochs
        if t.status != "ok":
            row["error"] = (t.error or "").splitlines()[-1][:200] if t.error else ""
        rows.append(row)
    rows.sort(key=lambda r: (r["backbone_params"] or 0, r["max_seq_len"], r["window_shift_h"], r["seed"]))
    return rows


def retrain_ends(exp: Experiment) -> list[dict]:
    """Per backbone size, how its retrains from scratch ended: the `end` of each run's last epoch ("early stopping",
    "time budget", "max epochs"; "not recorded" for older runs), and how many epochs each trained. Where the larger
    sizes stop on the time budget and the smaller ones by early stopping, the fits compare sizes at equal training
    time, not at convergence."""
    sizes: dict[tuple, list[Trial]] = {}
    for t in exp.ok:  # a NaN parameter count would not group: inf does, and sorts last
        sizes.setdefault((t.params if math.isfinite(t.params) else math.inf, t.preset), []).append(t)
    return [{"preset": preset, "backbone_params": n, "retrains": len(trials),
             "ends": dict(Counter(t.spent.get("end") or "not recorded" for t in trials)),
             "epochs": sorted(int(t.spent.get("epoch", 0)) for t in trials)}
            for (n, preset), trials in sorted(sizes.items())]


def compared_retrains(exp: Experiment, seq_len: int) -> tuple[list[Trial], str]:
    """The retrains from scratch at one max_seq_len that the fits and gains compare across sizes, and on what basis:
    the fresh ones (trained up to the cutoff), "seeds", when the sweep ran two or more seeds; else every window's,
    "training windows", read on the validation requests they all share (`shared_figure`): a sweep of one seed over
    several windows then still has several retrains a size. Older windows may score a little lower, which widens the
    spread rather than hiding it."""
    fresh = min((t.window_shift_h for t in exp.ok), default=0.0)
    cell = [t for t in exp.ok if t.max_seq_len == seq_len]
    at_fresh = [t for t in cell if t.window_shift_h == fresh]
    # by the sweep's design (its seeds), not by how many fresh retrains happened to finish
    if len({t.seed for t in exp.ok}) < 2 and len(cell) > len(at_fresh):
        return cell, "training windows"
    return at_fresh, "seeds"


def scaling_fits(exp: Experiment, resamples: int, seed: int) -> list[dict]:
    """One offset power-law fit per (task, max_seq_len) over the retrains `compared_retrains` picks, with its
    bootstrap intervals, the log-linear fit beside it, and the measured mean and the headroom P0 - P(N) at each
    size."""
    compared = {seq_len: compared_retrains(exp, seq_len) for seq_len in sorted({t.max_seq_len for t in exp.ok})}
    out = []
    for task in exp.config.eval.tasks:
        for seq_len, (trials, basis) in compared.items():
            obs = [(t.params, shared_figure(t, task)) for t in trials]
            obs = [(n, p) for n, p in obs if p is not None and np.isfinite(p) and np.isfinite(n)]
            n = np.array([o[0] for o in obs])
            p = np.array([o[1] for o in obs])
            row = {"task": task, "max_seq_len": seq_len, "points": len(obs), "sizes": len(set(n.tolist())),
                   "basis": basis,
                   "fit": None, "loglinear": None, "boot": None, "n": n, "p": p, "per_size": []}
            fit = fit_offset_power_law(n, p, p0_max=1.0) if len(obs) else None
            row["loglinear"] = fit_log_linear(n, p) if len(obs) else None
            if fit is not None:
                row["fit"] = fit
                row["boot"] = bootstrap_power_law(n, p, fit, resamples, seed, p0_max=1.0)
            for size in sorted(set(n.tolist())):
                measured = float(p[n == size].mean())
                row["per_size"].append({"n": size, "measured": measured,
                                        "predicted": float(fit.predict(size)) if fit else math.nan,
                                        "headroom": float(fit.headroom(size)) if fit else math.nan})
            out.append(row)
    return out


def stability(exp: Experiment, k: int, resamples: int, seed: int) -> dict:
    """Per (preset, max_seq_len): retrains, mean cost (FLOPs, wall time, events), each task's MRR spread and the
    mean pairwise top-k overlap; and Spearman's rho of cost against stability across the cells."""
    cells = {}
    for t in exp.ok:
        cells.setdefault((t.preset, t.max_seq_len), []).append(t)
    tasks = list(exp.config.eval.tasks)
    rows = []
    for (preset, seq_len), trials in sorted(cells.items(), key=lambda kv: (kv[1][0].params, kv[0][1])):
        rows.append({"preset": preset, "backbone_params": trials[0].params, "max_seq_len": seq_len}
                    | retrains_summary(exp, trials, k, tasks))
    primary = exp.config.eval.primary
    usable = [r for r in rows if r["retrains"] > 1]
    warm = warm_against_cold(exp, k, tasks)
    corr = {}
    if len(usable) >= 3:
        for cost in ("train_flops", "wall_time_s"):
            for stab in ("topk_overlap", f"mrr_{primary}_std"):
                pairs = [(r[cost], r[stab]) for r in usable if np.isfinite(r[cost]) and np.isfinite(r[stab])]
                if len(pairs) >= 3:
                    x, y = zip(*pairs)
                    corr[(cost, stab)] = spearman_with_interval(x, y, resamples, seed)
    return {"cells": rows, "correlations": corr, "k": k, "warm": warm}


def warm_against_cold(exp: Experiment, k: int, tasks: list[str]) -> list[dict]:
    """Per (preset, max_seq_len) with warm-started retrains: the warm ones and the ones from scratch on the same
    training windows, side by side: mean cost per retrain (to the kept epoch), each task's MRR mean and spread, and
    the mean pairwise top-k overlap of each kind's lists (the same requests)."""
    out = []
    cells = sorted({(t.preset, t.max_seq_len) for t in exp.warm})
    for preset, seq_len in cells:
        warm = [t for t in exp.warm if (t.preset, t.max_seq_len) == (preset, seq_len)]
        shifts = {t.window_shift_h for t in warm}
        cold = [t for t in exp.ok if (t.preset, t.max_seq_len) == (preset, seq_len) and t.window_shift_h in shifts]
        for kind, trials in (("from scratch", cold), ("warm-started", warm)):
            out.append({"preset": preset, "backbone_params": warm[0].params, "max_seq_len": seq_len, "retrain": kind}
                       | retrains_summary(exp, trials, k, tasks))
    return out


def retrains_summary(exp: Experiment, trials: list[Trial], k: int, tasks: list[str]) -> dict:
    """A set of retrains in figures: how many, their mean cost to the kept epoch (FLOPs, wall time, events) and of the
    whole run (the patience epochs after the kept one included), how many kept the weights they started from (a
    warm-started retrain's epoch 0), the mean pairwise top-k overlap of their lists (the same requests), each task's
    MRR mean and spread."""
    tops = [x for x in (read_topk(t.topk_path, exp.config.storage.store()) for t in trials) if x]
    row = {"retrains": len(trials), "train_flops": _mean(t.final.get("train_flops") for t in trials),
           "wall_time_s": _mean(t.final.get("wall_time_s") for t in trials),
           "events_processed": _mean(t.final.get("events_processed") for t in trials),
           "run_train_flops": _mean(t.spent.get("train_flops") for t in trials),
           "run_wall_time_s": _mean(t.spent.get("wall_time_s") for t in trials),
           "kept_start": sum(t.final.get("epoch") == 0 for t in trials),
           "topk_overlap": mean_pairwise_overlap(tops, k) if len(tops) > 1 else math.nan}
    for task in tasks:
        vals = [shared_figure(t, task) for t in trials]
        row[f"mrr_{task}_mean"], row[f"mrr_{task}_std"] = _mean(vals), _std(vals)
    return row


def shared_figure(trial: Trial, task: str, name: str = "mrr"):
    """A retrain's kept-epoch figure on the validation requests every retrain shares, what retrains are compared
    on: a shifted retrain's shared_valid_ figure (it was validated on its own window, eval.moving_validation), else
    its valid_ one (its window is the shared one)."""
    return trial.final.get(f"{SHARED}{name}_{task}", trial.final.get(_metric(task, name=name)))


def _shown(path: Path) -> str:
    """A path as the report shows it: relative to the working directory when under it (a committed report then
    names no one's home folder)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _share(gain: float, reference: float) -> float:
    """A task's gain as a share of the pre-training gain; undefined (NaN) unless pre-training gained: a ratio to a
    loss (or a zero) would flip or blow up the sign and says nothing about how much of a gain carries over."""
    return gain / reference if np.isfinite(reference) and reference > 0 else math.nan


def gains(exp: Experiment, fits: list[dict]) -> dict:
    """Relative gain of the largest over the smallest backbone (the longest max_seq_len, mean over the retrains
    `compared_retrains` picks) in pre-training loss, in next-event MRR (the primary task) and in each task's MRR,
    each with the retrains' noise (`gain_noise`); each task's gain as a share of the next-event gain, beside its
    headroom at the smallest size."""
    fresh = min((t.window_shift_h for t in exp.ok), default=0.0)
    if not exp.ok:
        return {}
    seq_len = max(t.max_seq_len for t in exp.ok if t.window_shift_h == fresh)
    ok, basis = compared_retrains(exp, seq_len)
    sizes = sorted({t.params for t in ok})
    if len(sizes) < 2:
        return {"max_seq_len": seq_len, "rows": [], "note": "needs two or more backbone sizes"}
    small = [t for t in ok if t.params == sizes[0]]
    large = [t for t in ok if t.params == sizes[-1]]
    primary = exp.config.eval.primary

    def mean_of(trials, task):
        return _mean(shared_figure(t, task) for t in trials)

    def noise_of(task):
        return gain_noise([shared_figure(t, task) for t in small], [shared_figure(t, task) for t in large])

    loss_gain = relative_gain(_mean(t.final.get("loss") for t in small), _mean(t.final.get("loss") for t in large),
                              higher_is_better=False)
    next_gain = relative_gain(mean_of(small, primary), mean_of(large, primary))
    next_noise = noise_of(primary)
    by_task = {(f["task"], f["max_seq_len"]): f for f in fits}
    rows = []
    for task in exp.config.eval.tasks:
        g = relative_gain(mean_of(small, task), mean_of(large, task))
        f = by_task.get((task, seq_len), {}).get("fit")
        head_small = float(f.headroom(sizes[0])) if f else math.nan
        noise = noise_of(task)
        rows.append({"task": task, "mrr_small": mean_of(small, task), "mrr_large": mean_of(large, task), "gain": g,
                     "noise": noise, "beyond_noise": bool(g > noise) if math.isfinite(noise + g) else None,
                     "gain_vs_next": _share(g, next_gain), "gain_vs_loss": _share(g, loss_gain),
                     "p0": f.p0 if f else math.nan, "headroom_small": head_small,
                     "relative_headroom_small": head_small / f.p0 if f and f.p0 > 0 else math.nan})
    return {"max_seq_len": seq_len, "small": sizes[0], "large": sizes[-1], "loss_gain": loss_gain,
            "next_gain": next_gain, "next_gain_noise": next_noise, "retrains": min(len(small), len(large)),
            "basis": basis, "primary": primary, "rows": rows}


def gain_noise(small: list, large: list) -> float:
    """Two standard errors of the relative gain mean(large)/mean(small) - 1 from the seeds' spread (retrains of the
    same cell): a gain below this is not told apart from retraining noise. NaN with fewer than 2 runs a side."""
    a = np.asarray([v for v in small if v is not None and np.isfinite(v)], dtype=float)
    b = np.asarray([v for v in large if v is not None and np.isfinite(v)], dtype=float)
    if len(a) < 2 or len(b) < 2 or a.mean() == 0:
        return math.nan
    return float(2.0 * math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) / abs(a.mean()))


def optimal(exp: Experiment, fits: list[dict], budget: float | None) -> dict:
    """The compute-optimal (size, max_seq_len) for one retrain's budget of training FLOPs, by the primary task's
    fits and a per-length cost model (log-log fit of FLOPs against backbone size)."""
    primary = exp.config.eval.primary
    fresh = min((t.window_shift_h for t in exp.ok), default=0.0)
    ok = [t for t in exp.ok if t.window_shift_h == fresh and t.final.get("train_flops")]
    if not ok:
        return {}
    measured = [t.final["train_flops"] for t in ok]
    source = "given" if budget else "median measured retrain"
    budget = float(budget) if budget else float(np.median(measured))
    per_len = {f["max_seq_len"]: f["fit"] for f in fits if f["task"] == primary}
    costs = {L: fit_cost([t.params for t in ok if t.max_seq_len == L],
                         [t.final["train_flops"] for t in ok if t.max_seq_len == L]) for L in per_len}
    sizes = [t.params for t in ok]
    rows = compute_optimal(per_len, costs, budget, (min(sizes), max(sizes)))
    # The measured grid's own answer: the best mean primary MRR among cells whose mean cost fits the budget.
    cells = {}
    for t in ok:
        cells.setdefault((t.preset, t.params, t.max_seq_len), []).append(t)
    grid = [{"preset": p, "n": n, "max_seq_len": L, "cost": _mean(t.final["train_flops"] for t in ts),
             "mrr": _mean(t.final.get(_metric(primary)) for t in ts)} for (p, n, L), ts in cells.items()]
    affordable = [g for g in grid if g["cost"] <= budget and np.isfinite(g["mrr"])]
    best_grid = max(affordable, key=lambda g: g["mrr"]) if affordable else None
    return {"budget_flops": budget, "budget_source": source, "task": primary, "rows": rows, "grid_best": best_grid,
            "cost_models": {L: c for L, c in costs.items() if c is not None}}


def analyse(exp: Experiment, budget_flops: float | None = None, resamples: int | None = None,
            seed: int | None = None) -> dict:
    rcfg = exp.config.report
    resamples = resamples or rcfg.bootstrap
    seed = rcfg.seed if seed is None else seed
    budget_flops = budget_flops or rcfg.budget_flops
    fits = scaling_fits(exp, resamples, seed)
    return {"trials": trial_rows(exp), "fits": fits, "stability": stability(exp, exp.config.eval.topk, resamples,
                                                                           seed),
            "gains": gains(exp, fits), "optimal": optimal(exp, fits, budget_flops),
            "tasks": {k: v.model_dump() for k, v in exp.config.eval.tasks.items()},
            "requests": task_requests(exp), "cost": sweep_cost(exp.trials),
            "ends": retrain_ends(exp), "time_budget_s": exp.config.train.time_budget_s,
            "primary": exp.config.eval.primary, "delays": exp.config.eval.delays_h}


def task_requests(exp: Experiment) -> dict[str, int]:
    """How many of the shared validation requests each task was scored on (the most any trial reports: they are
    the same for every retrain, but an early-stopped trial may lack the metric)."""
    out = {}
    for task in exp.config.eval.tasks:
        counts = [shared_figure(t, task, "requests") for t in exp.ok]
        counts = [int(c) for c in counts if c is not None and np.isfinite(c)]
        if counts:
            out[task] = max(counts)
    return out


def oracle_metrics(config: GenrecConfig, shards_root: str) -> dict | None:
    """Synthetic data only: each task's metrics when titles are ranked by the generator's own probabilities
    (`genrec.data.synthetic.Oracle`: exact for the next event, approximate for horizon and cold targets), on the same
    requests, targets and candidate pools as the models (delay 0): how predictable the generator made each task."""
    if config.data.source != "synthetic":
        return None
    # torch and the evaluation code on it are imported here: only a synthetic sweep's reference needs them, and the
    # report of any other sweep (`genrec report`) does not load them.
    import torch

    from genrec.build import item_counts
    from genrec.tasks import EvalPlan, build_plan, evaluate_plan, plan_metrics

    shards = open_shards(shards_root, config.storage.store())
    _, latent = simulate(**config.data.synthetic.model_dump())
    oracle = Oracle(latent)
    counts = item_counts(shards)
    cold = counts == 0
    cold[0] = False
    # the models' own plan, stale delays included: a request whose stalest context would be empty is left out of
    # theirs, so it is left out here too (only delay 0 is scored)
    plan = build_plan(shards, config.eval, cold, split="valid")
    vocab = pq.read_table(shards.items_path, columns=["item_id", "index"], filesystem=shards.fs)
    item_id = np.zeros(shards.num_items + 1, np.int64)
    item_id[vocab.column("index").to_numpy()] = vocab.column("item_id").to_numpy()
    columns = torch.from_numpy(item_id[1:] - 1)  # score column of index i: the generator's title item_id - 1

    def scorer(task):
        def score(uses, batch):
            out = torch.full((batch["items"].shape[0], shards.num_items + 1), float("-inf"))
            for row, row_uses in enumerate(uses):
                if not row_uses:
                    continue
                req = row_uses[0].request  # delay 0 only: one request per context
                items, ts, _, _ = plan.seqs[req.seq]
                end = req.ends[0.0]
                if task.targets == "horizon":
                    p = oracle.horizon(req.user, req.ts, task.start_h * 3600, task.end_h * 3600)
                else:
                    p = oracle.next_event(req.user, req.ts, item_id[items[:end]], ts[:end])
                out[row, 1:] = torch.from_numpy(p)[columns].float()
            return out

        return score

    out = {}
    for name, task in plan.tasks.items():
        sub = EvalPlan({name: task}, [0.0], plan.seqs, plan.requests)
        sums, _ = evaluate_plan(sub, scorer(task), max_seq_len=1)
        m = plan_metrics(sums, primary=name)
        out[name] = {k: m[k] for k in ("mrr", "hr@10", "ndcg@10", "requests")}
    return out


def training_curves(exp: Experiment) -> list[dict]:
    """Loss and primary MRR per epoch of the fresh retrains of the first seed (one curve per cell)."""
    fresh = min((t.window_shift_h for t in exp.ok), default=0.0)
    seed = min((t.seed for t in exp.ok), default=0)
    primary = exp.config.eval.primary
    return [{"preset": t.preset, "n": t.params, "max_seq_len": t.max_seq_len,
             "epochs": [h["epoch"] for h in t.history if h.get("epoch", 0) > 0],
             "loss": [h.get("loss") for h in t.history if h.get("epoch", 0) > 0],
             "mrr": [h.get(_metric(primary)) for h in t.history if h.get("epoch", 0) > 0]}
            for t in sorted(exp.ok, key=lambda t: (t.params, t.max_seq_len))
            if t.window_shift_h == fresh and t.seed == seed]


def make_report(results_dir: str | Path, out_dir: str | Path | None = None, budget_flops: float | None = None,
                resamples: int | None = None, command: str = "", echo=say, store=None) -> dict:
    """Read a sweep's Tune results, analyse them and write the report (HTML + Markdown + PNG) -> the paths.

    Results under a URI storage root (`store`, or a scheme://... results_dir) are copied to the local cache first;
    the report is then written locally (out_dir, default the copy's report/) and, without out_dir, also uploaded
    beside the results (<sweep>/report), where a local sweep keeps it."""
    remote = None
    if is_uri(str(results_dir)) and (store is None or not store.remote):
        store = Store(str(results_dir))
    if store is not None and store.remote and (is_uri(str(results_dir)) or not Path(results_dir).is_dir()):
        remote = store.locate(results_dir)
        if not store.is_dir(remote):
            raise ConfigError(f"{store.uri(remote)}: no such folder; pass a sweep's results folder "
                              "(storage.root/tune/<sweep>)")
        echo(f"report: copying {store.uri(remote)} to {store.cache} ...")
        results_dir = store.fetch(remote, fresh=True)
    exp = load_experiment(results_dir)
    out = Path(out_dir) if out_dir else exp.path / "report"
    echo(f"report: {len(exp.ok) + len(exp.warm)} of {len(exp.trials)} trials usable in {exp.path}; bootstrap "
         f"{resamples or exp.config.report.bootstrap} resamples per fit ...")
    analysis = analyse(exp, budget_flops, resamples)
    counts, dataset, oracle = "", exp.config.data.source, None
    try:
        shards = open_shards(exp.shards, exp.config.storage.store())
        c = shards.manifest["counts"]
        dataset = shards.manifest.get("dataset", dataset)
        counts = (f"{c['split']} split, {c['users']:,} users, {c['items']:,} titles, {c['events']:,} events; "
                  f"{c['train_events']:,} training events, {c['eval_users']:,} evaluation users")
    except ShardError as exc:
        shards = None
        echo(f"note: the sweep's shards are gone ({exc}); the report has no data counts and no generator reference")
    oracle_error = None
    if shards is not None:
        try:
            oracle = oracle_metrics(exp.config, exp.shards)
        except Exception as exc:  # the reference is an extra: a report without it beats no report
            oracle_error = f"{type(exc).__name__}: {exc}"
            echo(f"note: the generator reference failed ({oracle_error}); the report goes on without it")
    t = exp.config.tune
    presets = sorted({(tr.params, tr.preset) for tr in exp.trials if math.isfinite(tr.params)})
    meta = {"name": exp.path.name, "experiment": store.uri(remote) if remote else _shown(exp.path),
            "dataset": dataset, "counts": counts,
            "grid": (f"presets {', '.join(p for _, p in presets) or t.presets} x max_seq_len "
                     f"{sorted({tr.max_seq_len for tr in exp.trials})} x seeds {sorted({tr.seed for tr in exp.trials})}"
                     f" x training-window shifts {sorted({tr.window_shift_h for tr in exp.trials})} h: "
                     f"{len(exp.trials)} trials, {len(exp.ok) + len(exp.warm)} usable, "
                     f"up to {max((tr.history[-1].get('epoch', 0) for tr in exp.ok), default=0)} epochs"),
            "command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "oracle_error": oracle_error,
            "select": selection_key(exp.config.eval.select_metric),
            # shifted retrains validated on windows of their own (eval.moving_validation), compared on shared requests
            "moving_validation": any(k.startswith(SHARED) for tr in exp.trials for k in tr.final)}
    paths = write_report(analysis, out, meta, oracle, training_curves(exp))
    echo(f"report -> {paths['html']} (and report.md, {len(paths) - 3} plots)")
    if remote and not out_dir:
        store.upload(out, f"{remote}/report")
        echo(f"report uploaded -> {store.uri(remote + '/report')}")
    return paths
