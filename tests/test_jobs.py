"""Pre-training submitted the documented way: `ray start --head` on 127.0.0.1 (its Jobs API behind Ray 2.59+'s token
auth), then `ray job submit --runtime-env <rendered runtime-env.yaml> -- python -m trainers.pretrain --config ...`:
the real Jobs CLI and API, two DeepSpeed ZeRO-3 workers under Ray Train on that cluster, one of them killed (SIGKILL
by PID) after the first epoch's checkpoint, the run resumed from it and finished, the loss falling and the checkpoint
found (and loaded without DeepSpeed) under storage afterwards. `--resume` on another worker count is
tests/test_disk_full.py's (in-process on the suite's Ray, which saves a second job's start-up): 1 worker to 2 (ZeRO-0
to ZeRO-1), the same consolidated-weights path as this job's run going on from ZeRO-3 on 2 workers to 1, which the
suite no longer runs."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pyarrow as pa
import pytest
import torch
import yaml

from genrec.console import LOG_NAME
from genrec.checkpoint import load_checkpoint
from genrec.cluster import runtime_env
from genrec.config import dump_config
from genrec.data.schema import DataError
from tests.conftest import free_port, tiny_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A local head started like a user would (`ray start --head --block`, in its own process group so the test
    stops exactly this cluster, not any other Ray on the machine). Token auth on; the CLI reads ~/.ray/auth_token,
    which `ray start` creates when it is missing."""
    tmp = tmp_path_factory.mktemp("head")
    # Its own short temp dir (socket paths are limited to ~107 bytes): the head's address file stays there, so no
    # other `ray.init()` on this machine mistakes this cluster for its own.
    ray_tmp = tempfile.mkdtemp(prefix="gr-", dir="/tmp")
    # The job's `python` is this venv's, as it is for a user who runs `ray start` from the activated venv.
    env = os.environ | {"RAY_AUTH_MODE": "token", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                        "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    log = open(tmp / "head.log", "w")
    # Every port its own: another Ray on this machine (the suite's embedded one) holds the default agent ports.
    ports = [f"--{name}={free_port()}" for name in ("port", "dashboard-port", "dashboard-agent-listen-port",
                                                    "dashboard-agent-grpc-port", "metrics-export-port",
                                                    "runtime-env-agent-port", "node-manager-port",
                                                    "object-manager-port", "ray-client-server-port")]
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", *ports,
         "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = "http://127.0.0.1:" + next(p for p in ports if p.startswith("--dashboard-port=")).split("=")[1]
    try:
        wait_for_jobs_api(url, proc, tmp / "head.log")
        yield url, env, ray_tmp
    finally:  # also when the head never came up: nothing of it may outlive the test
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:  # a finished job's idle workers can take long to exit on SIGTERM
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def wait_for_jobs_api(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Until the dashboard answers (a 401 without a token: the Jobs API is up, and guarded)."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=5)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"ray start --head did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(1)


def submit_command(head, *entrypoint, runtime_env: Path) -> list[str]:
    return [RAY, "job", "submit", "--address", head[0], "--runtime-env", str(runtime_env), "--", *entrypoint]


def submit(head, *entrypoint, runtime_env: Path, timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run(submit_command(head, *entrypoint, runtime_env=runtime_env), cwd=ROOT, env=head[1],
                          capture_output=True, text=True, timeout=timeout)


def train_workers(ray_tmp: str) -> list[psutil.Process]:
    """The Ray Train worker processes of the cluster whose temp dir is ray_tmp (its raylet's children), and of no
    other Ray on this machine. Processes that exit while they are looked at (zombies, gone) are skipped."""
    workers = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "raylet" in cmd and ray_tmp in cmd:
            try:
                children = p.children()
            except psutil.Error:
                continue
            for c in children:
                try:
                    argv = c.cmdline()  # once: a process exiting between two calls reads as [] the second time
                except psutil.Error:
                    continue
                if argv and argv[0].startswith("ray::RayTrainWorker"):
                    workers.append(c)
    return workers


def wait_for_workers(ray_tmp: str, count: int, proc: subprocess.Popen, timeout: float = 300) -> list[psutil.Process]:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        workers = train_workers(ray_tmp)
        if len(workers) == count:
            return workers
        time.sleep(0.2)
    pytest.fail(f"{count} Ray Train workers never ran (job finished: {proc.poll() is not None})")


def wait_for_checkpoint(run: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until Ray Train has registered a checkpoint of the run (its checkpoint manager's snapshot names one)."""
    deadline = time.time() + timeout
    snapshot = run / "checkpoint_manager_snapshot.json"
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                return
        except (OSError, ValueError):  # not written yet, or caught mid-write
            pass
        time.sleep(0.1)
    pytest.fail(f"no checkpoint registered under {run} (job finished: {proc.poll() is not None})")


@pytest.fixture(scope="module")
def job_config(tmp_path_factory):
    """A tiny pre-training config as a YAML file, and the runtime env `genrec cluster render` writes for it (no pip
    list: this head's Python already has genrec's dependencies). Two ZeRO-3 workers, in-batch negatives with logQ
    and 3-token MTP (the sweep's trials in tests/test_integration.py train sampled softmax; full softmax trains in
    tests/test_model.py, and through Ray it differs only in its FLOPs count)."""
    tmp = tmp_path_factory.mktemp("job")
    cfg = tiny_config(tmp / "storage", "name=job", "train.workers=2", "train.cpus_per_worker=0.5",
                      "train.zero_stage=3", "train.epochs=3", "tracking.wandb=offline", "model.decoding=in_batch",
                      "model.logq=true", "model.mtp_k=3", f"cluster={{storage_mount: {tmp}, pip: []}}",
                      "train.peak_tflops=0.5")  # a declared peak: MFU is reported on CPU too
    path = tmp / "job.yaml"
    path.write_text(dump_config(cfg))
    env = tmp / "runtime-env.yaml"  # the file `genrec cluster render` writes (ray-cluster.yaml would need an NFS)
    env.write_text(yaml.safe_dump(runtime_env(cfg), sort_keys=False))
    return cfg, path, env


@pytest.fixture(scope="module")
def killed_run(head, job_config, failing_job, tmp_path_factory):
    """The 3-epoch 2-worker job, one of its Ray Train workers SIGKILLed after epoch 1's checkpoint: (exit code, the
    job's output, the run folder). Submitted once the Jobs API took a job (the failing one)."""
    cfg, path, runtime_env = job_config
    log = tmp_path_factory.mktemp("killed") / "job.log"
    with open(log, "w") as out_file:
        proc = subprocess.Popen(submit_command(head, "python", "-m", "trainers.pretrain", "--config", str(path),
                                               "--name", "pretrain-job", runtime_env=runtime_env),
                                cwd=ROOT, env=head[1], stdout=out_file, stderr=subprocess.STDOUT)
        run = cfg.storage.path("runs", "pretrain-job")
        try:
            # The workers are found before the first checkpoint, so the kill follows its registration at once
            # (within one 0.1 s poll) and lands in epoch 2 of 3, never after the run's last epoch.
            workers = wait_for_workers(head[2], 2, proc)
            wait_for_checkpoint(run, proc)
            workers[1].kill()  # SIGKILL: no handler runs, as when a node's OOM killer or a preemption strikes
            proc.wait(timeout=480)
        finally:
            if proc.poll() is None:
                proc.kill()
    return proc.returncode, log.read_text(), run


def test_pretrain_job_two_workers_zero3_survives_a_killed_worker(job_config, killed_run):
    cfg = job_config[0]
    returncode, out, run = killed_run
    assert returncode == 0 and "succeeded" in out, out[-4000:]
    # Ray Train restarted the worker group; training went on from the epoch-1 checkpoint, not from scratch. (The
    # kill follows that checkpoint's registration within a 0.1 s poll; epoch 2 takes ~1 s. Were it ever to land in
    # epoch 3, the resume from epoch 2's checkpoint is the same path, so both are accepted; a kill after the last
    # epoch, which the 2-epoch version of this job once saw, leaves no resume and fails here.)
    resumed = re.search(r"resumed from checkpoint_\S+ after epoch (\d) \(restart 1\)", out)
    assert resumed and resumed[1] in ("1", "2"), out[-4000:]
    assert out.count("epoch 3/3: loss") == 1, out[-4000:]  # the job's own progress, streamed back once by the CLI
    # Quiet by default: the job's output has genrec's lines, with no worker's line as Ray forwards it ("(Name pid=N)
    # ..."); those, with Ray Data's and Ray Train's own, are in the run's log file, whose path the job said.
    log = run / LOG_NAME
    assert f"log: {log}" in out, out[-4000:]
    forwarded = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+", re.MULTILINE)
    assert not forwarded.search(out), out[-4000:]
    logged = log.read_text()
    assert forwarded.search(logged) and "epoch 3/3: loss" in logged and "resumed from checkpoint_" in logged
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["restarts"] for h in history] == [0] * int(resumed[1]) + [1] * (3 - int(resumed[1]))
    losses = [h["loss"] for h in history]
    assert losses[2] < losses[0], losses
    # The resumed run continues the count: events and wall time add up across the restart.
    events = [h["events_processed"] for h in history]
    assert all(abs(e - (k + 1) * events[0]) < 0.1 * e for k, e in enumerate(events)), events
    for h in history:
        assert 0 < h["valid_mrr"] <= 1 and h["events_per_s"] > 0 and h["valid_requests"] > 0
        assert 0 <= h["popularity_valid_ndcg@10"] <= 1  # the bar beside the figure, on the same requests
        assert h["flops_per_token"] > 0 and h["model_tflops_per_s"] > 0
        assert h["mfu"] == pytest.approx(h["model_tflops_per_s"] / (0.5 * 2))  # 2 workers of 0.5 TFLOP/s
        assert 0 <= h["input_wait_s"] < h["epoch_time_s"]  # time blocked on Ray Data for the next batch
        assert h["input_wait_share"] == pytest.approx(h["input_wait_s"] / h["epoch_time_s"])
        # The config asks for ZeRO-3 (train.zero_stage=3, set by this test): DeepSpeed runs it, each of the 2 ranks
        # holding about half of the parameters (partitions are padded to the ranks), not a silent stage 0-2.
        assert h["zero_stage"] == 3 and 0.45 <= h["param_share_per_rank"] <= 0.6, h
    # wandb wrote an offline run beside the results
    assert list(cfg.storage.path("wandb").rglob("offline-run-*"))
    # The checkpoint under storage loads with plain torch (no DeepSpeed) and ranks the whole catalogue.
    checkpoints = sorted(p for p in run.glob("checkpoint_*") if p.is_dir())
    assert 2 <= len(checkpoints) <= 3  # CheckpointConfig keeps the best two, and the latest
    loaded = load_checkpoint(checkpoints[-1])
    assert loaded.spec.layers == 2 and loaded.spec.num_items == loaded.items.num_rows
    z = torch.zeros(1, 4, dtype=torch.long)
    now = torch.tensor([int(loaded.items.column("launch_ts").to_numpy().max()) + 86_400])
    scores = loaded.model.score_last(torch.tensor([[1, 2, 3, 0]]), z, z, torch.ones(1, 4), torch.tensor([3]),
                                     request_ts=now)
    assert scores.shape == (1, loaded.spec.num_items + 1) and torch.isfinite(scores[0, 1:]).all()
    # A title launched after training joins the catalogue without retraining, scored from its metadata alone.
    twin = loaded.items.slice(0, 1)
    new = pa.table({"item_id": [10**9], "title": twin.column("title"), "genres": twin.column("genres"),
                    "year": twin.column("year"), "launch_ts": twin.column("launch_ts"), "text": twin.column("text")})
    assert loaded.add_items(new) == [loaded.spec.num_items + 1]
    scores = loaded.model.score_last(torch.tensor([[1, 2, 3, 0]]), z, z, torch.ones(1, 4), torch.tensor([3]),
                                     request_ts=now)
    assert scores.shape == (1, loaded.spec.num_items + 2) and torch.isfinite(scores[0, -1])
    with pytest.raises(DataError, match="already in the catalogue"):
        loaded.add_items(new)


@pytest.fixture(scope="module")
def failing_job(head, job_config) -> subprocess.CompletedProcess:
    """A pre-training job whose config is refused (train.workers=0), submitted as soon as the dashboard answers: it is
    also the Jobs API's readiness probe. The dashboard answers before its job agent has registered ("No available
    agent to submit job"), so it is submitted again until an agent takes it; its own start-up is the job's."""
    _, path, runtime_env = job_config
    deadline = time.time() + 120
    while True:
        done = submit(head, "python", "-m", "trainers.pretrain", "--config", str(path), "--set", "train.workers=0",
                      runtime_env=runtime_env, timeout=180)
        if "No available agent" not in done.stdout + done.stderr:
            return done
        if time.time() > deadline:
            pytest.fail(f"the Jobs API at {head[0]} took no job:\n{(done.stdout + done.stderr)[-3000:]}")
        time.sleep(2)


def test_a_failing_job_shows_its_error(failing_job):
    out = failing_job.stdout + failing_job.stderr
    assert failing_job.returncode == 1 and "failed" in out, out[-4000:]
    # The job's log ends with genrec's one-line error naming the key, not a traceback.
    assert "train.workers: Input should be greater than or equal to 1" in out and "Traceback" not in out, out[-4000:]
