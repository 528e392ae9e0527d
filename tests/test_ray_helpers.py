import os
import signal
import subprocess
import sys
import time

import pytest

from genrec.ray_helpers import (actor_class, demote, helper_pids, helpers_go_idle, helpers_state, is_helper,
                                process_tree, settled_helpers, start_time, walk_below,
                                watch_helpers)

linux_only = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")


def test_actor_class_is_read_from_rays_process_title():
    assert actor_class(("ray::TrainController.run",)) == "TrainController"
    assert actor_class(("ray::_StatsActor",)) == "_StatsActor"
    assert actor_class(("ray::IDLE",)) == "IDLE"
    assert actor_class(("/usr/bin/python", "-u", "x.py")) is None
    assert actor_class(()) is None


def test_helpers_are_the_named_actors_and_services_of_this_session_and_what_runs_under_them():
    venv = "/home/a user/.venv/lib/python3.11/site-packages/"  # a space in the path: arguments are not split on it
    session, other = "/tmp/ray/session_2026-12-07_1", "/tmp/ray/session_2026-12-07_2"
    processes = {
        10: (1, ("python", "-m", "genrec", "train")),  # the driver that started Ray (root)
        11: (10, (venv + "ray/core/src/ray/gcs/gcs_server", f"--log_dir={session}/logs")),
        12: (10, (venv + "ray/core/src/ray/raylet/raylet", f"--raylet_socket_name={session}/sockets/raylet")),
        13: (10, ("python", venv + "ray/dashboard/dashboard.py", "--host=127.0.0.1", f"--session-dir={session}")),
        14: (13, ("python", "-B", "-c", "from multiprocessing.forkserver import main")),  # under the dashboard
        15: (14, ("ray-dashboard-StateHead-0 (python -B -c ...)",)),
        16: (10, ("python", "-u", venv + "ray/_private/log_monitor.py", f"--session-dir={session}")),
        17: (10, ("python", "-u", venv + "ray/autoscaler/_private/monitor.py", f"--logs-dir={session}/logs")),
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
        35: (10, ("ray::TrainController.run",)),  # not under a process of this session
        # another Ray under the same root (a test's `ray start --head --block`): another session folder
        50: (10, ("ray", "start", "--head", "--block", "--temp-dir=/tmp/other")),
        51: (50, (venv + "ray/core/src/ray/raylet/raylet", f"--raylet_socket_name={other}/sockets/raylet")),
        52: (51, ("ray::TrainController.run",)),
        53: (50, ("python", venv + "ray/dashboard/dashboard.py", f"--session-dir={other}")),
        40: (1, ("ray::TrainController.run",)),  # another process tree's
        41: (1, ("python", venv + "ray/dashboard/dashboard.py", f"--session-dir={session}")),
    }
    assert helper_pids(processes, 10, session) == {13, 14, 15, 16, 17, 20, 21, 22, 23, 24, 25, 26, 27, 28}
    assert helper_pids(processes, 10, other) == set()  # its processes are not the root's children
    assert helper_pids(processes, 50, other) == {52, 53}
    assert helper_pids(processes, 99, session) == set()
    assert not is_helper(("python", "-c", "print('ray/dashboard/dashboard.py')", "x", "ray/dashboard/dashboard.py"))


def test_the_watch_walks_below_this_sessions_daemons_and_unsettled_helpers_only():
    session = "/tmp/ray/session_2026-12-07_1"
    raylet = (10, ("raylet", f"--raylet_socket_name={session}/sockets/raylet"), 500)
    dashboard = (10, ("python", "ray/dashboard/dashboard.py", f"--session-dir={session}"), 501)
    assert walk_below(12, raylet, 10, session, set())  # Ray starts its workers from the raylet
    assert walk_below(13, dashboard, 10, session, set())  # its module processes: helpers by descent
    assert not walk_below(13, dashboard, 10, session, {(13, 501)})  # settled: what it starts inherits SCHED_IDLE
    assert walk_below(13, dashboard, 10, session, {(13, 999)})  # a settled process that had the pid before
    assert walk_below(20, (12, ("ray::TrainController.run",), 600), 10, session, set())
    assert not walk_below(20, (12, ("ray::TrainController.run",), 600), 10, session, {(20, 600)})
    for worker in ("ray::RayTrainWorker", "ray::IDLE", "ray::ImplicitFunc.train", "ray::ReadParquet"):
        assert not walk_below(30, (12, (worker,), 700), 10, session, set())  # no helper starts under a worker
    assert not walk_below(50, (10, ("ray", "start", "--head", "--block"), 800), 10, session, set())  # another Ray
    # the session folder is asked of root's children only: below them, a process that is no Ray worker is walked
    assert walk_below(51, (12, ("python", "-m", "a_tool"), 801), 10, session, set())


@linux_only
def test_demote_puts_every_thread_of_a_named_helper_under_sched_idle_and_leaves_the_rest(tmp_path):
    """Real processes under this one, named as Ray names its own: a shell standing for this session's raylet with a
    helper actor and a training worker under it, one running as if it were the session's dashboard with a child of its
    own (a helper by descent), another session's dashboard, and a process named nothing."""
    session, other = str(tmp_path / "session_1"), str(tmp_path / "session_2")
    actors = "(exec -a ray::TrainController.run sleep 60) & (exec -a ray::RayTrainWorker sleep 60) & wait"
    commands = [["bash", "-c", actors, "raylet", f"--session_dir={session}"],
                ["sh", "-c", "sleep 60; :", "/venv/ray/dashboard/dashboard.py", f"--session-dir={session}"],
                ["sh", "-c", "sleep 60; :", "/venv/ray/dashboard/dashboard.py", f"--session-dir={other}"],
                ["sleep", "60"]]
    started = [subprocess.Popen(command, start_new_session=True) for command in commands]
    try:
        raylet, dashboard, elsewhere, plain = (p.pid for p in started)
        deadline = time.monotonic() + 10
        while True:  # until the shells have started their children, and the subshells have become what they run
            tree = process_tree(os.getpid())
            below = {pid: argv for pid, (parent, argv, _) in tree.items() if parent in (raylet, dashboard)}
            titles = {argv[0] if argv else "" for argv in below.values()}
            if {"ray::TrainController.run", "ray::RayTrainWorker", "sleep"} <= titles and len(below) == 3:
                break
            assert time.monotonic() < deadline, f"the test's processes did not start: {below}"
            time.sleep(0.05)
        controller = next(pid for pid, argv in below.items() if argv[0] == "ray::TrainController.run")
        worker = next(pid for pid, argv in below.items() if argv[0] == "ray::RayTrainWorker")
        under_dashboard = next(pid for pid in below if tree[pid][0] == dashboard)
        assert tree[controller][:2] == (raylet, ("ray::TrainController.run", "60"))
        helpers = helper_pids(tree, os.getpid(), session)
        assert helpers == {controller, dashboard, under_dashboard}
        for pid in helpers:
            assert demote(pid, tree[pid][2]) >= 1
            assert demote(pid) == 0  # already idle: nothing changed
            assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        for pid in (raylet, worker, elsewhere, os.getpid()):
            assert os.sched_getscheduler(pid) != os.SCHED_IDLE
        assert demote(plain, start_time(plain) + 1) == 0  # another start time: another process with that pid
        assert demote(plain, start_time(plain)) == 1  # its one thread
    finally:
        for p in started:  # each in a session of its own: its group goes, its children with it
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert demote(dashboard) == 0 and start_time(dashboard) is None  # ended: skipped


def test_the_watch_is_not_started_where_the_user_turned_it_off():
    assert not helpers_go_idle({"GENREC_IDLE_HELPERS": "0"})
    assert watch_helpers("/tmp/ray/session_x", {"GENREC_IDLE_HELPERS": "0"}) is None
    assert helpers_state({"GENREC_IDLE_HELPERS": "0"}) == "normal"
    assert helpers_go_idle({"GENREC_IDLE_HELPERS": "1"}) == helpers_go_idle({}) == hasattr(os, "SCHED_IDLE")


def test_a_helper_settles_only_once_everything_under_it_has():
    # the dashboard (13), its forkserver (14) and a module process the forkserver started (15), then a lone actor (20)
    tree = {13: (10, ("dashboard.py",), 501), 14: (13, ("forkserver",), 502), 15: (14, ("StateHead",), 503),
            20: (12, ("ray::TrainController.run",), 600)}
    # the module process was demoted in this check (started while the last one ran): nothing above it settles yet
    assert settled_helpers(tree, {13: 0, 14: 0, 15: 2, 20: 0}, set()) == {(20, 600)}
    # the next check finds it idle: all three settle, deepest first
    assert settled_helpers(tree, {13: 0, 14: 0, 15: 0}, {(20, 600)}) == {(13, 501), (14, 502), (15, 503)}
    # refused (not in `changed`): it never settles, and neither does what is above it
    assert settled_helpers(tree, {13: 0, 14: 0}, set()) == set()
    # settled before, under helpers that settle now; a settled entry of a pid's earlier process does not count
    assert settled_helpers(tree, {13: 0, 14: 0}, {(15, 503)}) == {(13, 501), (14, 502)}
    assert settled_helpers(tree, {13: 0, 14: 0}, {(15, 999)}) == set()


def test_process_tree_reads_every_threads_children_and_nul_separated_arguments(tmp_path):
    def process(pid: int, cmdline: bytes, children: dict[int, str]):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(cmdline)
        # /proc/<pid>/stat: the name in parentheses may hold spaces; the 22nd field is the start time
        fields = ["S", "1", *["0"] * 17, str(1000 + pid)]
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (a name) " + " ".join(fields) + " 0 0\n")
        for tid, kids in children.items():
            (tmp_path / str(pid) / "task" / str(tid)).mkdir(parents=True)
            (tmp_path / str(pid) / "task" / str(tid) / "children").write_text(kids)

    process(10, b"python\0-m\0genrec\0", {10: "11 ", 13: "12 99 "})  # 99 ended before it was read
    process(11, b"ray::TrainController.run\0\0\0\0", {11: ""})  # a process title Ray set, padded with NULs
    process(12, b"python\0-u\0/a b/ray/_private/log_monitor.py\0", {12: "20"})
    process(20, b"sleep\x0060\0", {20: ""})
    assert process_tree(10, proc=tmp_path) == {
        11: (10, ("ray::TrainController.run",), 1011),
        12: (10, ("python", "-u", "/a b/ray/_private/log_monitor.py"), 1012),
        20: (12, ("sleep", "60"), 1020),
    }
    assert start_time(11, proc=tmp_path) == 1011 and start_time(99, proc=tmp_path) is None
    # not below the log monitor: its children are not listed
    assert process_tree(10, proc=tmp_path, descend=lambda pid, process: pid != 12) == {
        11: (10, ("ray::TrainController.run",), 1011),
        12: (10, ("python", "-u", "/a b/ray/_private/log_monitor.py"), 1012),
    }
    (tmp_path / "30" / "task" / "30").mkdir(parents=True)  # a kernel without CONFIG_PROC_CHILDREN
    with pytest.raises(OSError, match="CONFIG_PROC_CHILDREN"):
        process_tree(30, proc=tmp_path)
