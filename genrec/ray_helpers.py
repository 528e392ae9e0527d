"""A local Ray's idle helper processes yield the CPU to training (Linux's SCHED_IDLE).

A Ray Train run on a Ray that genrec started on this machine brings about a dozen processes that mostly wait: the
run's controller, placement-group cleaner and synchronisation actor, Ray Data's coordinators and stats actor, and
Ray's dashboard (a head, a process per module), its agents, log monitor and autoscaler monitor. Each wakes tens to
hundreds of times a second, and on a small machine, waking, preempts a CPU training step's threads (BENCHMARKS.md,
"Ray's idle helpers under SCHED_IDLE"). A thread under SCHED_IDLE runs only on a core no normal thread wants and never
preempts one; the helpers then take the training step's idle moments instead of its cores.

`helper_pids` picks them out of the process tree under the process that started Ray, by what they are (a pure
function of the tree); `demote` puts every thread of each under SCHED_IDLE; `watch_helpers` does so every couple of
seconds for as long as this process lives, since every run starts new ones. Left as they are: the training workers,
Ray's core daemons (GCS, raylet), its pooled idle workers (Ray may make one the next training worker or Serve replica,
and an unprivileged process cannot leave SCHED_IDLE again), Tune's trial processes (they cut a run's windows), Serve's
processes, Ray Data's tasks and whatever else is not named here, and this process. Only processes of a Ray started
from this process (a cluster's nodes are not its descendants). Linux only: elsewhere watch_helpers does nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

# Actors that wait while a run trains, by the class name Ray puts in their process title ("ray::<class>.<method>").
HELPER_ACTORS = frozenset({
    "TrainController", "PlacementGroupCleaner", "SynchronizationActor", "PreemptionWatcher",  # Ray Train, per run
    "DatasetManager", "SplitCoordinator", "_StatsActor", "_AutoscalingCoordinatorActor",  # Ray Data's, per run
    "DashboardAgent", "RuntimeEnvAgent",  # the node's agents (workers of the raylet)
})
# Ray's Python services, by the script a process runs; every process under one of them (the dashboard's module
# processes and their forkserver) is a helper too.
HELPER_SCRIPTS = ("ray/dashboard/dashboard.py", "ray/_private/log_monitor.py", "ray/autoscaler/_private/monitor.py")

CHECK_INTERVAL_S = 2.0  # a new run's helpers wait at most this long; each check reads a few dozen /proc files
IDLE_HELPERS_VAR = "GENREC_IDLE_HELPERS"  # "0" keeps a local Ray's helpers at their normal priority


def actor_class(argv: Sequence[str]) -> str | None:
    """The class name in a Ray actor's process title ("ray::TrainController.run" -> "TrainController"), else None."""
    if not argv or not argv[0].startswith("ray::"):
        return None
    return argv[0][len("ray::"):].split(".", 1)[0].split(" ", 1)[0] or None


def is_helper(argv: Sequence[str]) -> bool:
    """Whether a process with these arguments (its /proc cmdline) is one of the helpers named above: an actor of
    HELPER_ACTORS, or an interpreter running one of HELPER_SCRIPTS (its first arguments after the options)."""
    if actor_class(argv) in HELPER_ACTORS:
        return True
    return any(argument.endswith(HELPER_SCRIPTS) for argument in argv[1:4])


def helper_pids(processes: Mapping[int, tuple[int, Sequence[str]]], root: int) -> set[int]:
    """The helpers among `root`'s descendants. `processes` maps pid -> (parent pid, arguments); a helper is a process
    is_helper names, or one under such a process; `root` itself never is."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    helpers: set[int] = set()
    frontier = [(pid, False) for pid in children.get(root, [])]
    while frontier:
        pid, under_helper = frontier.pop()
        helper = under_helper or is_helper(processes[pid][1])
        if helper:
            helpers.add(pid)
        frontier.extend((child, helper) for child in children.get(pid, []) if child != root)
    return helpers


def process_tree(root: int, proc: Path = Path("/proc")) -> dict[int, tuple[int, tuple[str, ...]]]:
    """pid -> (parent pid, arguments) for `root`'s descendants, read from /proc (each thread's `children` file); a
    process that ends while it is read is left out. OSError where this kernel has no `children` files (built without
    CONFIG_PROC_CHILDREN): the tree could not be read, which is not the same as an empty one."""
    if not (proc / str(root) / "task" / str(root) / "children").exists():
        raise OSError(f"{proc}/{root}/task/{root}/children is missing (a kernel without CONFIG_PROC_CHILDREN)")
    tree: dict[int, tuple[int, tuple[str, ...]]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        try:
            kids = [int(pid) for task in (proc / str(parent) / "task").iterdir()
                    for pid in (task / "children").read_text().split()]
        except OSError:  # it ended
            continue
        for pid in kids:
            try:
                # NUL-separated; a process title Ray set is padded with NULs
                raw = (proc / str(pid) / "cmdline").read_bytes()
            except OSError:
                continue
            tree[pid] = (parent, tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a))
            frontier.append(pid)
    return tree


def demote(pid: int, proc: Path = Path("/proc")) -> int:
    """Every thread of process `pid` under SCHED_IDLE (threads it starts later inherit it); how many threads changed.
    A process or thread that ended meanwhile is skipped."""
    changed = 0
    try:
        threads = [int(tid) for tid in os.listdir(proc / str(pid) / "task")]
    except OSError:
        return 0
    for tid in threads:
        try:
            if os.sched_getscheduler(tid) != os.SCHED_IDLE:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                changed += 1
        except (ProcessLookupError, FileNotFoundError):
            pass
    return changed


class HelperWatch:
    """Demotes the helpers under `root` every `interval_s` seconds in a daemon thread; `demoted` maps each pid it
    demoted to its arguments (the integration test reads it)."""

    def __init__(self, root: int, interval_s: float = CHECK_INTERVAL_S):
        self.root, self.interval_s = root, interval_s
        self.demoted: dict[int, tuple[str, ...]] = {}
        self.checked = threading.Event()  # set after each check
        self._thread = threading.Thread(target=self._run, name="genrec-idle-helpers", daemon=True)
        self._thread.start()

    def check(self) -> None:
        tree = process_tree(self.root)
        for pid in helper_pids(tree, self.root):
            if demote(pid) and pid not in self.demoted:
                self.demoted[pid] = tree[pid][1]
                logger.debug("SCHED_IDLE: %d %s", pid, " ".join(tree[pid][1]))
        self.checked.set()

    def _run(self) -> None:
        while True:  # a daemon thread: it ends with this process
            try:
                self.check()
            except OSError as e:  # /proc unreadable: say so once and stop, training goes on at normal priority
                logger.warning("genrec could not lower Ray's helper processes to SCHED_IDLE (%s); set %s=0 to not "
                               "try", e, IDLE_HELPERS_VAR)
                return
            time.sleep(self.interval_s)


_watch: HelperWatch | None = None


def helpers_go_idle(environ: Mapping[str, str]) -> bool:
    """Whether watch_helpers runs here: on Linux, unless the environment sets GENREC_IDLE_HELPERS=0."""
    return environ.get(IDLE_HELPERS_VAR) != "0" and hasattr(os, "SCHED_IDLE")


def watch_helpers(environ: Mapping[str, str] = os.environ) -> HelperWatch | None:
    """Start (once per process) the watch over the helpers of the Ray this process starts, where helpers_go_idle
    says; the watch, or None."""
    global _watch
    if not helpers_go_idle(environ):
        return None
    if _watch is None:
        _watch = HelperWatch(os.getpid())
    return _watch
