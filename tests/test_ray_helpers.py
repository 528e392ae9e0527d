import os
import subprocess
import sys
import time

import pytest

from genrec.ray_helpers import (actor_class, demote, helper_pids, helpers_go_idle, is_helper, process_tree,
                                watch_helpers)

linux_only = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")


def test_actor_class_is_read_from_rays_process_title():
    assert actor_class(("ray::TrainController.run",)) == "TrainController"
    assert actor_class(("ray::_StatsActor",)) == "_StatsActor"
    assert actor_class(("ray::IDLE",)) == "IDLE"
    assert actor_class(("/usr/bin/python", "-u", "x.py")) is None
    assert actor_class(()) is None


def test_helpers_are_the_named_actors_and_services_and_what_runs_under_them():
    venv = "/home/a user/.venv/lib/python3.11/site-packages/"  # a space in the path: arguments are not split on it
    processes = {
        10: (1, ("python", "-m", "genrec", "train")),  # the driver that started Ray (root)
        11: (10, (venv + "ray/core/src/ray/gcs/gcs_server", "--log_dir=x")),
        12: (10, (venv + "ray/core/src/ray/raylet/raylet", "--raylet_socket_name=x")),
        13: (10, ("python", venv + "ray/dashboard/dashboard.py", "--host=127.0.0.1")),
        14: (13, ("python", "-B", "-c", "from multiprocessing.forkserver import main")),  # under the dashboard
        15: (14, ("ray-dashboard-StateHead-0 (python -B -c ...)",)),
        16: (10, ("python", "-u", venv + "ray/_private/log_monitor.py", "--session-dir=x")),
        17: (10, ("python", "-u", venv + "ray/autoscaler/_private/monitor.py", "--logs-dir=x")),
        20: (12, ("ray::TrainController.run",)),
        21: (12, ("ray::PlacementGroupCleaner",)),
        22: (12, ("ray::SynchronizationActor",)),
        23: (12, ("ray::DatasetManager",)),
        24: (12, ("ray::SplitCoordinator.start_epoch",)),
        25: (12, ("ray::_StatsActor",)),
        26: (12, ("ray::_AutoscalingCoordinatorActor",)),
        27: (12, ("ray::DashboardAgent",)),
        28: (12, ("ray::RuntimeEnvAgent",)),
        30: (12, ("ray::RayTrainWorker",)),  # trains
        31: (12, ("ray::IDLE",)),  # a pooled worker: Ray may make it the next training worker
        32: (12, ("ray::ImplicitFunc.train",)),  # a Tune trial: cuts its run's windows
        33: (12, ("ray::ServeReplica:app:Recommender",)),
        34: (12, ("ray::ReadParquet->MapBatches(windows)",)),  # a Ray Data task in a pooled worker
        40: (1, ("ray::TrainController.run",)),  # another session's: not under root
        41: (1, ("python", venv + "ray/dashboard/dashboard.py")),
    }
    assert helper_pids(processes, root=10) == {13, 14, 15, 16, 17, 20, 21, 22, 23, 24, 25, 26, 27, 28}
    assert helper_pids(processes, root=12) == {20, 21, 22, 23, 24, 25, 26, 27, 28}
    assert helper_pids(processes, root=99) == set()
    assert not is_helper(("python", "-c", "print('ray/dashboard/dashboard.py')", "x", "ray/dashboard/dashboard.py"))


@linux_only
def test_demote_puts_every_thread_of_a_named_helper_under_sched_idle_and_leaves_the_rest():
    """Real processes under this one, named as Ray names its own: a helper actor, a training worker, a shell running
    as if it were Ray's dashboard with a child of its own (a helper by descent), and a process named nothing."""
    started = [subprocess.Popen(["ray::TrainController.run", "60"], executable="/bin/sleep"),
               subprocess.Popen(["ray::RayTrainWorker", "60"], executable="/bin/sleep"),
               subprocess.Popen(["sh", "-c", "sleep 60; :", "/venv/ray/dashboard/dashboard.py"]),
               subprocess.Popen(["sleep", "60"])]
    try:
        controller, worker, dashboard, plain = (p.pid for p in started)
        deadline = time.monotonic() + 10
        while True:  # until the shell has started its sleep
            # only these processes and theirs: this process may have started a Ray too (the suite's)
            tree = {pid: (parent, argv) for pid, (parent, argv) in process_tree(os.getpid()).items()
                    if pid in (controller, worker, dashboard, plain) or parent == dashboard}
            below = [pid for pid, (parent, _) in tree.items() if parent == dashboard]
            if below or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert tree[controller] == (os.getpid(), ("ray::TrainController.run", "60"))
        helpers = helper_pids(tree, os.getpid())
        assert helpers == {controller, dashboard, *below} and len(below) == 1
        for pid in helpers:  # (the suite's own watch may have got to some of them first)
            demote(pid)
            assert demote(pid) == 0  # already idle: nothing changed
            assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        assert os.sched_getscheduler(worker) == os.sched_getscheduler(os.getpid()) != os.SCHED_IDLE
        assert demote(plain) == 1  # its one thread
    finally:
        for p in started:
            p.kill()
            p.wait()
    assert demote(controller) == 0  # ended: skipped


def test_the_watch_is_not_started_where_the_user_turned_it_off():
    assert not helpers_go_idle({"GENREC_IDLE_HELPERS": "0"})
    assert watch_helpers({"GENREC_IDLE_HELPERS": "0"}) is None
    assert helpers_go_idle({"GENREC_IDLE_HELPERS": "1"}) == helpers_go_idle({}) == hasattr(os, "SCHED_IDLE")


def test_process_tree_reads_every_threads_children_and_nul_separated_arguments(tmp_path):
    def process(pid: int, cmdline: bytes, children: dict[int, str]):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(cmdline)
        for tid, kids in children.items():
            (tmp_path / str(pid) / "task" / str(tid)).mkdir(parents=True)
            (tmp_path / str(pid) / "task" / str(tid) / "children").write_text(kids)

    process(10, b"python\0-m\0genrec\0", {10: "11 ", 13: "12 99 "})  # 99 ended before it was read
    process(11, b"ray::TrainController.run\0\0\0\0", {11: ""})  # a process title Ray set, padded with NULs
    process(12, b"python\0-u\0/a b/ray/_private/log_monitor.py\0", {12: "20"})
    process(20, b"sleep\x0060\0", {20: ""})
    assert process_tree(10, proc=tmp_path) == {
        11: (10, ("ray::TrainController.run",)),
        12: (10, ("python", "-u", "/a b/ray/_private/log_monitor.py")),
        20: (12, ("sleep", "60")),
    }
    (tmp_path / "30" / "task" / "30").mkdir(parents=True)  # a kernel without CONFIG_PROC_CHILDREN
    with pytest.raises(OSError, match="CONFIG_PROC_CHILDREN"):
        process_tree(30, proc=tmp_path)
