"""Joining Ray: the cluster named by RAY_ADDRESS (as under `ray job submit`), or an embedded local one.

Its own module so that the out-of-core shard builder (genrec.partitioned_build), the data preparation that calls it
(genrec.preparation) and the entrypoints all use it without importing each other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from genrec.config import GenrecConfig
from genrec.ray_helpers import watch_helpers

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


# Ray's system settings for a local Ray that genrec starts itself, where its training workers share this machine's
# cores with Ray's own daemons (raylet, GCS, dashboard) and the idle actors of a Ray Train run. Ray runs its worker
# processes 15 nice levels below its daemons by default (its worker_niceness); every wake-up of a daemon then preempts
# the training step's threads, and a CPU step trains slower (BENCHMARKS.md, "Ray's worker priority"). At 0 the
# workers run at the daemons' own level. A cluster's nodes keep Ray's default: its `ray start` decides.
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}


# Ray Train's settings for a local Ray, put in this process's environment before Ray starts (its processes inherit it,
# and Ray Train passes its own variables from the process that starts a run to the run's controller), unless the user
# set them. Its preemption watcher, an actor per run that asks Ray every 5 s whether a node is being drained, has
# nothing to watch on the one node of a Ray that genrec started here; its process would still wake beside the
# training worker, one of about ten idle actors of a run (BENCHMARKS.md, "Ray's dashboard and SCHED_BATCH beside the
# worker").
PREEMPTION_WATCHER_VAR = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
LOCAL_TRAIN_ENV = {PREEMPTION_WATCHER_VAR: "0"}


def local_train_env(environ: Mapping[str, str]) -> dict:
    """LOCAL_TRAIN_ENV less the variables `environ` already sets: a user's own value wins."""
    return {key: value for key, value in LOCAL_TRAIN_ENV.items() if key not in environ}


def set_local_env() -> None:
    """This process's environment for a local Ray it is about to start: WORKER_ENV and LOCAL_TRAIN_ENV (init_ray's,
    and the test suite's shared Ray's)."""
    set_worker_env()
    os.environ.update(local_train_env(os.environ))


def local_system_config(environ: Mapping[str, str]) -> dict:
    """LOCAL_SYSTEM_CONFIG less the settings `environ` gives as Ray's variables (RAY_<name>): one a user set wins,
    as Ray's own system config would otherwise override it."""
    return {key: value for key, value in LOCAL_SYSTEM_CONFIG.items() if f"RAY_{key}" not in environ}


def local_ray_options(environ: Mapping[str, str]) -> dict:
    """ray.init's options for a fresh embedded local Ray (init_ray's, and the test suite's shared Ray's)."""
    return {"address": "local", "include_dashboard": None, "dashboard_host": "127.0.0.1",
            "_node_ip_address": "127.0.0.1", "_system_config": local_system_config(environ)}


def set_worker_env() -> None:
    """WORKER_ENV into this process's environment, a variable already set kept: the processes a local Ray starts
    from here inherit it, and so does PyTorch in this process if it has not allocated yet."""
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)


def init_ray(cfg: GenrecConfig | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS (as under `ray job submit`), or start an embedded local Ray.

    A local Ray starts with local_ray_options: 127.0.0.1 as its node address, where its dashboard binds too, and
    local_system_config; and with this process's environment set by set_local_env first (WORKER_ENV,
    LOCAL_TRAIN_ENV), which its processes inherit; its idle helper processes then run under SCHED_IDLE
    (start_local_ray). The dashboard runs (Ray's default; one that fails to start is a warning, not an error) because
    Ray Train's placement-group cleaner asks its State API whether a run's controller is still alive: without it the
    cleaner cannot free a dead run's placement group and logs a warning every second of training. Ray 2.60's own gRPC
    servers (GCS, raylet, workers) still listen on every interface, with or without the dashboard (seen with `ss
    -ltnp`; docs/reliability.md): on a shared host, firewall them.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        set_worker_env()  # the driver's own (the cluster's processes get WORKER_ENV from the runtime environment)
        ray.init(log_to_driver=True)
    else:
        start_local_ray(num_cpus=num_cpus)


def start_local_ray(**options) -> None:
    """A fresh embedded local Ray as init_ray starts one (set_local_env, then local_ray_options), `options` given to
    ray.init on top (num_cpus; a benchmark's include_dashboard=False); then its idle helper processes (a run's
    controller and helper actors, the dashboard, the agents) run under SCHED_IDLE, so that they take a CPU training
    step's idle moments instead of its cores (genrec.ray_helpers; GENREC_IDLE_HELPERS=0 leaves them as Ray starts
    them)."""
    import ray

    set_local_env()  # before a local Ray starts: its processes inherit this environment
    # address="local": always a fresh embedded Ray. Without it ray.init() joins any cluster a `ray start` left on this
    # machine (and refuses num_cpus there); RAY_ADDRESS is how a command is pointed at a cluster.
    context = ray.init(**{**local_ray_options(os.environ), "configure_logging": True,
                           "logging_level": logging.WARNING, **options})
    watch_helpers(context.address_info["session_dir"])
