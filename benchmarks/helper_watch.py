"""What genrec.ray_helpers' watch costs the process that started Ray: one check, its whole process-tree walk against
the pruned one it takes, side by side in one invocation.

    .venv/bin/python benchmarks/helper_watch.py [--calls 20] [--out FILE]

The watch checks every CHECK_INTERVAL_S seconds, in a thread of the process that started a local Ray (the driver:
`genrec train`, a sweep, the test suite), at normal priority: what it takes, it takes from a CPU training step's cores.
This starts genrec's local Ray (genrec.ray_session.start_local_ray, which starts the watch) and a one-worker Ray Train
run whose training function has made torch's threads and then waits, so that the tree holds what it holds while a run
trains: the run's actors and its worker with torch's threads (not Ray Data's coordinators: the run has no dataset). Once
the watch has demoted the run's controller, it times, alternated `--calls` times each, in this thread's CPU time:

* the whole walk, `process_tree(root)`: every thread's `children` file under the driver (what every check read before);
* the pruned walk the watch takes, `process_tree(root, descend=watch.descend)` (genrec.ray_helpers.walk_below: not
  below a Ray worker that is no helper, a helper already idle, or another Ray's processes);
* a whole check, `watch.check()` (the pruned walk, the helpers picked out, any not yet idle demoted).

It also records what the pruned walk leaves out: the helpers of the whole walk that the pruned one does not list, each
of which must already have every thread under SCHED_IDLE (else the pruning would keep a helper at normal priority).
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from pathlib import Path

import ray
import ray.train
import torch
from ray.train.torch import TorchConfig, TorchTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, write  # noqa: E402
from genrec.ray_helpers import CHECK_INTERVAL_S, helper_pids, helper_watch, process_tree  # noqa: E402
from genrec.ray_session import start_local_ray  # noqa: E402

WAIT_S = 120  # for the run's controller to be demoted


def waiting_worker(config: dict) -> None:
    """A training function that makes torch's threads, as a training step does, then waits to be stopped."""
    torch.set_num_threads(2)
    torch.randn(512, 512) @ torch.randn(512, 512)
    time.sleep(config["seconds"])


def all_idle(pid: int) -> bool:
    """Whether every thread of `pid` is under SCHED_IDLE (True for a process that ended)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    try:
        return all(os.sched_getscheduler(int(tid)) == os.SCHED_IDLE for tid in threads)
    except ProcessLookupError:
        return True


def thread_ms(fn, calls: int) -> list[float]:
    """The CPU milliseconds of this thread that each of `calls` calls of fn() takes."""
    out = []
    for _ in range(calls):
        t = time.thread_time()
        fn()
        out.append(1e3 * (time.thread_time() - t))
    return out


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--calls", type=int, default=20, help="calls of each, alternated (default 20)")
    args = p.parse_args(argv)
    start_local_ray(num_cpus=2)
    watch = helper_watch()
    if watch is None:
        raise SystemExit("genrec's helper watch is off here (GENREC_IDLE_HELPERS=0, or not Linux): nothing to time")
    root = os.getpid()
    storage = Path("benchmarks/work/helper-watch").resolve()
    run = threading.Thread(target=lambda: TorchTrainer(
        waiting_worker, train_loop_config={"seconds": 3600}, torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=1),
        run_config=ray.train.RunConfig(name=f"helper-watch-{os.getpid()}", storage_path=str(storage))).fit(),
        daemon=True)
    run.start()
    deadline = time.monotonic() + WAIT_S
    while not any(argv and argv[0].startswith("ray::TrainController") for argv in dict(watch.demoted).values()):
        if time.monotonic() > deadline:
            raise SystemExit(f"the run's controller was not demoted within {WAIT_S} s: {watch.state()}")
        time.sleep(1)
    time.sleep(3 * CHECK_INTERVAL_S)  # its worker up, the first demoted helpers settled
    whole, pruned, check = [], [], []
    for _ in range(args.calls):
        whole += thread_ms(lambda: process_tree(root), 1)
        pruned += thread_ms(lambda: process_tree(root, descend=watch.descend), 1)
        check += thread_ms(watch.check, 1)
    full_tree, pruned_tree = process_tree(root), process_tree(root, descend=watch.descend)
    left_out = (helper_pids(full_tree, root, watch.session_dir)
                - helper_pids(pruned_tree, root, watch.session_dir))
    # the `children` files each walk reads: one per thread of the root and of every process it walks below
    walked = {"whole": [root, *full_tree], "pruned": [root, *(pid for pid, process in pruned_tree.items()
                                                              if watch.descend(pid, process))]}
    threads = {name: sum(len(os.listdir(f"/proc/{pid}/task")) for pid in pids if os.path.isdir(f"/proc/{pid}/task"))
               for name, pids in walked.items()}
    results = {
        "calls": args.calls, "check_interval_s": CHECK_INTERVAL_S, "watch": watch.state(),
        "processes": {"whole": len(full_tree), "pruned": len(pruned_tree)}, "threads": threads,
        "ms": {name: {"median": statistics.median(v), "mean": statistics.fmean(v), "min": min(v), "max": max(v)}
               for name, v in (("whole walk", whole), ("pruned walk", pruned), ("check", check))},
        "helpers_left_out": len(left_out), "helpers_left_out_all_idle": all(all_idle(pid) for pid in left_out),
    }
    print(table(results))
    write("helper_watch", results, args.out)
    ray.shutdown()
    sys.stdout.flush()  # os._exit does not flush: the table would be lost where stdout is a pipe
    os._exit(0)  # the run's thread waits in Ray Train; nothing of it is kept


def table(results: dict) -> str:
    """The Markdown table of a stored run: each way's CPU milliseconds per call and its share of a core."""
    interval = results["check_interval_s"]
    out = ["| what | processes in the tree | threads whose children it reads | CPU ms a call (median) | mean | min-max | "
           "a core's share at one call per check |", "|---|---|---|---|---|---|---|"]
    for name, key in (("the whole walk (every check before)", "whole walk"), ("the pruned walk", "pruned walk"),
                      ("a whole check (pruned walk, pick-out, demotion)", "check")):
        ms = results["ms"][key]
        tree = "pruned" if key != "whole walk" else "whole"
        out.append(f"| {name} | {results['processes'][tree]} | {results['threads'][tree]} | {ms['median']:.1f} | "
                   f"{ms['mean']:.1f} | {ms['min']:.1f}-{ms['max']:.1f} | {ms['median'] / (10 * interval):.2f}% |")
    whole, check = results["ms"]["whole walk"]["median"], results["ms"]["check"]["median"]
    idle = "all under SCHED_IDLE" if results["helpers_left_out_all_idle"] else "**not all under SCHED_IDLE**"
    out.append(f"\na check every {interval:g} s; {results['calls']} calls of each, alternated, in this thread's CPU "
               f"time; check / whole walk: **{check / whole:.2f}**; helpers the pruned walk leaves out: "
               f"{results['helpers_left_out']}, {idle}; the watch: {results['watch']}")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
