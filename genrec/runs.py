"""A training run's folder and what is said about it: its name (a new run, or one that goes on), its per-epoch
history and top-k files, and the one line an entrypoint prints when Ray Train gives up on it or Ctrl-C stops it."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray.train

from genrec.checkpoint import RAY_SNAPSHOT, checkpoint_folders, last_whole_checkpoint, resume_point
from genrec.config import ConfigError, GenrecConfig
from genrec.errors import GenrecError


def code_commit() -> str:
    """The git commit genrec's code was checked out at ("+changes" when the tree differs from it), for the record a
    checkpoint keeps of what wrote it; "unknown" outside a git checkout (an installed wheel)."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    commit = git("rev-parse", "HEAD")
    if not commit or not top or Path(top).resolve() != repo:  # an installed genrec inside another repository
        return "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def check_run_name(cfg: GenrecConfig, run_name: str | None, resume: str | None) -> tuple[str | None, str | None]:
    """The run's name, and the checkpoint folder to go on from when Ray Train cannot say (else None; see
    resume_point). Ray Train continues any run whose folder holds its record of checkpoints (same storage and name),
    so continuing must be asked for: `--resume NAME` needs that run's checkpoint, `--name NAME` a name without any."""
    store = cfg.storage.store()
    if resume:
        if run_name and run_name != resume:
            raise ConfigError(f"--name {run_name} and --resume {resume}: a resumed run keeps its name; drop --name")
        return resume, resume_point(cfg, resume, required=True)
    if run_name:
        folder = store.path("runs", run_name)
        if store.is_file(f"{folder}/{RAY_SNAPSHOT}") or checkpoint_folders(store, folder):
            raise ConfigError(f"--name {run_name}: {store.uri(folder)} holds a run already; pass --resume {run_name} "
                              "to continue it, or choose another name")
    return run_name, None


def history_path(cfg: GenrecConfig, run_name: str) -> str:
    """The run's per-epoch history, a path in the storage's filesystem (cfg.storage.store())."""
    return cfg.storage.store().path("runs", run_name, "history.json")


def read_history(cfg: GenrecConfig, run_name: str) -> list[dict]:
    return json.loads(cfg.storage.store().read_text(history_path(cfg, run_name)))


def topk_path(cfg: GenrecConfig, run_name: str) -> str:
    return cfg.storage.store().path("runs", run_name, "topk.parquet")


def write_topk(store, path: str, rows: list) -> None:
    """Each request's top-k titles (item indices) at delay 0, for the retrain-stability analysis."""
    rows = sorted(rows)
    table = pa.table({"user_id": pa.array([r[0] for r in rows], pa.int64()),
                      "ts": pa.array([r[1] for r in rows], pa.int64()),
                      "items": pa.array([r[2] for r in rows], pa.list_(pa.int32()))})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    store.write_bytes(path, buf.getvalue())


class TrainingFailed(GenrecError, RuntimeError):
    """A run Ray Train gave up on (a worker's error past train.max_failures, or its controller's, such as a full
    disk under storage): said in one line by the entrypoints, with the checkpoint left and how to go on."""
    exit_code = 1


def failure_cause(exc: Exception) -> str:
    """The last line of each distinct error behind a Ray Train failure (its tracebacks are in the run's log)."""
    if isinstance(exc, ray.train.ControllerError):
        causes = [exc.controller_failure]
    elif isinstance(exc, ray.train.WorkerGroupError):
        causes = [e for _, e in sorted(exc.worker_failures.items())]
    else:
        causes = [exc]
    lines = []
    for e in causes:
        text = [line.strip() for line in str(e).splitlines() if line.strip()]
        line = text[-1] if text else type(e).__name__
        lines.append(line if line.split(":")[0].split(".")[-1].endswith(("Error", "Exception"))
                     else f"{type(e).__name__}: {line}")
    return "; ".join(dict.fromkeys(lines))


def failure_message(cfg: GenrecConfig, run_name: str, exc: Exception, resume_hint: bool = True) -> str:
    try:
        found, epoch = last_whole_checkpoint(cfg, run_name)
    except Exception as scan:  # the store itself failing: say so, keep the run's own cause first
        return f"training run {run_name} failed: {failure_cause(exc)}; its checkpoints could not be listed ({scan})"
    if found is None:
        left = "no whole checkpoint was written"
    else:
        left = f"its last whole checkpoint is {found} (epoch {epoch})"
        if resume_hint:
            left += f"; once the cause is fixed, go on with --resume {run_name}"
    return f"training run {run_name} failed: {failure_cause(exc)}; {left}"


def interrupt_message(cfg: GenrecConfig, run_name: str) -> str:
    """What a Ctrl-C left: the run's last whole checkpoint and the command that goes on from it."""
    try:
        found, epoch = last_whole_checkpoint(cfg, run_name)
    except Exception as scan:  # the store itself failing: the interruption is still what to say first
        return f"training run {run_name} stopped; its checkpoints could not be listed ({scan})"
    if found is None:
        return f"training run {run_name} stopped before its first checkpoint; nothing to resume, start it again"
    return (f"training run {run_name} stopped; its last whole checkpoint is {found} (epoch {epoch}); go on with "
            f"the same --config and --set flags and --resume {run_name}")
