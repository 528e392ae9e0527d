"""Where the training loop runs: the main thread, a thread, a Ray actor or a Ray Train worker, and what glibc's malloc
arenas and OpenMP's wait policy cost it there.

    .venv/bin/python benchmarks/loop_thread.py [--synthetic-items 100000] [--decoding sampled] [--epochs 3]
        [--rounds 3] [--ways main thread thread-1-arena ...] [--set KEY=VALUE ...] [--out FILE]

genrec's trainer steps in a Ray Train worker, which runs the training function in a thread of its own, not in the
process's main thread, and glibc gives such a thread a malloc arena of its own; beside it on the same cores run Ray's
own processes. This runs genrec.reference_loop (the plain loop of benchmarks/overhead.py: the SASRec shape, 2
threads, the seeded synthetic data) in these ways, each in a fresh process (this script re-invoked with --child),
alternated round after round since this machine's speed drifts within minutes:

* main              - in the process's main thread, glibc's default arenas;
* main-1-arena      - in the main thread, MALLOC_ARENA_MAX=1;
* main-passive      - in the main thread, OMP_WAIT_POLICY=PASSIVE (OpenMP's threads sleep at once when idle);
* thread            - in a threading.Thread, glibc's default arenas (a new arena for the thread);
* thread-1-arena    - in a threading.Thread, MALLOC_ARENA_MAX=1 (the thread allocates from the main arena);
* actor             - in a Ray actor's main thread, on a local Ray the child starts (Ray's processes beside it);
* train-worker      - in a one-worker Ray Train run's training thread on a local Ray, as genrec's trainer steps (at
  Ray's default worker priority: genrec's own local Ray is train-worker-nice0);
* train-worker-1-arena, train-worker-passive, train-worker-1-arena-passive - the same with MALLOC_ARENA_MAX=1,
  OMP_WAIT_POLICY=PASSIVE or both, in every process of that Ray;
* train-worker-nice0 - in the Ray Train worker, Ray told not to lower its workers' priority (RAY_worker_niceness=0,
  as genrec's local Ray has it; Ray's default, which the other Ray ways keep, runs every worker process 15 nice
  levels below its own daemons);
* main-beside-ray   - in the main thread, while a one-worker Ray Train run on a local Ray idles beside it (its
  controller, helper actors, worker, raylet, GCS and dashboard awake as they are while genrec trains; its actors and
  worker at Ray's default priority, 15 levels below the daemons and this loop);
* main-beside-ray-nice15 - the same, the training process lowered 15 nice levels below Ray's daemons first, as Ray
  lowers its workers;
* train-worker-nice0-batch - train-worker-nice0 with every process of that Ray under Linux's SCHED_BATCH policy (set on
  the thread that starts Ray; fork and exec pass it on, so the training worker runs under it too): a waking thread
  then waits for the scheduler's tick instead of preempting the running one;
* train-worker-nice0-lean - train-worker-nice0 on a Ray started without its dashboard (ray.init's
  include_dashboard=False: no module processes, the head left with one module, the agent as before; Ray Train's
  placement-group cleaner then cannot ask the State API, so this is a measurement, not a setting): fewer processes
  waking beside the loop. Ray Train's preemption watcher is off in every Ray way, as on every local Ray genrec
  starts (genrec.ray_session.LOCAL_TRAIN_ENV); until that default, it was off only in the lean ways;
* train-worker-nice0-lean-batch - both;
* train-worker-nice0-busy-helpers - train-worker-nice0 with Ray's idle helper processes (the run's controller and
  helper actors, the dashboard, the agents) left at their normal priority (GENREC_IDLE_HELPERS=0). Every other Ray
  way runs them under SCHED_IDLE, as every local Ray genrec starts does (genrec.ray_helpers); runs from before that
  default, the JSONs without the "Ray's helpers" column, had them at normal priority.
* main-kept, thread-kept, train-worker-nice0-kept - main, thread and train-worker-nice0 with glibc's malloc told
  first, in the training process, to keep what a step frees (genrec.allocator.keep_freed_memory, which genrec's
  trainer calls in its workers); every other way leaves glibc's defaults (the "freed memory" column).

Every way runs with the environment genrec's Ray workers start with (genrec.ray_session.WORKER_ENV), then
MALLOC_ARENA_MAX and OMP_WAIT_POLICY set or removed and RAY_worker_niceness set (0 or Ray's default, 15) as the way
says. Each run reports training events/s over epochs 2
on (the reference loop's own timing: no start-up, no evaluation), the CPU milliseconds per training event of the
process that trains over the same steps, and that process's minor page faults per step, system and user CPU seconds
over the whole run (getrusage; the windows' building included). A row pools a way's rounds: events over seconds, and
the median of each other figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, run_child, write  # noqa: E402
from benchmarks.overhead import in_train_worker, plain_in_worker  # noqa: E402
from genrec.allocator import OFF, keep_freed_memory  # noqa: E402
from genrec.config import load_config  # noqa: E402
from genrec.defaults import resolve as resolve_defaults  # noqa: E402
from genrec.preparation import prepare_shards  # noqa: E402
from genrec.ray_helpers import IDLE_HELPERS_VAR, helpers_state  # noqa: E402
from genrec.ray_session import PREEMPTION_WATCHER_VAR, WORKER_ENV, init_ray, start_local_ray  # noqa: E402

WAYS = ("main", "main-1-arena", "main-passive", "thread", "thread-1-arena", "actor", "train-worker",
        "train-worker-1-arena", "train-worker-passive", "train-worker-1-arena-passive", "train-worker-nice0",
        "main-beside-ray", "main-beside-ray-nice15", "train-worker-nice0-batch", "train-worker-nice0-lean",
        "train-worker-nice0-lean-batch", "train-worker-nice0-busy-helpers", "main-kept", "thread-kept",
        "train-worker-nice0-kept")
# The scheduling policies a training thread can report (os.sched_getscheduler: Linux only).
POLICIES = {getattr(os, "SCHED_OTHER", None): "normal", getattr(os, "SCHED_BATCH", None): "batch"}
PLACES = {"main": "the main thread", "thread": "a thread", "actor": "a Ray actor", "train-worker": "a Ray Train worker",
          "main-beside-ray": "the main thread, a Ray Train run idle beside it"}
# How far Ray lowers its worker processes' priority below its daemons' by default (its worker_niceness setting).
RAY_DEFAULT_WORKER_NICENESS = 15
SASREC_SHAPE = ["model.preset=custom", "model.layers=2", "model.width=64", "model.heads=2", "model.max_seq_len=200",
                "model.projection_ratio=1", "model.semantic=false", "model.title_age=false", "model.id_mask_rate=0",
                "model.exclude_history=false", "model.dropout=0.2", "train.batch_size=128", "train.lr=0.001",
                "train.workers=1", "train.torch_threads=2", "eval.primary=B", "finetune.task=B",
                "eval.tasks={B: {targets: next}}"]


def place(way: str) -> str:
    """Where a way runs the loop (a key of PLACES)."""
    return next(p for p in sorted(PLACES, key=len, reverse=True) if way == p or way.startswith(p + "-"))


def train_measured(cfg, shards_root: str, epochs: int, keep: bool = False) -> dict:
    """The reference loop in the calling thread, with this process's getrusage around it; with `keep`, glibc told
    first to keep what a step frees, as genrec's trainer does (genrec.allocator)."""
    malloc = keep_freed_memory() if keep else OFF
    before = resource.getrusage(resource.RUSAGE_SELF)
    history = plain_in_worker(cfg, shards_root, epochs, cfg.train.torch_threads)
    after = resource.getrusage(resource.RUSAGE_SELF)
    policy = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
    return {"history": history, "minflt": after.ru_minflt - before.ru_minflt,
            # the settings the training process itself started with (a Ray worker's, in the Ray ways)
            "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),
            "malloc": malloc,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "nice": os.getpriority(os.PRIO_PROCESS, 0),  # Linux: the calling (training) thread's
            "sched_policy": None if policy is None else POLICIES.get(policy, str(policy)),
            "system_s": after.ru_stime - before.ru_stime, "user_s": after.ru_utime - before.ru_utime,
            "involuntary_switches": after.ru_nivcsw - before.ru_nivcsw}


def idle_until(started: str, stop: str) -> dict:
    """A training function that does nothing until the file `stop` exists, having created `started`."""
    Path(started).touch()
    while not Path(stop).exists():
        time.sleep(0.5)
    return {}


def lower_priority(levels: int) -> None:
    """Every thread of this process `levels` nice levels lower (on Linux nice is per thread; threads made later
    inherit their maker's)."""
    for tid in map(int, os.listdir("/proc/self/task")):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + levels)
        except ProcessLookupError:  # the thread ended since the listing
            pass


def beside_idle_train_run(cfg, storage: str, run):
    """run()'s result, called while a one-worker Ray Train run idles on the Ray this process joined."""
    flags = Path(tempfile.mkdtemp(prefix="loop-thread-"))
    started, stop = flags / "started", flags / "stop"
    failed: list[BaseException] = []

    def idle_run():
        try:
            in_train_worker(idle_until, cfg.train.cpus_per_worker, storage, started=str(started), stop=str(stop))
        except BaseException as e:  # noqa: BLE001 (raised in the main thread, before and after run())
            failed.append(e)

    # a daemon thread: should the run hang, this process still ends (after ray.shutdown())
    beside = threading.Thread(target=idle_run, daemon=True)
    beside.start()
    try:
        deadline = time.monotonic() + 300
        while not started.exists():
            if failed or not beside.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the idle Ray Train run did not start: {failed or 'no word in 300 s'}")
            time.sleep(0.2)
        time.sleep(5)  # its controller and helper actors settle
        result = run()
        if failed or not beside.is_alive():  # then nothing idled beside the loop for part of its run
            raise RuntimeError(f"the idle Ray Train run ended while the loop trained: {failed or 'it returned'}")
        return result
    finally:
        stop.touch()
        beside.join(timeout=120)  # it sees `stop` within a second
        shutil.rmtree(flags, ignore_errors=True)


@ray.remote
class LoopActor:
    def run(self, cfg, shards_root: str, epochs: int) -> dict:
        return train_measured(cfg, shards_root, epochs)


def child(way: str, items: int, decoding: str, epochs: int, storage: str, overrides: list[str]) -> dict:
    """One run of the reference loop, in the place `way` says."""
    cfg = load_config("configs/local.yaml", [
        "data.source=synthetic", f"data.synthetic.items={items}", "data.synthetic.users=3000",
        "data.synthetic.events_per_user=50", f"name=loop-thread-synthetic-{items}", "data.split=leave_one_out",
        f"storage.root={storage}", "tracking.wandb=disabled", f"train.epochs={epochs}", "train.patience=null",
        "train.time_budget_s=null", f"model.decoding={decoding}", *SASREC_SHAPE, *overrides])
    shards = prepare_shards(cfg)
    cfg = resolve_defaults(cfg, shards)
    where = place(way)
    keep = way.endswith("-kept")
    daemons_nice = os.getpriority(os.PRIO_PROCESS, 0)  # this process starts Ray's daemons: they run at its nice
    runs_path = str(Path(storage, "runs").resolve())
    if where == "main-beside-ray":
        init_ray(cfg)

        def run() -> dict:
            if way.endswith("-nice15"):
                lower_priority(RAY_DEFAULT_WORKER_NICENESS)
            return train_measured(cfg, str(shards.root), epochs)

        done = beside_idle_train_run(cfg, runs_path, run)
        ray.shutdown()
    elif where in ("main", "thread"):
        done: dict = {}
        if where == "thread":
            thread = threading.Thread(target=lambda: done.update(train_measured(cfg, str(shards.root), epochs, keep)))
            thread.start()
            thread.join()
        else:
            done = train_measured(cfg, str(shards.root), epochs, keep)
    else:
        if way.endswith("-batch"):  # this thread starts Ray's processes: they inherit its policy
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        if "-lean" in way:
            start_local_ray(include_dashboard=False)  # as init_ray starts a local Ray, less its dashboard
        else:
            init_ray(cfg)  # a local Ray: its processes get this process's environment, the way's settings with it
        if where == "actor":
            done = ray.get(LoopActor.options(num_cpus=cfg.train.cpus_per_worker).remote().run.remote(
                cfg, str(shards.root), epochs))
        else:
            done = in_train_worker(train_measured, cfg.train.cpus_per_worker, runs_path, cfg=cfg, keep=keep,
                                   shards_root=str(shards.root), epochs=epochs)
        ray.shutdown()
    history = done["history"]
    timed = history[1:] or history
    steps = sum(r["steps"] for r in history)
    events = sum(r["events"] for r in timed)
    return {"way": way, "events": events, "train_s": sum(r["train_s"] for r in timed),
            "events_per_s": events / sum(r["train_s"] for r in timed),
            "cpu_ms_per_event": 1e3 * sum(r["cpu_s"] for r in timed) / events,
            "faults_per_step": done["minflt"] / steps, "system_s": done["system_s"], "user_s": done["user_s"],
            "involuntary_switches": done["involuntary_switches"], "losses": [r["loss"] for r in history],
            "malloc_arena_max": done["malloc_arena_max"], "omp_wait_policy": done["omp_wait_policy"],
            "malloc": done["malloc"],
            "nice_vs_ray": None if where in ("main", "thread") else done["nice"] - daemons_nice,
            "sched_policy": done["sched_policy"],
            "ray_lean": None if where in ("main", "thread") else "-lean" in way,
            # Ray Train's watcher, as the run's controller read it (this process started the run)
            "preemption_watcher": None if where in ("main", "thread") else (
                "off" if os.environ.get(PREEMPTION_WATCHER_VAR) == "0" else "on"),
            # Ray's idle helpers: under SCHED_IDLE where the Ray this process started watched them
            "ray_helpers": None if where in ("main", "thread") else helpers_state()}


def child_env(way: str) -> dict:
    env = {**os.environ, **WORKER_ENV}
    env.pop("MALLOC_ARENA_MAX", None)
    env.pop("OMP_WAIT_POLICY", None)
    if "-1-arena" in way:
        env["MALLOC_ARENA_MAX"] = "1"
    if way.endswith("passive"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    # Ray's own default unless the way says 0, which genrec's local Ray has (genrec.ray_session.LOCAL_SYSTEM_CONFIG; a
    # RAY_ variable set keeps its value there)
    env["RAY_worker_niceness"] = "0" if "-nice0" in way else str(RAY_DEFAULT_WORKER_NICENESS)
    env.pop(IDLE_HELPERS_VAR, None)
    if way.endswith("-busy-helpers"):
        env[IDLE_HELPERS_VAR] = "0"
    return env


def table(results: dict) -> str:
    rows = results["rows"]
    base = next((r for r in rows if r["way"] == "main"), rows[0])
    cpu = all("cpu_ms_per_event" in r for r in rows)  # runs from before it was recorded have none

    def setting(r: dict, key: str, none: str = "unset") -> str:
        """A row's setting as its runs' training processes recorded it (one value, or every value seen)."""
        seen = sorted({none if x.get(key) is None else str(x[key]) for x in r["runs"]})
        return "/".join(seen)

    # runs from before these were recorded have none
    wait = any("omp_wait_policy" in x for r in rows for x in r["runs"])
    nice = any("nice_vs_ray" in x for r in rows for x in r["runs"])
    policy = any("sched_policy" in x for r in rows for x in r["runs"])
    lean = any("ray_lean" in x for r in rows for x in r["runs"])
    # runs before the watcher was recorded apart took it away with the dashboard in the lean ways only
    watcher = any("preemption_watcher" in x for r in rows for x in r["runs"])
    helpers = any("ray_helpers" in x for r in rows for x in r["runs"])
    kept = any("malloc" in x for r in rows for x in r["runs"])
    lean_cell = {"True": "off", "False": "on", "no Ray": "no Ray"}
    out = ["| the loop runs in | MALLOC_ARENA_MAX |" + (" freed memory |" if kept else "")
           + (" OMP_WAIT_POLICY |" if wait else "")
           + (" nice levels below Ray's daemons |" if nice else "")
           + (" scheduling policy |" if policy else "") + (" Ray's dashboard |" if lean and watcher else "")
           + (" Ray's dashboard and preemption watcher |" if lean and not watcher else "")
           + (" Ray Train's preemption watcher |" if watcher else "") + (" Ray's helpers |" if helpers else "")
           + " training events/s | vs main |" + (" CPU ms per event |" if cpu else "")
           + " minor page faults a step | system s | user s | each round's events/s |",
           "|---|---|" + ("---|" if kept else "") + ("---|" if wait else "") + ("---|" if nice else "") + ("---|" if policy else "")
           + ("---|" if lean else "") + ("---|" if watcher else "") + ("---|" if helpers else "") + "---|---|"
           + ("---|" if cpu else "")
           + "---|---|---|---|"]
    for r in rows:
        out.append(f"| {PLACES[place(r['way'])]} | {setting(r, 'malloc_arena_max')} | "
                   + (f"{setting(r, 'malloc', OFF)} | " if kept else "")
                   + (f"{setting(r, 'omp_wait_policy')} | " if wait else "")
                   + (f"{setting(r, 'nice_vs_ray', 'no Ray')} | " if nice else "")
                   + (f"{setting(r, 'sched_policy')} | " if policy else "")
                   + ("/".join(lean_cell.get(x, x) for x in setting(r, 'ray_lean', 'no Ray').split('/')) + " | "
                      if lean else "")
                   + (f"{setting(r, 'preemption_watcher', 'no Ray')} | " if watcher else "")
                   + (f"{setting(r, 'ray_helpers', 'no Ray')} | " if helpers else "")
                   + f"{r['events_per_s']:,.0f} | {r['events_per_s'] / base['events_per_s']:.1%} | "
                   + (f"{r['cpu_ms_per_event']:.3f} | " if cpu else "")
                   + f"{r['faults_per_step']:,.0f} | {r['system_s']:.1f} | {r['user_s']:.1f} | "
                   f"{', '.join(f'{x:,.0f}' for x in r['rounds_events_per_s'])} |")
    out.append(f"\n{results['items']:,} titles, {results['decoding']} decoding, the reference loop for "
               f"{results['epochs']} epochs (events/s over epochs 2-{results['epochs']}), {results['rounds']} "
               "alternated rounds, each run a fresh process; page faults, system and user seconds: each a median over "
               "the rounds, of the process that trains"
               + ("; CPU ms per event: that process's CPU over the timed steps, pooled over the rounds" if cpu else ""))
    return "\n".join(out)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--synthetic-items", type=int, default=100_000, help="titles of the seeded synthetic catalogue")
    p.add_argument("--decoding", default="sampled", choices=["sampled", "full"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="alternated rounds of every way")
    p.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS)
    p.add_argument("--storage", default="benchmarks/work/loop-thread")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="a config override, KEY=VALUE")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    settings = ["--synthetic-items", str(a.synthetic_items), "--decoding", a.decoding, "--epochs", str(a.epochs),
                "--storage", a.storage, *(x for o in a.overrides for x in ("--set", o))]
    if a.child:
        print(json.dumps(child(a.child, a.synthetic_items, a.decoding, a.epochs, a.storage, a.overrides)))
        return 0
    runs: dict[str, list[dict]] = {way: [] for way in a.ways}
    for r in range(a.rounds):
        for way in a.ways:
            result = run_child([sys.executable, __file__, "--child", way, *settings], f"the {way} run",
                               env=child_env(way))
            runs[way].append(result)
            print(f"round {r + 1}/{a.rounds}: {way}: {result['events_per_s']:,.0f} events/s, "
                  f"{result['cpu_ms_per_event']:.3f} CPU ms per event, {result['faults_per_step']:,.0f} page faults a "
                  "step", file=sys.stderr)
    rows = []
    for way, got in runs.items():
        rows.append({"way": way, "events_per_s": sum(x["events"] for x in got) / sum(x["train_s"] for x in got),
                     "rounds_events_per_s": [x["events_per_s"] for x in got],
                     **{k: statistics.median(x[k] for x in got) for k in ("faults_per_step", "system_s", "user_s")},
                     "cpu_ms_per_event": sum(x["cpu_ms_per_event"] * x["events"] for x in got) / sum(
                         x["events"] for x in got),
                     "runs": got})
    results = {"rows": rows, "items": a.synthetic_items, "decoding": a.decoding, "epochs": a.epochs,
               "rounds": a.rounds}
    print(table(results))
    write("loop_thread", results, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
