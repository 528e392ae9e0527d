"""Sweep max_seq_len x size preset with Ray Tune: `python -m tuning.sweep --config configs/local.yaml`.

Each trial is a function that builds the same `TorchTrainer` as `trainers.pretrain` (Ray Train V2: Tune drives a
driver function, metrics come back through `TuneReportCallback`). Trials are ranked by their kept epoch's validation
figure (`eval.select_metric`, genrec.selection); the winner alone is then scored on the test split, once. The winner
manifest (checkpoint path, config, validation and test figures, cost) is written atomically under storage, where
`serving.app` finds it.
"""

from __future__ import annotations

import math
import numbers
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import ray.tune
from ray.tune import ExperimentAnalysis
from ray.tune.integration.ray_train import TuneReportCallback

from genrec.console import LOG_NAME, keep_log, print_table, say
from genrec.config import (ConfigError, GenrecConfig, TuneConfig, dump_config, stored_config, with_values,
                           without_secrets)
from genrec.defaults import resolve as resolve_defaults
from genrec.entrypoint import run_entrypoint
from genrec.errors import Interrupted, SweepFailed
from genrec.holdout import figures, popularity, score_test
from genrec.preparation import prepare_shards
from genrec.ray_session import init_ray
from genrec.runs import history_path, topk_path
from genrec.selection import BEST_SO_FAR, TEST, best_record, rank_trials, selection_key, winning_trial
from genrec.shards import open_shards
from genrec.storage import StorageError, atomic_write_json, is_uri
from genrec.study import RUN_FILE
from genrec.train import fit
from genrec.winner import WinnerCost, WinnerManifest, write_winner_manifest

# The trial function only drives a TorchTrainer; Tune refuses an empty resource request.
TRIAL_CPUS = 0.01
# popularity_valid_ndcg@10: the bar beside the trial's figure (popularity on the same validation requests).
TRIAL_COLUMNS = ["rank", "preset", "max_seq_len", "seed", "window_shift_h", "backbone_params", "valid_mrr",
                 "valid_hr@10", "valid_ndcg@10", "popularity_valid_ndcg@10", "loss", "best_epoch", "events_per_s",
                 "wall_time_s", "status"]
FIGURES = ("valid_mrr", "valid_hr@10", "valid_ndcg@10", "popularity_valid_ndcg@10", "loss", "events_per_s")
RECIPE = "recipe.yaml"  # in the sweep's folder: the winner's whole config


def trial_config(base: dict, preset: str, max_seq_len: int, epochs: int | None, seed: int | None = None,
                 window_shift_h: float | None = None, values: dict | None = None) -> GenrecConfig:
    """A trial's config from the sweep's config tree, validated once (the search's sampled values set in the tree
    first); both readers migrate it, as a resumed sweep's param space may come from an earlier genrec."""
    cfg = with_values(base, values) if values else stored_config(base)
    cfg.model.preset = preset
    cfg.model.max_seq_len = max_seq_len
    if epochs:
        cfg.train.epochs = epochs
    if seed is not None:
        cfg.train.seed = seed
    if window_shift_h is not None:
        cfg.train.window_shift_h = window_shift_h
    return cfg


def run_trial(config: dict) -> None:
    """Tune function trainable: one distributed training run for one (preset, max_seq_len, seed, window shift) and,
    in a search, the trial's sampled values (config["values"]); a warm level's trial (config["link"]) starts from its
    predecessor's checkpoint and trains on the hours since."""
    config = config | config.get("link", {})
    cfg = trial_config(config["base"], config["preset"], config["max_seq_len"], config["epochs"], config["seed"],
                       config["window_shift_h"], config.get("values"))
    if config.get("init_from"):
        cfg.train.init_from, cfg.train.new_window_h = config["init_from"], config["new_window_h"]
        cfg.train.lr = config.get("lr", cfg.train.lr)  # a warm level started before tune.warm_lr_scale: as it ran
    shards = open_shards(config["shards"], cfg.storage.store())
    cfg = resolve_defaults(cfg, shards)
    ctx = ray.tune.get_context()
    name = (f"{config['sweep']}-{config['preset']}-len{config['max_seq_len']}-s{config['seed']}"
            f"-w{config['window_shift_h']:g}{'-warm' if config.get('init_from') else ''}-{ctx.get_trial_id()}")
    atomic_write_json(Path(ctx.get_trial_dir(), RUN_FILE),
                      {"run": name, "history": str(history_path(cfg, name)), "topk": str(topk_path(cfg, name)),
                       "preset": cfg.model.preset, "max_seq_len": cfg.model.max_seq_len})  # "auto" resolved
    fit(cfg, shards, name, callbacks=[TuneReportCallback()], reserved_cpus=TRIAL_CPUS,
        resume_hint=False, each_epoch=False)  # a trial goes on with the sweep's --resume


def trained_shape(record) -> dict:
    """The preset and max_seq_len a trial trained, from one of its reported epochs ("auto" resolved from the data),
    where the record has them. A pandas row holds numpy scalars (np.int64 is no int: a sweep over max_seq_len "auto"
    kept the word and its winner manifest was refused)."""
    shape = {}
    if "preset" in record and isinstance(record["preset"], str):
        shape["preset"] = record["preset"]
    length = record.get("max_seq_len") if hasattr(record, "get") else None
    if isinstance(length, numbers.Real) and not isinstance(length, bool) and length == length:  # NaN: not reported
        shape["max_seq_len"] = int(length)
    return shape


def summarize(results, key: str) -> list[dict]:
    """One row per trial at the epoch it keeps (the highest validation `key`, earliest of equals), ranked by that
    figure (best first; failed trials last): genrec.selection's best_record and rank_trials."""
    rows = []
    for result in results:
        params = result.config | result.config.get("link", {})
        row = {"preset": params["preset"], "max_seq_len": params["max_seq_len"], "seed": params.get("seed", 0),
               "window_shift_h": params.get("window_shift_h", 0.0), "status": "ok", "error": None,
               **({"values": dict(params["values"])} if params.get("values") else {}),
               **({"warm": True, "init_from": params["init_from"], "new_window_h": params["new_window_h"],
                   **({"lr": params["lr"]} if "lr" in params else {})} if params.get("init_from") else {})}
        df = result.metrics_dataframe
        epochs = df.to_dict("records") if df is not None else []
        best = best_record(epochs, key) if result.error is None else None
        if best is None:
            row.update(status="failed", error=str(result.error) if result.error else "no metrics reported")
            rows.append(row)
            continue
        last = epochs[-1]
        row.update(trained_shape(best))
        row.update({k: float(best[k]) for k in FIGURES if best.get(k) is not None})  # a warm start's epoch 0: no loss
        row["backbone_params"] = int(best["backbone_params"])
        flops = last.get("train_flops")  # NaN in a row whose epoch had no count
        row.update(best_epoch=int(best["epoch"]), checkpoint=best.get("checkpoint_path"),
                   wall_time_s=float(last["wall_time_s"]), events_processed=int(last["events_processed"]),
                   train_flops=None if flops is None or math.isnan(flops) else float(flops),
                   trial_id=result.metrics.get("trial_id"))
        rows.append(row)
    return ranked(rows, key)


def ranked(rows: list[dict], key: str) -> list[dict]:
    """The rows ranked by their kept validation figure (genrec.selection.rank_trials), each with its place."""
    out = rank_trials(rows, key)
    for place, row in enumerate(out, 1):
        row["rank"] = place if row["status"] == "ok" else "-"
    return out


def warm_levels(cfg: GenrecConfig, shards, sweep: str, experiment: str, rows: list[dict], trainable) -> list[dict]:
    """tune.warm_start: for each cell and seed, the training windows from the oldest to the freshest, each retrain
    starting from the previous link's kept checkpoint and training on the hours since (the oldest retrain from
    scratch that finished starts the chain; a failed link is bridged by the retrain from scratch at its window). One
    Tune experiment per window, `warm-w<shift>` in the sweep's folder (restored, not rerun, by `--resume`: a restored
    window keeps the links it started with, even where a retrain from scratch that failed then finished)."""
    store = cfg.storage.store()
    key = selection_key(cfg.eval.select_metric)
    cold = {(r["preset"], r["max_seq_len"], r["seed"], r["window_shift_h"]): r["checkpoint"] for r in rows
            if r["status"] == "ok" and r.get("checkpoint")}
    last: dict[tuple, tuple[float, str]] = {}  # (preset, max_seq_len, seed) -> the chain's last (shift, checkpoint)
    out = []
    for shift in sorted(set(cfg.tune.window_shifts_h), reverse=True):
        links = [warm_link(cfg, cell, shift, before, store.uri(checkpoint))
                 for cell, (before, checkpoint) in sorted(last.items())]
        level = warm_level(cfg, shards, sweep, experiment, shift, links, trainable, key) if links else []
        out += level
        done = {(r["preset"], r["max_seq_len"], r["seed"]): r["checkpoint"] for r in level
                if r["status"] == "ok" and r.get("checkpoint")}
        for cell in {c[:3] for c in cold} | set(last):
            if cell in done or (*cell, shift) in cold:
                last[cell] = (shift, done.get(cell) or cold[(*cell, shift)])
    return out


def warm_link(cfg: GenrecConfig, cell: tuple, shift: float, before: float, checkpoint: str) -> dict:
    """One warm-started retrain of a (preset, max_seq_len, seed) cell on the window ending `shift` h before the
    cutoff, from the checkpoint of the cell's retrain on the window ending `before` h before it: its targets are the
    hours since (plus tune.warm_replay_h older ones), at train.lr times tune.warm_lr_scale."""
    preset, max_seq_len, seed = cell
    return {"preset": preset, "max_seq_len": max_seq_len, "seed": seed, "window_shift_h": shift,
            "init_from": checkpoint, "new_window_h": before - shift + cfg.tune.warm_replay_h,
            "lr": cfg.train.lr * cfg.tune.warm_lr_scale}


def warm_level(cfg: GenrecConfig, shards, sweep: str, experiment: str, shift: float, links: list[dict], trainable,
               key: str) -> list[dict]:
    """One window's warm-started retrains as a Tune experiment inside the sweep's folder -> their rows."""
    store = cfg.storage.store()
    name = f"warm-w{shift:g}"
    path = f"{experiment.rstrip('/')}/{name}"
    since = " or ".join(f"{h:g}" for h in sorted({link["new_window_h"] for link in links}))
    say(f"sweep {sweep}: {len(links)} warm-started retrains on the window ending {shift:g} h before the cutoff, each "
        f"trained on its last {since} h from its predecessor's weights")
    if store.is_dir(path) and ray.tune.Tuner.can_restore(path, storage_filesystem=store.fs):
        tuner = ray.tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True,
                                       storage_filesystem=store.fs)
    else:
        space = {"base": cfg.model_dump(mode="json"), "shards": str(shards.root), "sweep": sweep,
                 "epochs": cfg.tune.epochs, "link": ray.tune.grid_search(links)}
        tuner = ray.tune.Tuner(trainable, param_space=space,
                               tune_config=ray.tune.TuneConfig(max_concurrent_trials=cfg.tune.max_concurrent_trials),
                               run_config=ray.tune.RunConfig(name=name, storage_path=experiment, verbose=0,
                                                             storage_filesystem=store.fs if store.remote else None))
    results, interrupted = fit_noting_interrupt(tuner)
    stopped = stopped_trials(results.filesystem, results.experiment_path) if interrupted is not False else []
    if interrupted or stopped:
        raise Interrupted(f"sweep {sweep}: stopped during the warm-started retrains of {name}; no winner written. Go "
                          f"on with the same --config and --set flags and `--resume {sweep}` (finished trials "
                          f"kept): {store.uri(path)}")
    return summarize(results, key)


def failure_causes(rows: list[dict]) -> str:
    """The failed trials' errors on one line: each distinct cause (the last line of its error, where a Ray error's
    traceback ends in the exception) after the trials it stopped."""
    causes: dict[str, dict[str, None]] = {}
    for row in rows:
        if row["status"] != "ok":
            lines = str(row["error"]).strip().splitlines() or ["unknown error"]
            causes.setdefault(lines[-1].strip(), {})[f"{row['preset']}/len{row['max_seq_len']}"] = None
    return "; ".join(f"{', '.join(trials)}: {cause}" for cause, trials in causes.items())


def write_winner(cfg: GenrecConfig, sweep: str, rows: list[dict], experiment: str | None = None,
                 shards=None) -> WinnerManifest:
    """`experiment`: the Tune folder the rows come from, in the storage's filesystem (default: the sweep's under
    storage.root/tune). With `shards`, the winner (chosen on validation) is scored on their test split, once."""
    cfg = without_secrets(cfg)  # the manifest and the recipe beside it are files anyone with the storage reads
    store = cfg.storage.store()
    for r in rows:  # Tune names checkpoints by their path in the storage's filesystem: the manifest by their URI
        if isinstance(r.get("checkpoint"), str) and r["checkpoint"]:
            r["checkpoint"] = store.uri(r["checkpoint"])
    key = selection_key(cfg.eval.select_metric)
    # The freshest window's best trial on validation, among the retrains from scratch (a recipe that trains again
    # without its predecessors; warm-started retrains stand beside them in the trial table).
    best = winning_trial([r for r in rows if not r.get("warm")], key)
    if best is None or not best.get("checkpoint"):
        what = (f"every trial failed ({failure_causes(rows)})" if best is None else
                f"the winning trial {best['preset']}/len{best['max_seq_len']} kept no checkpoint")
        raise SweepFailed(f"sweep {sweep}: {what}; no winner written. Each trial's error.txt under "
                          f"{store.uri(experiment or experiment_dir(cfg, sweep))} holds its traceback; fix the cause, "
                          f"then `--resume {sweep}` with the same --config and --set flags reruns the failed trials")
    winner_cfg = trial_config(cfg.model_dump(mode="json"), best["preset"], best["max_seq_len"], None, best["seed"],
                              best["window_shift_h"], best.get("values"))
    test = popular = None
    if shards is not None:
        winner_cfg = resolve_defaults(winner_cfg, shards, echo=lambda *_: None)
        test = figures(score_test(cfg, shards, best["checkpoint"]), TEST)
        popular = figures(popularity(cfg, shards, "eval"), TEST)
    manifest = WinnerManifest(
        sweep=sweep,
        experiment=store.uri(experiment or experiment_dir(cfg, sweep)),
        created_at=time.time(),
        # How the winner was chosen: only validation figures; the test split was read once, for the winner.
        selection=f"highest {key} (validation split), freshest retrains",
        metric=key,
        checkpoint=best["checkpoint"],
        preset=best["preset"],
        max_seq_len=best["max_seq_len"],
        seed=best["seed"],
        metrics={k: best[k] for k in ("valid_mrr", "valid_hr@10", "valid_ndcg@10", "loss", "best_epoch")},
        values=best.get("values"),
        test=test,
        test_popularity=popular,  # the bar: titles ranked by training events, on the same test requests
        # The winning trial's whole training, in the trainer's own FLOPs count (genrec.build.model_flops_per_token).
        cost=WinnerCost(wall_time_s=best["wall_time_s"], events_processed=best["events_processed"],
                        train_flops=best.get("train_flops")),
        config=winner_cfg,
        trials=[{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))} for r in rows],
    )
    write_winner_manifest(store, cfg.winner_path(), manifest)
    # The winner's whole config beside the trials: a recipe to commit under configs/ and train again.

    store.write_bytes(f"{experiment or experiment_dir(cfg, sweep)}/{RECIPE}",
                      (f"# the winner of sweep {sweep}, chosen on {manifest.metric} (validation)\n"
                       + dump_config(winner_cfg)).encode())
    return manifest


def resume_dir(cfg: GenrecConfig, resume: str) -> str:
    """The experiment folder a `--resume` names (a path or URI, or a sweep name under the config's storage), as a
    path in the storage's filesystem."""
    store = cfg.storage.store()
    try:
        path = store.locate(resume) if is_uri(resume) or (not store.remote and Path(resume).expanduser().is_dir()) \
            else experiment_dir(cfg, resume)
    except StorageError as exc:
        raise ConfigError(f"--resume {resume}: {exc}") from None
    if not store.is_dir(path) or not ray.tune.Tuner.can_restore(path, storage_filesystem=store.fs):
        raise ConfigError(f"--resume {resume}: {store.uri(path)} is not a Tune experiment folder (it holds no "
                          "experiment_state-*.json); pass the folder `genrec sweep` printed, or a sweep name under "
                          f"{store.uri(experiment_dir(cfg, ''))}")
    return path


def run(cfg: GenrecConfig, sweep: str | None = None, rebuild: bool = False,
        resume: str | None = None) -> WinnerManifest:
    cfg = without_secrets(cfg)  # the serve token reaches no trial, experiment state, manifest or recipe
    store = cfg.storage.store()
    if resume:
        path = resume_dir(cfg, resume)
        sweep = path.rstrip("/").rsplit("/", 1)[-1]
    else:
        sweep = sweep or f"sweep-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    keep_log(store, "tune", sweep, LOG_NAME)
    shards = prepare_shards(cfg, rebuild=rebuild)
    init_ray(cfg)
    tune_cfg = cfg.tune
    trainable = ray.tune.with_resources(run_trial, {"cpu": TRIAL_CPUS})
    if resume:
        # A sweep that was stopped (Ctrl-C, a lost head node): finished trials are kept as they are; trials that
        # were running or had failed start again. Every trial keeps the configuration the sweep started with.
        say(f"sweep {sweep}: resuming {store.uri(path)} (finished trials kept; unfinished and failed ones rerun)")
        tuner = ray.tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True,
                                       storage_filesystem=store.fs)
    else:
        key = selection_key(cfg.eval.select_metric)
        if tune_cfg.search == "grid":
            trials = trial_count(tune_cfg)
            cells = len(tune_cfg.presets) * len(tune_cfg.max_seq_lens)
            retrains = f" x {len(tune_cfg.seeds) * len(tune_cfg.window_shifts_h)} retrains" if trials > cells else ""
            say(f"sweep {sweep}: presets {tune_cfg.presets} x max_seq_len {tune_cfg.max_seq_lens}{retrains}, "
                f"{trials} trials, ranked by {key} -> {store.uri(experiment_dir(cfg, sweep))}")
        else:
            say(f"sweep {sweep}: {tune_cfg.search} search over {', '.join(tune_cfg.space)} (and presets "
                f"{tune_cfg.presets} x max_seq_len {tune_cfg.max_seq_lens}), {tune_cfg.num_samples} trials"
                + (f", ASHA from epoch {tune_cfg.asha_grace_period}" if tune_cfg.asha_grace_period else "")
                + f", ranked by {key} -> {store.uri(experiment_dir(cfg, sweep))}")
        tuner = ray.tune.Tuner(
            trainable,
            param_space=param_space(cfg, shards, sweep),
            tune_config=tune_config(cfg),
            run_config=ray.tune.RunConfig(name=sweep, storage_path=store.path("tune"), verbose=0,
                                          storage_filesystem=store.fs if store.remote else None),
        )
    results, interrupted = fit_noting_interrupt(tuner)
    experiment = results.experiment_path  # where Tune wrote (a --resume folder may lie outside storage.root/tune)
    # Read only when needed: on an interruption (to count), or when Tune caught no signal here (not the main thread,
    # or its SIGINT handler disabled) and the saved state is what tells.
    stopped = stopped_trials(results.filesystem, experiment) if interrupted is not False else []
    if interrupted or stopped:
        # A winner picked now could be a trial stopped mid-run, and serving would take it: nothing is written.

        done = results.num_terminated - len(stopped)
        planned = trial_count(tune_cfg) if not resume else len(results)
        raise Interrupted(f"sweep {sweep}: stopped with {done} of {planned} trials finished; no winner written. "
                          f"Go on with the same --config and --set flags and "
                          f"`--resume {resume or sweep}` (finished trials kept; stopped ones continue from their last "
                          f"epoch's checkpoint, failed ones rerun): {store.uri(experiment)}")
    key = selection_key(cfg.eval.select_metric)
    rows = summarize(results, key)
    if tune_cfg.warm_start:
        rows = ranked(rows + warm_levels(cfg, shards, sweep, experiment, rows, trainable), key)
    searched = list(tune_cfg.space) if tune_cfg.search != "grid" else []
    warm = ["warm"] if tune_cfg.warm_start else []
    print_table([r | (r.get("values") or {}) for r in rows], TRIAL_COLUMNS[:5] + warm + TRIAL_COLUMNS[5:6] + searched
                + TRIAL_COLUMNS[6:])
    manifest = write_winner(cfg, sweep, rows, experiment, shards)
    test, pop = manifest.test, manifest.test_popularity
    say(f"winner: {manifest.preset} max_seq_len {manifest.max_seq_len} ({key} {manifest.metrics[key]:.4f};"
        f" test, read once: ndcg@10 {test['ndcg@10']:.4f}, hr@10 {test['hr@10']:.4f}, mrr {test['mrr']:.4f}; "
        f"popularity {pop['ndcg@10']:.4f}, {pop['hr@10']:.4f}, {pop['mrr']:.4f}) -> {store.uri(cfg.winner_path())}")
    return manifest


def domain(dim):
    """A tune.space dimension as a Ray Tune search domain."""
    if dim.kind == "choice":
        return ray.tune.choice(dim.values)
    if dim.kind == "int":
        return ray.tune.randint(int(dim.low), int(dim.high) + 1)
    return (ray.tune.loguniform if dim.kind == "loguniform" else ray.tune.uniform)(dim.low, dim.high)


def param_space(cfg: GenrecConfig, shards, sweep: str) -> dict:
    """What Tune varies: the grid's axes, or (a search) one sample of tune.space per trial, the presets and lengths
    as choices."""
    tune_cfg = cfg.tune
    # A JSON tree, not a GenrecConfig: Tune's params.json (which `genrec report` reads) would stringify the object.
    space = {"base": cfg.model_dump(mode="json"), "shards": str(shards.root), "sweep": sweep,
             "epochs": tune_cfg.epochs}
    if tune_cfg.search == "grid":
        return space | {"preset": ray.tune.grid_search(tune_cfg.presets),
                        "max_seq_len": ray.tune.grid_search(tune_cfg.max_seq_lens),
                        "seed": ray.tune.grid_search(tune_cfg.seeds),
                        "window_shift_h": ray.tune.grid_search(tune_cfg.window_shifts_h)}

    def one_or_choice(values):
        return values[0] if len(values) == 1 else ray.tune.choice(values)

    return space | {"preset": one_or_choice(tune_cfg.presets), "max_seq_len": one_or_choice(tune_cfg.max_seq_lens),
                    "seed": tune_cfg.seeds[0], "window_shift_h": tune_cfg.window_shifts_h[0],
                    "values": {k: domain(d) for k, d in tune_cfg.space.items()}}


def tune_config(cfg: GenrecConfig):
    """Tune's settings: a grid runs every cell; a search samples tune.num_samples trials (Optuna's TPE or at random),
    and ASHA stops the ones whose validation figure lags at each rung."""
    tune_cfg = cfg.tune
    if tune_cfg.search == "grid":
        return ray.tune.TuneConfig(max_concurrent_trials=tune_cfg.max_concurrent_trials)
    search_alg = None
    if tune_cfg.search == "optuna":
        # Imported here, where a search asks for it: optuna takes seconds to import, and a grid never needs it.
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=cfg.train.seed)
    scheduler = None
    if tune_cfg.asha_grace_period:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=tune_cfg.epochs or cfg.train.epochs,
                                  grace_period=tune_cfg.asha_grace_period,
                                  reduction_factor=tune_cfg.asha_reduction_factor)
    # The searcher and ASHA read a trial's latest report: its best validation figure so far, not the epoch's own.
    return ray.tune.TuneConfig(metric=BEST_SO_FAR, mode="max", search_alg=search_alg, scheduler=scheduler,
                               num_samples=tune_cfg.num_samples, max_concurrent_trials=tune_cfg.max_concurrent_trials)


def fit_noting_interrupt(tuner):
    """tuner.fit(), and whether Ctrl-C (SIGINT) or SIGUSR1 stopped it: then Tune saves the experiment state, stops
    the running trials (marking them TERMINATED, like finished ones) and returns normally. Its signal handler puts
    back the SIGINT handler it found when (and only when) it fires: a marker installed here tells. None when Tune
    catches no signal in this thread. The handlers found are restored afterwards (Tune leaves its own installed,
    which would swallow a later Ctrl-C of the pipeline's report or serve steps)."""
    if threading.current_thread() is not threading.main_thread():
        return tuner.fit(), None
    found = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1)}

    def marker(signum, frame):  # the handler Tune finds and restores; behaves as the one found
        handler = found[signal.SIGINT]
        if callable(handler):
            return handler(signum, frame)
        if handler != signal.SIG_IGN:  # SIG_DFL (or unknown): what Python's default SIGINT handling does
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, marker)
    try:
        results = tuner.fit()
        interrupted = signal.getsignal(signal.SIGINT) is marker
        return results, (interrupted if os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") == "0" else None)
    finally:
        for sig, handler in found.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def stopped_trials(fs, path: str) -> list[str]:
    """Ids of the trials a sweep left unfinished, from the experiment state Tune wrote one last time before stopping
    them (what `Tuner.restore` resumes from): RUNNING or PENDING there."""
    trials = ExperimentAnalysis(path, storage_filesystem=fs).trials
    return [t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")]


def trial_count(tune_cfg: TuneConfig) -> int:
    """How many trials a new sweep runs: every grid cell's retrains, or a search's samples."""
    if tune_cfg.search != "grid":
        return tune_cfg.num_samples
    return len(tune_cfg.presets) * len(tune_cfg.max_seq_lens) * len(tune_cfg.seeds) * len(tune_cfg.window_shifts_h)


def experiment_dir(cfg: GenrecConfig, sweep: str) -> str:
    """Where Tune writes the sweep's results (what `genrec report` reads), in the storage's filesystem."""
    return cfg.storage.store().path("tune", sweep)


def main(argv: list[str] | None = None) -> int:
    return run_entrypoint("python -m tuning.sweep", __doc__, run, argv, resume="SWEEP")


if __name__ == "__main__":
    sys.exit(main())


def latest_experiment(cfg: GenrecConfig):
    """The newest sweep folder under the config's storage (for `genrec report` without a folder)."""
    store = cfg.storage.store()
    root = store.path("tune")
    sweeps = [d for d in store.list(root) if d.type == pafs.FileType.Directory]
    if not sweeps:
        raise ConfigError(f"{store.uri(root)}: no sweep results; run `genrec sweep --config ...` first, or pass "
                          "RESULTS_DIR")
    # Object stores keep no folder times: the newest experiment state file inside each sweep dates it.
    def newest(d) -> float:
        states = [e.mtime.timestamp() for e in store.list(d.path) if e.base_name.startswith("experiment_state")
                  and e.mtime is not None]
        return max(states, default=d.mtime.timestamp() if d.mtime else 0.0)
    return store.uri(max(sweeps, key=newest).path)
