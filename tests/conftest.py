import os
import socket

import pytest

from genrec.config import load_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for every integration test (starting Ray costs seconds; 2 CPUs like CI)."""
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def tiny_config(root, *overrides):
    """Synthetic data and a 2-block model: small enough for a CPU test, the same code path as a 1B run."""
    return load_config(None, [
        f"storage.root={root}", "name=test",
        "data.synthetic.users=150", "data.synthetic.items=80", "data.synthetic.events_per_user=30",
        "model.preset=custom", "model.layers=2", "model.width=32", "model.heads=2", "model.max_seq_len=16",
        "model.projection_ratio=4",
        "model.dropout=0.0", "train.epochs=3", "train.batch_size=16", "train.lr=0.01", "train.warmup_steps=2",
        "tracking.wandb=disabled", f"serve.port={free_port()}", *overrides])


@pytest.fixture(scope="session")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("genrec-runs")
