"""Joining Ray: the cluster named by RAY_ADDRESS (as under `ray job submit`), or an embedded local one.

Its own module so that the out-of-core shard builder (genrec.partitioned_build), the data preparation that calls it
(genrec.preparation) and the entrypoints all use it without importing each other.
"""

from __future__ import annotations

import logging
import os

from genrec.config import GenrecConfig


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
    # Quiet the per-epoch progress bars of Ray Data inside training workers; our own progress is the epoch table.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        # address="local": always a fresh embedded Ray. Without it ray.init() joins any cluster a `ray start` left
        # on this machine (and refuses num_cpus there); RAY_ADDRESS is how a command is pointed at a cluster.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=None, dashboard_host="127.0.0.1",
                 configure_logging=True, logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
