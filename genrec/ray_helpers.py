"""A local Ray's idle helper processes yield the CPU to training (Linux's SCHED_IDLE).

A Ray Train run on a Ray that genrec started on this machine brings processes that mostly wait: the run's
controller, placement-group cleaner and synchronisation actor, Ray Data's coordinators and stats actor, and Ray's
dashboard (a head, a process per module), its agents, log monitor and autoscaler monitor. Each wakes often, and on a
small machine, waking, preempts a CPU training step's threads (BENCHMARKS.md, "Ray's idle helpers under
SCHED_IDLE"). A thread under SCHED_IDLE runs only on a core no normal thread wants and never preempts one; the helpers
then take the training step's idle moments instead of its cores.

`helper_pids` picks them out of the process tree under the process that started Ray, by what they are and by the Ray
session they belong to (a pure function of the tree); `demote` puts every thread of each under SCHED_IDLE;
`watch_helpers` does so every couple of seconds for as long as this process lives, since every run starts new ones. Left
as they are: the training workers, Ray's core daemons (GCS, raylet), its pooled idle workers (Ray may make one the next
training worker or Serve replica, and an unprivileged process cannot leave SCHED_IDLE again), Tune's trial processes
(they cut a run's windows), Serve's processes, Ray Data's tasks and whatever else is not named here, and this process.
Only processes of the Ray session this process started: another Ray under it (a `ray start --block` head) and a
cluster's nodes are left alone. The synchronisation actor sits on a multi-worker run's checkpoint barrier; a worker
waiting there leaves its core idle, where the actor then runs. Linux only: elsewhere watch_helpers does nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
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

CHECK_INTERVAL_S = 2.0  # a new run's helpers wait at most this long; a check reads about a hundred /proc files
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


def children_by_parent(processes: Mapping[int, tuple]) -> dict[int, list[int]]:
    """parent pid -> its children's pids, from pid -> (parent pid, ...) as process_tree reads it."""
    children: dict[int, list[int]] = {}
    for pid, process in processes.items():
        children.setdefault(process[0], []).append(pid)
    return children


def names_session(argv: Sequence[str], session_dir: str) -> bool:
    """Whether a process's arguments name the Ray session folder: Ray's own processes started from `root` do."""
    return any(session_dir in argument for argument in argv)


def helper_pids(processes: Mapping[int, tuple], root: int, session_dir: str) -> set[int]:
    """The helpers of the Ray whose session folder is `session_dir`, among `root`'s descendants. `processes` maps
    pid -> (parent pid, arguments, ...) as process_tree reads it. The processes that Ray started from `root` name
    that folder in their arguments (GCS, raylet, dashboard, monitors); a helper is one of them, or a process under
    them, that is_helper names, or a process under such a helper. Another Ray started from `root` (a `ray start
    --block` head a test runs) has another session folder and is left out; so is `root` itself."""
    children = children_by_parent(processes)
    helpers: set[int] = set()
    frontier = [(pid, False) for pid in children.get(root, []) if names_session(processes[pid][1], session_dir)]
    while frontier:
        pid, under_helper = frontier.pop()
        helper = under_helper or is_helper(processes[pid][1])
        if helper:
            helpers.add(pid)
        frontier.extend((child, helper) for child in children.get(pid, []) if child != root)
    return helpers


def walk_below(pid: int, process: tuple, root: int, session_dir: str, settled: set[tuple[int, int]]) -> bool:
    """Whether the watch reads the children of `process` (parent pid, arguments, start time), found under `root`: not
    for a child of `root` that does not name the session folder (another Ray's, or not Ray's: helper_pids starts only
    from those that name it), nor for a Ray worker that is no helper (a training worker, a pooled one, a trial: Ray's
    processes are started by the raylet, not by a worker, so none under it is a helper), nor for a helper in `settled`
    (pid, start time: every thread of it already idle, so whatever it starts inherits SCHED_IDLE). The walk skips the
    threads of those processes (the training worker has dozens), which is most of what a check reads."""
    parent, argv, started = process[:3]
    if parent == root and not names_session(argv, session_dir):
        return False
    if actor_class(argv) is not None and not is_helper(argv):
        return False
    return (pid, started) not in settled


def process_tree(root: int, proc: Path = Path("/proc"),
                 descend: Callable[[int, tuple], bool] | None = None) -> dict[int, tuple[int, tuple[str, ...], int]]:
    """pid -> (parent pid, arguments, start_time) for `root`'s descendants, read from /proc (each thread's `children`
    file); a process that ends while it is read is left out. With `descend`, the children of a process are read only
    where descend(pid, (parent pid, arguments, start_time)) is true (`root`'s always): the processes below the others
    are left out. The start time is read before the arguments: should the pid pass to another process in between,
    demote's check against it leaves that one alone. OSError where this kernel has no `children` files (built without
    CONFIG_PROC_CHILDREN): the tree could not be read, which is not the same as an empty one."""
    if not (proc / str(root) / "task" / str(root) / "children").exists():
        raise OSError(f"{proc}/{root}/task/{root}/children is missing (a kernel without CONFIG_PROC_CHILDREN)")
    tree: dict[int, tuple[int, tuple[str, ...], int]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        try:
            kids = [int(pid) for task in (proc / str(parent) / "task").iterdir()
                    for pid in (task / "children").read_text().split()]
        except OSError:  # it ended
            continue
        for pid in kids:
            started = start_time(pid, proc)
            if started is None:  # it ended
                continue
            try:
                # NUL-separated; a process title Ray set is padded with NULs
                raw = (proc / str(pid) / "cmdline").read_bytes()
            except OSError:
                continue
            tree[pid] = (parent, tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a), started)
            if descend is None or descend(pid, tree[pid]):
                frontier.append(pid)
    return tree


def start_time(pid: int, proc: Path = Path("/proc")) -> int | None:
    """When process `pid` started (clock ticks after boot, /proc/<pid>/stat's 22nd field), None once it has ended: with
    its pid, it names one process, since an ended process's pid can be given to a new one."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def demote(pid: int, started: int | None = None, proc: Path = Path("/proc")) -> int:
    """Every thread of process `pid` under SCHED_IDLE (threads it starts later inherit it); how many threads changed.
    With `started` (its start_time when it was picked out), a process with another start time is another process that
    got the pid since, and is left alone. A process or thread that ended meanwhile is skipped; PermissionError where
    the kernel refuses (the caller says so)."""
    if started is not None and start_time(pid, proc) != started:
        return 0
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


def settled_helpers(tree: Mapping[int, tuple], changed: Mapping[int, int],
                    settled: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """The helpers that settle in this check: (pid, start time) of each that demote found wholly idle already
    (`changed`: pid -> threads demote changed in this check) and whose every child in `tree` has settled, before or in
    this check (deepest first). The walk no longer reads below a settled helper (walk_below), so a helper settles only
    once everything under it has: a child it forked while the check ran, found at normal priority in the next check,
    keeps it unsettled until that child is idle too, and whatever the child forked meanwhile is still found. A refused
    child never settles, and neither does its parent."""
    kids = children_by_parent(tree)

    def depth(pid: int) -> int:
        d = 0
        while pid in tree:
            pid, d = tree[pid][0], d + 1
        return d

    out = set(settled)
    for pid in sorted((pid for pid, n in changed.items() if n == 0), key=depth, reverse=True):
        if all((kid, tree[kid][2]) in out for kid in kids.get(pid, [])):
            out.add((pid, tree[pid][2]))
    return out - settled


class HelperWatch:
    """Demotes the helpers of the Ray with session folder `session_dir` under `root` every `interval_s` seconds, in a
    daemon thread. `demoted` maps each pid it demoted to its arguments, `refused` each pid the kernel would not demote
    to the error (each said once, as a warning); `failed` is why the watch stopped (it cannot read the process tree),
    else None. Read them through a copy: the thread adds to them."""

    def __init__(self, root: int, session_dir: str, interval_s: float = CHECK_INTERVAL_S):
        self.root, self.session_dir, self.interval_s = root, session_dir, interval_s
        self.demoted: dict[int, tuple[str, ...]] = {}
        self.refused: dict[int, str] = {}
        self.failed: str | None = None
        # (pid, start time) of helpers found with every thread idle already, and everything under them too
        # (settled_helpers): threads and processes they start inherit it, so they are neither demoted nor walked below
        # again
        self._settled: set[tuple[int, int]] = set()
        self._thread = threading.Thread(target=self._run, name="genrec-idle-helpers", daemon=True)
        self._thread.start()

    def check(self) -> None:
        tree = process_tree(self.root, descend=self.descend)
        # those that ended go (a settled helper is in the tree: only what is under it is left out)
        self._settled &= {(pid, process[2]) for pid, process in tree.items()}
        changed: dict[int, int] = {}
        for pid in helper_pids(tree, self.root, self.session_dir):
            if pid in self.refused or (pid, tree[pid][2]) in self._settled:
                continue
            try:
                changed[pid] = demote(pid, tree[pid][2])
            except PermissionError as e:
                self.refused[pid] = str(e)
                logger.warning("genrec could not put Ray's helper process %d (%s) under SCHED_IDLE: %s; it keeps its "
                               "priority", pid, " ".join(tree[pid][1])[:80], e)
                continue
            if changed[pid] and pid not in self.demoted:
                self.demoted[pid] = tree[pid][1]
                logger.debug("SCHED_IDLE: %d %s", pid, " ".join(tree[pid][1]))
        self._settled |= settled_helpers(tree, changed, self._settled)

    def descend(self, pid: int, process: tuple) -> bool:
        """Whether check reads this process's children (walk_below, with the helpers settled so far)."""
        return walk_below(pid, process, self.root, self.session_dir, self._settled)

    def state(self) -> str:
        """What the watch did, for a benchmark's record: "SCHED_IDLE" when it demoted helpers, runs and was refused
        none; otherwise what went wrong."""
        if self.failed is not None:
            return f"failed: {self.failed}"
        if self.refused:
            return f"SCHED_IDLE, {len(self.refused)} refused"
        return "SCHED_IDLE" if self.demoted else "none found"

    def _run(self) -> None:
        while True:  # a daemon thread: it ends with this process
            try:
                self.check()
            except OSError as e:  # the tree unreadable: said once; training goes on at Ray's priorities
                self.failed = str(e)
                logger.warning("genrec could not put Ray's helper processes under SCHED_IDLE (%s); set %s=0 to not "
                               "try", e, IDLE_HELPERS_VAR)
                return
            time.sleep(self.interval_s)


_watch: HelperWatch | None = None


def helpers_go_idle(environ: Mapping[str, str]) -> bool:
    """Whether watch_helpers runs here: on Linux, unless the environment sets GENREC_IDLE_HELPERS=0."""
    return environ.get(IDLE_HELPERS_VAR) != "0" and hasattr(os, "SCHED_IDLE")


def watch_helpers(session_dir: str, environ: Mapping[str, str] = os.environ) -> HelperWatch | None:
    """Watch the helpers of the Ray this process just started (its session folder: ray.init's
    address_info["session_dir"]), where helpers_go_idle says: one watch per process, moved to the newest Ray. The
    watch, or None."""
    global _watch
    if not helpers_go_idle(environ):
        return None
    if _watch is None:
        _watch = HelperWatch(os.getpid(), session_dir)
    _watch.session_dir = session_dir
    return _watch


def helper_watch() -> HelperWatch | None:
    """This process's watch, None before watch_helpers started one."""
    return _watch


def helpers_state(environ: Mapping[str, str] = os.environ) -> str:
    """What became of this process's Ray's helpers, for a benchmark's record: "normal" where the watch does not run
    (GENREC_IDLE_HELPERS=0, not Linux), else its HelperWatch.state()."""
    if not helpers_go_idle(environ) or _watch is None:
        return "normal"
    return _watch.state()
