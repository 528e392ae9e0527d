"""The analysis and the report on a sweep whose answers are known: trial folders laid out as Tune and genrec write
them (params.json, genrec_run.json, history.json, topk.parquet), with metrics drawn from known scaling laws and
top-10 lists whose agreement between retrains grows with the backbone. (The integration test runs the same code on
a real Ray Tune sweep.)"""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec.config import ConfigError, load_config
from genrec.model import backbone_params
from genrec.presets import PRESETS
from genrec.report import cost_line
from genrec.study import (Trial, analyse, covered_s, load_experiment, make_report, sweep_cost, tune_reports,
                          tune_spans)

PRESET_LADDER = ["100k", "250k", "500k", "1m", "2m"]
LAWS = {"B": (0.20, 2e3, 0.5), "A": (0.35, 1e3, 0.6), "C": (0.60, 5e2, 0.5)}  # task -> (P0, N0, a)
LENGTHS = (16, 64)


def law(n, p0, n0, a):
    return p0 - (n / n0) ** (-a)


def write_sweep(root, broken: bool = False):
    cfg = load_config(None, [f"storage.root={root}", "eval.tasks={B: {targets: next}, A: {targets: horizon}, "
                                                     "C: {targets: next, candidates: popular}}"])
    exp = root / "tune" / "sweep-known"
    rng = np.random.default_rng(0)
    base_lists = np.array([rng.permutation(np.arange(1, 500))[:10] for _ in range(30)])
    for i, (preset, L, seed, shift) in enumerate((p, L, s, w) for p in PRESET_LADDER for L in LENGTHS
                                                 for s in (0, 1) for w in (0.0, 48.0)):
        n = backbone_params(*PRESETS[preset][:2])
        run = root / "runs" / f"run-{i}"
        run.mkdir(parents=True)
        events = 30_000 if shift == 0 else 27_000
        final = {"epoch": 2, "loss": 5.0 - 0.2 * math.log10(n) + rng.normal(0, 0.01), "backbone_params": n,
                 "events_processed": events, "train_flops": 6.0 * n * events * (1 + L / 64),
                 "wall_time_s": 20 + n / 1e5}
        for task, (p0, n0, a) in LAWS.items():
            final[f"valid_mrr_{task}"] = law(n, p0, n0, a) + rng.normal(0, 0.001) - (0.01 if L == 16 else 0)
        final |= {"valid_requests_B": 300, "valid_requests_A": 250, "valid_requests_C": 12}  # C's pool: few targets
        final["valid_ndcg@10"] = final["valid_mrr_B"]  # what each run's kept epoch is chosen by
        # epoch 1 scores lower (the run keeps epoch 2); epoch 3 is a patience epoch after it, worse again: the
        # report reads the kept epoch, not the last one
        history = [{**final, "epoch": 1, "loss": final["loss"] + 0.5, "valid_ndcg@10": final["valid_ndcg@10"] - 0.05},
                   final, {**{k: (v - 0.2 if k.startswith("valid_mrr") else v) for k, v in final.items()}, "epoch": 3,
                           "valid_ndcg@10": final["valid_ndcg@10"] - 0.01, "end": "early stopping",
                           "events_processed": events * 2}]
        (run / "history.json").write_text(json.dumps(history))
        # Retrains of larger backbones change fewer of the ten titles a request gets.
        changed = max(0, 4 - PRESET_LADDER.index(preset)) * (seed + int(shift > 0)) // 2 + max(0, 4 - PRESET_LADDER.index(preset)) // 2
        lists = [list(row[: 10 - changed]) + list(rng.integers(1000, 2000, changed)) for row in base_lists]
        pq.write_table(pa.table({"user_id": list(range(30)), "ts": [100] * 30,
                                 "items": pa.array(lists, pa.list_(pa.int32()))}), run / "topk.parquet")
        trial = exp / f"run_trial_{i:05d}"
        trial.mkdir(parents=True)
        (trial / "params.json").write_text(json.dumps({"base": cfg.model_dump(mode="json"), "shards": str(root / "gone"),
                                                       "preset": preset, "max_seq_len": L, "seed": seed,
                                                       "window_shift_h": shift, "epochs": None, "sweep": "known"}))
        (trial / "genrec_run.json").write_text(json.dumps({"run": f"run-{i}", "history": str(run / "history.json"),
                                                           "topk": str(run / "topk.parquet")}))
    if broken:  # a crashed trial (Tune's error.txt, no history) and one whose driver died after epoch 1
        trial = exp / "run_trial_99999"
        trial.mkdir()
        (trial / "params.json").write_text(json.dumps({"base": cfg.model_dump(mode="json"), "preset": "2m",
                                                       "max_seq_len": 64, "seed": 5, "window_shift_h": 0.0}))
        (trial / "error.txt").write_text("Traceback ...\nRuntimeError: worker died")
        trial = exp / "run_trial_99998"
        trial.mkdir()
        (trial / "params.json").write_text(json.dumps({"base": cfg.model_dump(mode="json"), "preset": "2m",
                                                       "max_seq_len": 64, "seed": 6, "window_shift_h": 0.0}))
        (trial / "result.json").write_text(json.dumps({"epoch": 1, "loss": 3.0, "valid_mrr_B": 0.9}) + "\n")
    return exp


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return write_sweep(tmp_path_factory.mktemp("known"), broken=True)


@pytest.fixture(scope="module")
def analysed(sweep):
    return analyse(load_experiment(sweep), resamples=100)


def test_fits_recover_each_tasks_ceiling_and_order(sweep, analysed):
    exp = load_experiment(sweep)
    assert len(exp.trials) == 42 and len(exp.ok) == 40
    assert [t for t in exp.trials if t.status == "failed"][0].error.endswith("worker died")
    # Tune's own result.json stands in for a missing history; a run that stopped early is not a retrain.
    epochs = exp.config.train.epochs  # the sweep's own (no tune.epochs): a driver that died after epoch 1 of them
    assert [t.error for t in exp.trials if t.status == "incomplete"] == [f"stopped after epoch 1 of {epochs}"]
    a = analysed
    fits = {(f["task"], f["max_seq_len"]): f for f in a["fits"]}
    for task, (p0, n0, alpha) in LAWS.items():
        f = fits[(task, 64)]
        assert f["points"] == 10 and f["sizes"] == 5  # fresh retrains only: 5 sizes x 2 seeds
        # (coverage of the intervals themselves is tested in test_analysis, over several draws)
        assert abs(f["fit"].p0 - p0) < 0.015 and f["boot"]["p0"].contains(f["fit"].p0), (task, f["fit"])
        assert f["fit"].rmse < f["loglinear"].rmse  # data from the offset law: it fits better than a log-line
        head = [s["headroom"] for s in f["per_size"]]
        assert head == sorted(head, reverse=True)  # headroom shrinks with size
    assert fits[("C", 64)]["fit"].p0 > fits[("A", 64)]["fit"].p0 > fits[("B", 64)]["fit"].p0


def test_stability_gains_and_the_compute_optimal_pick(analysed):
    a = analysed
    cells = a["stability"]["cells"]
    assert len(cells) == 10 and all(c["retrains"] == 4 for c in cells)
    overlaps = [c["topk_overlap"] for c in cells if c["max_seq_len"] == 64]
    assert overlaps == sorted(overlaps) and overlaps[-1] == 1.0  # the 2m retrains agree on every title
    corr = a["stability"]["correlations"][("train_flops", "topk_overlap")]
    assert corr["rho"] > 0.8 and corr["interval"].low > 0 and corr["n"] == 10 and corr["p"] < 0.01
    g = a["gains"]
    assert g["max_seq_len"] == 64 and g["small"] < g["large"]
    rows = {r["task"]: r for r in g["rows"]}
    # B has the most headroom at 100k and gains the most; C, closest to its ceiling, the least.
    assert rows["B"]["gain"] > rows["A"]["gain"] > rows["C"]["gain"] > 0
    assert rows["B"]["gain_vs_next"] == pytest.approx(1.0)
    assert rows["B"]["headroom_small"] > rows["C"]["headroom_small"]
    o = a["optimal"]
    assert o["budget_source"] == "median measured retrain" and o["rows"]
    assert all(r["affordable"] for r in o["rows"]) and o["grid_best"]["cost"] <= o["budget_flops"]


def test_report_pages_and_plots(sweep, tmp_path):
    paths = make_report(sweep, tmp_path / "r", resamples=100, command="genrec report known", echo=lambda *_: None)
    assert {p.name for p in paths.values()} >= {"report.html", "report.md", "analysis.json", "fits.png",
                                                 "stability.png", "gains.png", "curves.png"}
    md = paths["md"].read_text()
    assert "more expensive retrains serve more stable top lists" in md
    assert "How much do pre-training gains shrink" in md and "Not answered" not in md
    assert md.count("| failed: RuntimeError: worker died |") == 1  # the crashed trial is listed with its error
    assert "| requests scored |" in md and "| 300 |" in md
    assert md.count("only 12 requests: too few to read") == 2  # C's fits (two lengths), and no other task's
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 4 and "<table>" in html
    assert json.loads(paths["json"].read_text())["optimal"]["rows"]
    # no trial folder holds Tune's clock here: the cost line says what it can (trials, training time, FLOPs)
    assert "**Cost of this run:** 42 trials, 2 of them failed or stopped; " in md and "of wall time" not in md
    # every hand-made run ended by early stopping (its last epoch says so): nothing flagged
    assert "**Were the sizes trained to convergence?**" in md and "Every one stopped by early stopping" in md


def test_what_a_sweep_cost_comes_from_tunes_clock_and_every_epoch_run(tmp_path):
    reports = ({"epoch": 1, "timestamp": 1000, "time_total_s": 30.0},
               {"epoch": 2, "timestamp": 1050, "time_total_s": 80.0})
    (tmp_path / "result.json").write_text("".join(json.dumps(r) + "\n" for r in reports))
    assert tune_reports(tmp_path) == list(reports)
    assert tune_spans(tune_reports(tmp_path)) == [(970.0, 1050.0)]  # started 30 s before its first report
    # stopped after epoch 2 and resumed an hour later (Tune carries its run time over): two periods, the hour left out
    resumed = reports + ({"epoch": 3, "timestamp": 4700, "time_total_s": 120.0},
                         {"epoch": 4, "timestamp": 4740, "time_total_s": 160.0})
    assert tune_spans(list(resumed)) == [(970.0, 1050.0), (4660.0, 4740.0)]
    assert tune_spans([{"epoch": 1}]) == [] and tune_reports(tmp_path / "missing") == []
    assert covered_s([(0.0, 10.0), (5.0, 20.0), (30.0, 40.0), (32.0, 35.0)]) == 30.0

    def trial(spans, history, warm=False, status="ok"):
        return Trial("100k", 16, 0, 0.0, status, None, history, warm=warm, spans=spans)

    # the first run kept epoch 1 and trained a patience epoch after it: its cost is its last epoch's (cumulative)
    trials = [trial([(970.0, 1050.0)], [{"epoch": 1, "wall_time_s": 20.0, "train_flops": 1e9, "valid_ndcg@10": 0.3},
                                        {"epoch": 2, "wall_time_s": 45.0, "train_flops": 2e9, "valid_ndcg@10": 0.2}]),
              trial([(1000.0, 1300.0)], [{"epoch": 0, "wall_time_s": 100.0, "train_flops": 5e9}], warm=True),
              trial([], [], status="failed")]
    cost = sweep_cost(trials)
    assert cost == {"trials": 3, "warm": 1, "unfinished": 1, "wall_s": 330.0, "trial_s": 380.0, "train_s": 145.0,
                    "train_flops": 7e9}
    line = cost_line(cost)
    assert line.startswith("**Cost of this run:** 3 trials (2 from scratch, 1 warm-started), 1 of them failed or "
                           "stopped; trials running for 0.09 h of wall time, 0.11 trial-hours in all (1.2 at a time")
    assert "; 0.04 h in the training loops (epochs with their validation); 7e+09 training FLOPs (" in line
    assert sweep_cost(trials[:1] + [trial([(4660.0, 4740.0)], [])])["wall_s"] == 160.0  # the gap between is not


def test_report_errors_name_the_folder(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        load_experiment(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no Tune trial folders"):
        load_experiment(tmp_path)


def test_no_gain_ratio_without_a_pre_training_gain():
    """A task's gain over a negative next-event gain would flip sign (x-15 of a loss): the report says it cannot
    answer instead of printing the ratio."""
    from genrec.report import answers
    from genrec.study import _share

    assert _share(0.3, 0.1) == pytest.approx(3.0)
    assert math.isnan(_share(0.3, -0.2)) and math.isnan(_share(0.3, 0.0)) and math.isnan(_share(0.3, math.nan))
    rows = [{"task": "A", "gain": 3.23, "gain_vs_next": _share(3.23, -0.21), "headroom_small": 0.08},
            {"task": "B", "gain": -0.21, "gain_vs_next": _share(-0.21, -0.21), "headroom_small": 0.0}]
    a = {"primary": "B", "stability": {"correlations": {}, "cells": []},
         "gains": {"small": 98_624, "large": 1_968_768, "max_seq_len": 64, "loss_gain": -0.019, "next_gain": -0.21,
                   "primary": "B", "rows": rows}}
    text = answers(a)[1]
    assert "gets worse by 1.9%" in text and "falls by 21%" in text and "A +323%" in text
    assert "Not answered: the larger backbone did not gain in pre-training" in text and "x-" not in text
    # A gain inside the seeds' spread is not read as a gain either.
    from genrec.study import gain_noise

    noise = gain_noise([0.10, 0.12], [0.11, 0.13])  # means 0.11 -> 0.12: +9%; 2 * sqrt(2e-4/2 + 2e-4/2) / 0.11
    assert noise == pytest.approx(2 * math.sqrt(2e-4) / 0.11) and math.isnan(gain_noise([0.1], [0.2, 0.3]))
    a["gains"].update(loss_gain=0.01, next_gain=0.09, next_gain_noise=noise, retrains=2,
                      rows=[dict(r, gain_vs_next=_share(r["gain"], 0.09)) for r in rows])
    text = answers(a)[1]
    assert "within the retrains' noise (two standard errors over the retrains: 26%)" in text and "x35" not in text
    assert "(max_seq_len 64; mean of at least 2 retrains a size: seeds)" in text
    # ... and says how many retrains per size a gain of this size would need: 2 * (0.257 / 0.09)^2 = 16.3 -> 17.
    assert "about 17 retrains per size" in text


def test_one_seed_over_several_windows_still_gives_fits_and_gains_several_retrains_a_size():
    from genrec.report import answers
    from genrec.study import Experiment, gain_noise, gains, scaling_fits

    cfg = load_config(None, ["eval.tasks={B: {targets: next}}", "finetune.task=B"])

    def retrain(params, shift, own, shared, seed=0):
        # a shifted retrain keeps its epoch by its own window (valid_), and is compared on the shared requests
        final = {"backbone_params": params, "loss": 2.0, "valid_mrr_B": own, "valid_ndcg@10": own}
        if shift:
            final["shared_valid_mrr_B"] = shared
        return Trial("x", 64, seed, shift, "ok", None, [final])

    small = [retrain(1e5, 0.0, 0.20, None), retrain(1e5, 24.0, 0.50, 0.19), retrain(1e5, 48.0, 0.50, 0.21)]
    large = [retrain(1e6, 0.0, 0.25, None), retrain(1e6, 24.0, 0.50, 0.24), retrain(1e6, 48.0, 0.50, 0.26)]
    exp = Experiment(Path("."), cfg, "", small + large)
    fits = scaling_fits(exp, resamples=20, seed=0)
    assert [(f["points"], f["basis"]) for f in fits] == [(6, "training windows")]
    assert sorted(fits[0]["p"].tolist()) == [0.19, 0.20, 0.21, 0.24, 0.25, 0.26]
    g = gains(exp, fits)
    assert g["basis"] == "training windows" and g["retrains"] == 3
    assert g["next_gain"] == pytest.approx(0.25 / 0.20 - 1)  # the shared figures, not the shifted windows' own 0.5
    assert g["next_gain_noise"] == pytest.approx(gain_noise([0.20, 0.19, 0.21], [0.25, 0.24, 0.26]))
    assert g["rows"][0]["noise"] == g["next_gain_noise"] and g["rows"][0]["beyond_noise"] is True
    text = answers({"primary": "B", "stability": {"correlations": {}, "cells": []}, "gains": g})[1]
    assert "mean of at least 3 retrains a size: training windows, read on the validation requests they share" in text
    assert "above the retrains' noise (8%, two standard errors)" in text  # 2 sqrt(1e-4/3 + 1e-4/3) / 0.2 = 0.0816
    # with two seeds at the fresh window those are the retrains compared, and only they
    seeds = [retrain(1e5, 0.0, 0.20, None), retrain(1e5, 0.0, 0.22, None, seed=1), retrain(1e6, 0.0, 0.25, None),
             retrain(1e6, 0.0, 0.27, None, seed=1)]
    exp = Experiment(Path("."), cfg, "", seeds + small[1:] + large[1:])
    g = gains(exp, [])
    assert g["basis"] == "seeds" and g["retrains"] == 2 and g["next_gain"] == pytest.approx(0.26 / 0.21 - 1)
    assert [(f["points"], f["basis"]) for f in scaling_fits(exp, resamples=20, seed=0)] == [(4, "seeds")]
    # ... even where one of them did not finish: the basis follows the sweep's seeds, not its failures
    exp = Experiment(Path("."), cfg, "", seeds[:3] + small[1:] + large[1:])
    assert gains(exp, [])["basis"] == "seeds" and gains(exp, [])["retrains"] == 1


def test_a_correlation_the_sweep_cannot_settle_comes_with_the_cells_it_would_need():
    from genrec.analysis import Interval
    from genrec.report import answers

    corr = {"rho": -0.42, "interval": Interval(-0.88, 0.38), "p": 0.30, "n": 6}
    a = {"primary": "B", "gains": {"rows": []},
         "stability": {"k": 10, "cells": [{"retrains": 2}] * 6, "correlations": {("train_flops", "topk_overlap"): corr}}}
    text = answers(a)[0]
    assert "the sweep cannot tell" in text and "needs about 24 cells for a 95% interval clear of zero" in text


def test_the_generator_reference_scores_the_very_requests_the_models_are_scored_on(tmp_path):
    from genrec.build import item_counts
    from genrec.data.synthetic import generate
    from genrec.shards import write_shards
    from genrec.study import oracle_metrics
    from genrec.tasks import build_plan

    cfg = load_config(None, ["data.source=synthetic", "data.synthetic={users: 60, items: 60, events_per_user: 30, "
                             "days: 20, genres: 4, seed: 2, sessions: daily}", "eval.delays_h=[48]",
                             "eval.tasks={B: {targets: next}}", "finetune.task=B"])
    ds = generate(**cfg.data.synthetic.model_dump())
    ts = np.asarray(ds.events.column("timestamp").to_numpy())
    shards = write_shards(ds, tmp_path / "s", int(np.quantile(ts, 0.8)), valid_cutoff=int(np.quantile(ts, 0.6)))
    cold = item_counts(shards) == 0
    cold[0] = False
    scored = sum("B" in r.targets for r in build_plan(shards, cfg.eval, cold).requests)
    undelayed = sum("B" in r.targets for r in build_plan(shards, cfg.eval.model_copy(update={"delays_h": []}),
                                                          cold).requests)
    assert 0 < scored < undelayed  # a 48-h-stale context is empty for some requests: the models skip them
    oracle = oracle_metrics(cfg, str(tmp_path / "s"))
    assert oracle["B"]["requests"] == scored and 0 < oracle["B"]["mrr"] <= 1


def test_the_report_says_when_the_larger_sizes_stopped_on_their_time_budget():
    """How each size's retrains ended, read from the last epoch's `end`: a largest size cut by the time budget while
    the smallest early-stopped is flagged (the fits then compare sizes at equal time, not at convergence)."""
    from genrec.report import ends_sentence, trials_table
    from genrec.study import Experiment, retrain_ends, trial_rows

    cfg = load_config(None, ["eval.tasks={B: {targets: next}}", "finetune.task=B", "train.time_budget_s=540"])

    def retrain(params, end, warm=False, seed=0):
        history = [{"epoch": 1, "backbone_params": params, "valid_ndcg@10": 0.2},
                   {"epoch": 2, "backbone_params": params, "valid_ndcg@10": 0.1, **({"end": end} if end else {})}]
        return Trial("1m" if params > 5e5 else "100k", 64, seed, 0.0, "ok", None, history, warm=warm)

    trials = [retrain(1e5, "early stopping"), retrain(1e5, "early stopping", seed=1),
              retrain(1e6, "time budget"), retrain(1e6, "early stopping", seed=1), retrain(1e6, "time budget", seed=2),
              retrain(1e6, "time budget", warm=True)]  # a warm retrain is not a size's retrain from scratch
    exp = Experiment(Path("."), cfg, "", trials)
    ends = retrain_ends(exp)
    assert ends == [{"preset": "100k", "backbone_params": 1e5, "retrains": 2, "ends": {"early stopping": 2},
                     "epochs": [2, 2]},
                    {"preset": "1m", "backbone_params": 1e6, "retrains": 3,
                     "ends": {"time budget": 2, "early stopping": 1}, "epochs": [2, 2, 2]}]
    text = ends_sentence({"ends": ends, "time_budget_s": 540.0})
    assert ("100k (100k): 2 early stopping (2 epochs); 1m (1.00M): 1 early stopping, 2 time budget (2 epochs)." in text
            and "1m (1.00M) stopped on its time budget (train.time_budget_s 540 s) in 2 of 3 retrains, 100k (100k) in "
            "0 of 2" in text and "not at their validation best" in text), text
    # the same sizes, all early-stopped: said so, and nothing flagged
    calm = [dict(r, ends={"early stopping": r["retrains"]}) for r in ends]
    assert "Every one stopped by early stopping" in ends_sentence({"ends": calm}) and "equal training time" not in \
        ends_sentence({"ends": calm})
    # runs that used up train.epochs did not stop at their best either
    capped = ends_sentence({"ends": [calm[0], dict(ends[1], ends={"max epochs": 3})]})
    assert "3 retrains stopped at train.epochs" in capped and "Every one stopped by early stopping" not in capped
    # every retrain cut by the budget, the smallest's too: none converged (equal shares, yet flagged)
    cut = [dict(r, ends={"time budget": r["retrains"]}, epochs=[11] if r["preset"] == "100k" else [2, 3]) for r in ends]
    text = ends_sentence({"ends": cut, "time_budget_s": 540.0})
    assert "100k (100k): 2 time budget (11 epochs); 1m (1.00M): 3 time budget (2-3 epochs)." in text
    assert ("Every retrain stopped on its time budget (train.time_budget_s 540 s), the smallest size's too, none by "
            "early stopping" in text and "and 1m trained fewer epochs in it than 100k" in text), text
    # runs that predate the record say nothing rather than guess
    assert ends_sentence({"ends": [dict(r, ends={"not recorded": 2}) for r in ends]}) is None
    table = trials_table({"tasks": {"B": {}}, "trials": trial_rows(exp)}).markdown()
    assert table.count("| time budget |") == 3 and "| ended |" in table


def test_the_fit_plot_is_scaled_to_the_points_not_to_an_interval_that_runs_to_its_bound():
    from genrec.analysis import fit_offset_power_law
    from genrec.report import fit_ylim

    n = np.array([1e5, 1e5, 3e5, 3e5, 1e6, 1e6])
    p = np.array([0.10, 0.09, 0.085, 0.08, 0.07, 0.08])  # falls with size: a flat fit (P0 at the points' level)
    fit = fit_offset_power_law(n, p, p0_max=1.0)
    assert fit is not None
    fits = [{"task": "B", "n": n, "p": p, "fit": fit}, {"task": "C", "n": n, "p": p + 0.4, "fit": None}]
    lo, hi = fit_ylim(fits, "B", None)
    assert (lo, hi) == pytest.approx((0.07 - 0.0045, 0.10 + 0.0045)) and lo < fit.p0 < hi  # the points, a margin
    # a fitted P0 above every point is shown too
    assert fit_ylim([dict(fits[0], fit=SimpleNamespace(p0=0.2))], "B", None)[1] == pytest.approx(0.2 + 0.13 * 0.15)
    assert fit_ylim(fits, "B", {"B": {"mrr": 0.2}})[1] == pytest.approx(0.2 + 0.13 * 0.15)  # the reference shown
    assert fit_ylim(fits, "C", None) == pytest.approx((0.47 - 0.0045, 0.50 + 0.0045))  # no fit: the points alone
    assert fit_ylim([], "B", None) == (0.0, 1.0)
