import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genrec.config import load_config
from genrec.ray_helpers import watch_helpers
from genrec.ray_session import local_ray_options, set_local_env


# Credentials for the tests' own S3 server (s3_root), set before any Ray starts so its workers inherit them; they also
# keep a stray test from ever reaching a real AWS account. No instance-metadata lookups on this machine.
os.environ.update(AWS_ACCESS_KEY_ID="genrec-test", AWS_SECRET_ACCESS_KEY="genrec-test", AWS_EC2_METADATA_DISABLED="true")
# Ray Train's controller polls its workers every 2 s by default: each of the suite's ~10 training runs waits up to
# that long to be seen finished, and the killed-worker job as long to be seen failed. Set before any Ray starts (the
# suite's own, and the test head's, whose processes inherit this environment).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for every integration test (starting Ray costs seconds; 2 CPUs like CI). With its dashboard,
    as genrec.ray_session.init_ray starts it: Ray Train's placement-group cleaner asks the dashboard's State API whether a
    stopped run's controller is dead, and without it leaves the run's group held (seen in the Ctrl-C sweep test)."""
    import ray

    # the environment init_ray gives a local Ray's processes (Ray heads the suite starts with `ray start` inherit it)
    set_local_env()
    # Replicas' metrics reach the node's Prometheus endpoint every second instead of every 10 (the metrics test).
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
    context = ray.init(**local_ray_options(os.environ), num_cpus=2, log_to_driver=False)
    # its helpers under SCHED_IDLE, as init_ray's local branch puts a local Ray's
    watch_helpers(context.address_info["session_dir"])
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


# Synthetic data and a 2-block model: small enough for a CPU test, the same code path as a 1B run.
TINY = ["name=test", "data.synthetic.users=150", "data.synthetic.items=80", "data.synthetic.events_per_user=30",
        "model.preset=custom", "model.layers=2", "model.width=32", "model.heads=2", "model.max_seq_len=16",
        "model.projection_ratio=4", "model.decoding=sampled", "model.dropout=0.0", "train.epochs=3",
        "train.batch_size=16", "train.lr=0.01", "train.warmup_steps=2", "train.torch_threads=1",
        "train.patience=null", "train.time_budget_s=null", "tracking.wandb=disabled"]


def tiny_config(root, *overrides):
    return load_config(None, [f"storage.root={root}", *TINY, f"serve.port={free_port()}", *overrides])


def tiny_flags(root, *overrides) -> list[str]:
    """The same settings as an entrypoint's --set flags."""
    return [a for o in [f"storage.root={root}", *TINY, *overrides] for a in ("--set", o)]


@pytest.fixture(scope="session")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("genrec-runs")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-protocol server (moto) on 127.0.0.1 in its own process -> its endpoint "127.0.0.1:PORT"."""
    port = free_port()
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def s3_uri(endpoint: str, bucket: str, prefix: str = "") -> str:
    """storage.root for a bucket on the tests' S3 server (created on first write)."""
    return (f"s3://{bucket}{'/' + prefix if prefix else ''}?endpoint_override={endpoint}&scheme=http"
            "&region=us-east-1&allow_bucket_creation=true")
