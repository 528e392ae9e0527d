"""The one selection rule (genrec.selection) on hand-made histories: choices follow validation, never test."""

import math

from genrec.config import load_config
from genrec.selection import (best_record, budget_spent, epochs_since_best, rank_trials, selection_key, should_stop,
                              winning_trial)
from genrec.train import epoch_line, stop_reason
from tuning.sweep import warm_link


def _history(valid, test):
    return [{"epoch": e, "valid_ndcg@10": v, "test_ndcg@10": t} for e, (v, t) in enumerate(zip(valid, test), 1)]


def test_the_kept_epoch_is_the_best_on_validation_not_on_test():
    # validation peaks at epoch 3, test at epoch 5: the rule keeps epoch 3
    h = _history([0.10, 0.12, 0.15, 0.14, 0.13], [0.09, 0.10, 0.11, 0.12, 0.16])
    key = selection_key("ndcg@10")
    assert key == "valid_ndcg@10"
    assert best_record(h, key)["epoch"] == 3
    assert best_record(h, "test_ndcg@10")["epoch"] == 5  # what selecting on test would have kept
    assert epochs_since_best(h, key) == 2


def test_ties_keep_the_earliest_epoch_and_missing_figures_are_skipped():
    h = _history([0.2, math.nan, 0.2, 0.1], [0, 0, 0, 0])
    h[1].pop("valid_ndcg@10")
    assert best_record(h, "valid_ndcg@10")["epoch"] == 1
    assert best_record([{"epoch": 1}], "valid_ndcg@10") is None
    assert best_record([], "valid_ndcg@10") is None
    # fine-tuning chooses on its own task's figure
    assert selection_key("mrr", "A") == "valid_mrr_A"


def test_early_stopping_after_patience_epochs_without_a_better_validation_figure():
    key = "valid_ndcg@10"
    h = _history([0.10, 0.12, 0.11, 0.12], [0] * 4)  # epoch 4 only equals the best: no improvement
    assert not should_stop(h[:3], key, 2)
    assert should_stop(h, key, 2)  # epochs 3 and 4 brought nothing better than epoch 2
    assert not should_stop(h, key, 3)
    assert not should_stop(h, key, None)  # no patience: never stops early
    assert not should_stop([], key, 1)
    # a test figure, however it moves, never stops a run
    h = _history([0.10, 0.12, 0.13], [0.5, 0.1, 0.0])
    assert not should_stop(h, key, 1)


def test_the_time_budget_is_a_ceiling_at_the_last_epochs_pace():
    # epochs ended at 50, 110 and 160 s: the last one took 50 s
    walls = [50.0, 110.0, 160.0]
    assert not budget_spent(walls, 160.0, 210.0)  # one more 50 s epoch ends at 210 s: still within
    assert budget_spent(walls, 160.0, 209.0)  # ... or 1 s past it: stop now
    assert budget_spent(walls, 161.0, 210.0)  # the checkpoint after the epoch took a second: 211 s would pass it
    assert budget_spent(walls, 250.0, 240.0)  # already past it
    assert budget_spent([], 240.0, 240.0) and not budget_spent([], 239.0, 240.0)  # nothing to pace by yet
    assert not budget_spent([30.0], 30.0, 60.0) and budget_spent([30.0], 30.0, 59.0)  # the first epoch paces itself
    assert not budget_spent(walls, 1e9, None)  # no budget


def test_what_ray_is_told_agrees_with_the_rule():
    """Ray Train deletes the earliest of equally scored checkpoints first, and Tune's searchers read a trial's latest
    report: the trainer reports a score that prefers the earlier epoch on ties, and the best figure so far."""
    from genrec.selection import BEST_SO_FAR, SCORE, selection_scores

    h = _history([0.2, 0.2, 0.1], [0, 0, 0])
    first, second = selection_scores(h[:1], "valid_ndcg@10"), selection_scores(h[:2], "valid_ndcg@10")
    assert first[SCORE] > second[SCORE] and first[SCORE] - second[SCORE] < 1e-6  # epoch 1 ranks above its tie
    assert selection_scores(h, "valid_ndcg@10")[BEST_SO_FAR] == 0.2  # epoch 3 reports the best so far


def test_the_epoch_line_shows_popularity_beside_the_selection_figure():
    cfg = load_config(None, ["train.epochs=20"])
    metrics = {"epoch": 3, "loss": 5.25, "valid_ndcg@10": 0.1211, "valid_mrr": 0.1, "valid_hr@10": 0.2,
               "popularity_valid_ndcg@10": 0.0436, "events_per_s": 4826.0}
    line = epoch_line(metrics, cfg, "valid_ndcg@10", best=True)
    assert line == ("epoch 3/20: loss 5.2500  valid_ndcg@10 0.1211 (popularity 0.0436)  valid_mrr 0.1000  "
                    "valid_hr@10 0.2000  4,826 events/s  (best so far)")
    del metrics["popularity_valid_ndcg@10"]  # a history written before popularity was computed per run
    assert "popularity" not in epoch_line(metrics, cfg, "valid_ndcg@10", best=False)


def _trial(name, valid, shift=0.0):
    """One sweep trial as tuning.sweep summarizes it: its kept epoch's validation figure (absent: it failed)."""
    return {"name": name, "window_shift_h": shift, **({} if valid is None else {"valid_ndcg@10": valid})}


def test_the_winner_is_the_best_trial_on_the_freshest_window_not_a_better_older_one():
    trials = [_trial("old-best", 0.30, shift=48.0), _trial("fresh", 0.20), _trial("fresh-best", 0.25),
              _trial("oldest", 0.40, shift=96.0), _trial("failed", None)]
    assert winning_trial(trials, "valid_ndcg@10")["name"] == "fresh-best"
    # ranking shows every trial by its figure (the older windows too): a table, not the choice
    assert [t["name"] for t in rank_trials(trials, "valid_ndcg@10")] == [
        "oldest", "old-best", "fresh-best", "fresh", "failed"]
    # with no trial on the unshifted window, the least shifted one is the freshest
    assert winning_trial(trials[:1] + trials[3:], "valid_ndcg@10")["name"] == "old-best"


def test_trial_ties_keep_the_earlier_trial_and_trials_without_a_figure_never_win():
    trials = [_trial("nan", math.nan), _trial("first", 0.2), _trial("failed", None), _trial("second", 0.2)]
    assert winning_trial(trials, "valid_ndcg@10")["name"] == "first"
    assert [t["name"] for t in rank_trials(trials, "valid_ndcg@10")] == ["first", "second", "nan", "failed"]
    # a failed trial on a fresher window does not make the freshest window one with no figure
    shifted = [_trial("failed-fresh", None), _trial("shifted", 0.1, shift=24.0)]
    assert winning_trial(shifted, "valid_ndcg@10")["name"] == "shifted"
    assert winning_trial([_trial("failed", None), _trial("nan", math.nan)], "valid_ndcg@10") is None
    assert winning_trial([], "valid_ndcg@10") is None


def test_a_warm_retrain_keeps_the_weights_it_started_from_unless_an_epoch_beats_them():
    """A warm-started retrain's epoch 0 is its predecessor as loaded (genrec.train.start_epoch): one more epoch under
    the same rule, so it is kept when no trained epoch beats it, and patience counts from it."""
    cfg = load_config(None, ["train.epochs=20"])
    start = {"epoch": 0, "loss": None, "events_per_s": None, "valid_ndcg@10": 0.30, "valid_mrr": 0.2,
             "valid_hr@10": 0.5}
    worse = [start] + _history([0.29, 0.28], [0.9, 0.9])
    assert best_record(worse, "valid_ndcg@10") is start and should_stop(worse, "valid_ndcg@10", patience=2)
    better = [start] + _history([0.29, 0.31], [0.0, 0.0])
    assert best_record(better, "valid_ndcg@10")["epoch"] == 2 and not should_stop(better, "valid_ndcg@10", 2)
    assert epoch_line(start, cfg, "valid_ndcg@10", best=True) == (
        "epoch 0 (the weights it starts from): valid_ndcg@10 0.3000  valid_mrr 0.2000  valid_hr@10 0.5000")


def test_a_warm_link_trains_the_hours_since_its_predecessor_at_a_scaled_rate():
    cfg = load_config(None, ["train.lr=0.002", "tune.window_shifts_h=[48,24,0]", "tune.warm_start=true"])
    link = warm_link(cfg, ("1m", 64, 3), 0.0, 24.0, "s3://b/ckpt")
    assert link == {"preset": "1m", "max_seq_len": 64, "seed": 3, "window_shift_h": 0.0, "init_from": "s3://b/ckpt",
                    "new_window_h": 24.0, "lr": 0.002 * 0.1}  # tune.warm_lr_scale's default
    cfg = load_config(None, ["train.lr=0.002", "tune.warm_lr_scale=0.25", "tune.warm_replay_h=72"])
    link = warm_link(cfg, ("1m", 64, 3), 24.0, 48.0, "s3://b/ckpt")
    assert (link["new_window_h"], link["lr"]) == (24.0 + 72.0, 0.0005)


def test_the_time_budget_reads_a_fine_tuning_runs_epoch_0_which_trained_nothing():
    """A fine-tuning run's epoch 0 (its transfer baseline) has figures but no wall time: the budget still applies."""
    cfg = load_config(None, ["train.time_budget_s=100", "train.patience=null"])
    start = [{"epoch": 0, "valid_ndcg@10": 0.1}]
    assert stop_reason(cfg, start, "valid_ndcg@10", 5.0, lambda t: t) is None
    one = start + [{"epoch": 1, "valid_ndcg@10": 0.2, "wall_time_s": 60.0}]
    assert stop_reason(cfg, one, "valid_ndcg@10", 60.0, lambda t: t) == "time budget"  # a second epoch ends at 120 s
