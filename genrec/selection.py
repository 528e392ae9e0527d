"""Model selection on validation data: which epoch a run keeps, when it stops, which trial wins.

One rule everywhere (the trainer's kept checkpoint and early stopping, Tune's ranking, the sweep's winner, the
report): the highest validation figure of the selection metric (`eval.select_metric` on the primary task, at no
serving delay), the earliest epoch among equals. A trial is scored by its kept epoch's figure; a sweep's winner is the
best trial among those trained on the freshest window. Test figures never enter a choice: they are scored once, for
the selected model, after the choice is made. Pure functions over plain records (dicts: an epoch's figures, or a
trial's), tested on hand-made histories and trials.
"""

from __future__ import annotations

import math

VALID = "valid_"  # metric-name prefix of a validation figure
TEST = "test_"  # ... and of a test figure (scored once, for the selected checkpoint)
# ... and of a shifted retrain's figure on the validation requests every retrain shares (eval.moving_validation):
# what retrains are compared on, never what one keeps its epochs by
SHARED = "shared_valid_"
# How a run ended, the `end` of its last history record (genrec.train.stop_reason), read by the sweep report.
EARLY_STOPPING = "early stopping"  # train.patience epochs without a better validation figure
TIME_BUDGET = "time budget"  # train.time_budget_s spent
MAX_EPOCHS = "max epochs"  # all of train.epochs run


def selection_key(metric: str, task: str | None = None) -> str:
    """The history key a choice is made on: `valid_<metric>` (e.g. valid_ndcg@10: the primary task), or a task's
    own `valid_<metric>_<task>` (fine-tuning on that task)."""
    return VALID + metric + (f"_{task}" if task else "")


def _value(record: dict, key: str) -> float:
    v = record.get(key)
    return float(v) if isinstance(v, (int, float)) and not math.isnan(v) else -math.inf


def best_record(history: list[dict], key: str) -> dict | None:
    """The epoch record with the highest `key` (the earliest of equals); None when no epoch has a figure."""
    best = None
    for record in history:
        if _value(record, key) > (-math.inf if best is None else _value(best, key)):
            best = record
    return best


def epochs_since_best(history: list[dict], key: str) -> int:
    """Epochs trained after the best one (0: the last epoch is the best; every epoch when none has a figure)."""
    best = best_record(history, key)
    if best is None:
        return len(history)
    return len(history) - 1 - history.index(best)


SCORE = "selection_score"  # the figure checkpoints are kept by: the selection figure, earlier epochs first on ties
BEST_SO_FAR = "selection_best"  # the best selection figure up to this epoch: what a search's scheduler compares


def selection_scores(history: list[dict], key: str) -> dict:
    """What the trainer reports beside the last epoch's figures so that Ray agrees with this module: SCORE breaks ties
    toward the earlier epoch (Ray Train deletes the earliest of equally scored checkpoints first, which would delete
    the one this rule keeps), and BEST_SO_FAR is the best figure so far (Tune's searchers and ASHA read a trial's
    latest report, which under patience is several epochs past its best)."""
    value = _value(history[-1], key)
    best = best_record(history, key)
    return {SCORE: value - 1e-9 * history[-1].get("epoch", len(history)),
            BEST_SO_FAR: _value(best, key) if best is not None else -math.inf}


def should_stop(history: list[dict], key: str, patience: int | None) -> bool:
    """Early stopping: `patience` epochs in a row without a better validation figure (None: never)."""
    return patience is not None and bool(history) and epochs_since_best(history, key) >= patience


def budget_spent(wall_times_s: list[float], elapsed_s: float, budget_s: float | None) -> bool:
    """The time budget as a ceiling: spent once the run's wall time has reached it, or when one more epoch at the
    last epoch's pace would end past it. `wall_times_s`: each finished epoch's wall time since the run started, so
    the last epoch's pace is everything it took (training, validation, its checkpoint before it); None: no budget.
    A run then ends within its budget unless an epoch runs slower than the one before it."""
    if budget_s is None:
        return False
    ends = [0.0, 0.0, *wall_times_s]  # the run's start stands before the first epoch; no epoch yet: no pace
    last_epoch_s = ends[-1] - ends[-2]
    return elapsed_s >= budget_s or elapsed_s + last_epoch_s > budget_s


def rank_trials(trials: list[dict], key: str) -> list[dict]:
    """Trials best first by `key` (each one's kept-epoch figure), the earlier of equals first; trials without a figure
    (failed ones) last, in the order given."""
    return sorted(trials, key=lambda trial: -_value(trial, key))


WINDOW_SHIFT = "window_shift_h"  # a trial's hours between its training window's end and the cutoff (0: freshest)


def winning_trial(trials: list[dict], key: str) -> dict | None:
    """The trial a sweep serves: among the trials with a figure, those trained on the freshest window (the smallest
    WINDOW_SHIFT: shifted retrains are there to measure retrain stability, serving wants the latest events),
    then the highest `key` (the earliest of equals, as best_record). A better trial on an older window never wins.
    None when no trial has a figure."""
    scored = [trial for trial in trials if _value(trial, key) > -math.inf]
    if not scored:
        return None
    freshest = min(trial.get(WINDOW_SHIFT, 0.0) for trial in scored)
    return best_record([trial for trial in scored if trial.get(WINDOW_SHIFT, 0.0) == freshest], key)
