"""Joining Ray: the cluster named by RAY_ADDRESS (as under `ray job submit`), or an embedded local one.

Its own module so that the out-of-core shard builder (genrec.partitioned_build), the data preparation that calls it
(genrec.preparation) and the entrypoints all use it without importing each other.
"""

from __future__ import annotations

import logging
import os

from genrec.config import GenrecConfig

# The environment every Ray process of a genrec session gets (set before a local Ray starts, in the runtime
# environment of a remote cluster's jobs); a variable already set is left as it is.
WORKER_ENV = {
    # Ray Data's per-epoch progress bars inside training workers; our own progress is the epoch table.
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    # PyTorch places CPU tensors of 2 MiB and more in transparent huge pages: a step's logits and activations are
    # then faulted in 2 MiB pages instead of 4 KiB ones, page faults per step fall about tenfold and the step is
    # faster on CPU (BENCHMARKS.md). Read once per process, at its first allocation, so it must be in the
    # environment a worker starts with. The kernel's THP mode "never" makes it a no-op; GPU memory is not touched.
    "THP_MEM_ALLOC_ENABLE": "1",
}


def set_worker_env() -> None:
    """WORKER_ENV into this process's environment, a variable already set kept: the processes a local Ray starts
    from here inherit it, and so does PyTorch in this process if it has not allocated yet."""
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)


def init_ray(cfg: GenrecConfig | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS (as under `ray job submit`), or start an embedded local Ray.

    Local Ray is given 127.0.0.1 as its node address and its dashboard binds there. The dashboard runs (Ray's default;
    one that fails to start is a warning, not an error) because Ray Train's placement-group cleaner asks its State
    API whether a run's controller is still alive: without it the cleaner cannot free a dead run's placement group
    and logs a warning every second of training. Ray 2.60's own gRPC servers (GCS, raylet, workers) still listen on
    every interface, with or without the dashboard (seen with `ss -ltnp`; docs/reliability.md): on a shared host,
    firewall them.
    """
    import ray

    if ray.is_initialized():
        return
    set_worker_env()  # before a local Ray starts: its processes inherit this environment
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        # address="local": always a fresh embedded Ray. Without it ray.init() joins any cluster a `ray start` left
        # on this machine (and refuses num_cpus there); RAY_ADDRESS is how a command is pointed at a cluster.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=None, dashboard_host="127.0.0.1",
                 configure_logging=True, logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
