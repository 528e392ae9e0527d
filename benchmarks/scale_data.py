"""Data at scale on one machine: write N synthetic events as Parquet in chunks, then build the sequence shards out of
core (genrec.partitioned_build: Ray tasks over user partitions), recording time, events/s and peak memory for each N.

    .venv/bin/python benchmarks/scale_data.py --events 1e6 1e7 1e8      # 100 events per user, 10^5 titles
    .venv/bin/python benchmarks/scale_data.py --events 1e6 --keep       # keep the data under --work afterwards

For each N, the events are generated (genrec.data.synthetic.write_events, in a process of its own, so that what its
heap keeps does not count as the build's memory) and timed, that process's start included; then the shards are built
with genrec.partitioned_build.build_shards on a fresh local Ray with --cpus CPUs, and the build's time is build_shards
alone (Ray's start and shutdown are not counted). Memory is sampled every 0.2 s over this process and every Ray worker
process (proportional set size, psutil's `memory_full_info().pss`: shared pages such as the object store counted once,
split among the processes that map them): the peak of their sum and of the largest single process; the generator's
peak is that of this process and its children. The sizes of the generated input and of the shards on disk are
reported beside. Each N's row is printed as a JSON line as it finishes (a run cut short keeps its figures in the
log); the results JSON (--out, default benchmarks/results/scale_data-<time>.json, with the harness's meta), the table
and, with more than one N, a plot (memory and time against event count, --plot) come at the end: the harness's meta
loads torch, which must not sit in this process while later N are measured.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import shutil
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, write  # noqa: E402
from genrec.data.synthetic import write_events  # noqa: E402
from genrec.partitioned_build import build_shards  # noqa: E402


class MemorySampler:
    """Peak PSS of this process plus every Ray worker process (names starting with 'ray::', or default_worker.py),
    and with children=True this process's children too (the generator's process)."""

    def __init__(self, period: float = 0.2, children: bool = False):
        self.period, self.peak_total, self.peak_single, self.children = period, 0, 0, children
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _procs(self):
        me = psutil.Process()
        out = [me, *(me.children(recursive=True) if self.children else [])]
        for p in psutil.process_iter(["name", "cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                if p.pid != me.pid and (p.info["name"].startswith("ray::") or "default_worker.py" in cmd):
                    out.append(p)
            except (psutil.Error, TypeError):
                continue
        return out

    def _run(self):
        while not self._stop.is_set():
            rss = []
            for p in self._procs():
                try:
                    rss.append(p.memory_full_info().pss)
                except psutil.Error:
                    pass
            self.peak_total = max(self.peak_total, sum(rss))
            self.peak_single = max(self.peak_single, max(rss, default=0))
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def table(results: dict) -> str:
    """The Markdown table of the rows (one per event count), and the settings under it."""
    out = ["| events | users | input files | partitions | generate s | build s | build events/s | "
           "build peak PSS, all processes | largest process | generate peak | input on disk | shards on disk |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        out.append(f"| {r['events']:,} | {r['users']:,} | {r['input_files']} | {r['partitions']} | "
                   f"{r['generate_s']:.1f} | {r['build_s']:.1f} | {r['build_events_per_s']:,.0f} | "
                   f"{r['build_peak_pss_total_gb']:.2f} GiB | {r['build_peak_pss_single_gb']:.2f} GiB | "
                   f"{r['generate_peak_pss_gb']:.2f} GiB | {r['input_gb']:.3f} GiB | {r['shards_gb']:.3f} GiB |")
    parts = results["partitions"] if results.get("partitions") else "one per 2M events"
    out.append(f"\n{results['cpus']} CPUs (a fresh local Ray for each N), {results['events_per_user']} events per "
               f"user, {results['items']:,} titles, {results['users_per_chunk']:,} users per input file, "
               f"partitions: {parts}")
    return "\n".join(out)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--events", nargs="+", type=float, default=[1e6, 1e7, 1e8])
    p.add_argument("--events-per-user", type=int, default=100)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--users-per-chunk", type=int, default=20_000, help="users per generated event file")
    p.add_argument("--partitions", type=int, default=None, help="user partitions (default: one per 2M events)")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--work", default="benchmarks/work/scale")
    p.add_argument("--plot", default="benchmarks/results/scale_data.png")
    p.add_argument("--keep", action="store_true", help="keep the generated events and shards")
    args = p.parse_args(argv)

    # Imported here, not at the top: the generator's spawned process imports this module again, and ray there would
    # add to the generator's measured memory.
    import ray

    rows = []
    results = {"rows": rows, "events_per_user": args.events_per_user, "items": args.items,
               "users_per_chunk": args.users_per_chunk, "partitions": args.partitions, "cpus": args.cpus,
               "events_asked": [int(n) for n in args.events], "plot": None}
    for n in args.events:
        n = int(n)
        users = max(1, n // args.events_per_user)
        work = Path(args.work) / f"n{n}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        print(f"== {n:,} events: {users:,} users x ~{args.events_per_user}, {args.items:,} titles", flush=True)
        # The generator runs in its own process: what its heap keeps after 10^8 events (allocator high-water marks)
        # must not count as the build's memory, which this process's PSS is part of.
        with MemorySampler(children=True) as gen_mem, \
                concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            t = time.perf_counter()
            counts = pool.submit(write_events, work / "raw", users=users, items=args.items,
                                 events_per_user=args.events_per_user, users_per_chunk=args.users_per_chunk).result()
            gen_s = time.perf_counter() - t
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
        try:
            with MemorySampler() as mem:
                t = time.perf_counter()
                shards = build_shards(work / "raw" / "events", work / "raw" / "items.parquet", work / "shards",
                                      partitions=args.partitions)
                build_s = time.perf_counter() - t
        finally:
            ray.shutdown()
        c = shards.manifest["counts"]
        row = {"events": counts["events"], "users": users, "input_files": counts["files"],
               "partitions": shards.manifest["build"]["partitions"], "generate_s": gen_s,
               "generate_peak_pss_gb": gen_mem.peak_total / 2**30, "build_s": build_s,
               "build_events_per_s": counts["events"] / build_s, "build_peak_pss_total_gb": mem.peak_total / 2**30,
               "build_peak_pss_single_gb": mem.peak_single / 2**30,
               "input_gb": folder_bytes(work / "raw") / 2**30, "shards_gb": folder_bytes(work / "shards") / 2**30,
               "train_users": c["train_users"], "eval_users": c["eval_users"], "cpus": args.cpus,
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if len(rows) > 1:
        # Imported here: only a run of more than one N draws the plot, and the backend is chosen before pyplot loads.
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        x = [r["events"] for r in rows]
        a.loglog(x, [r["build_s"] for r in rows], "o-", label="build shards (Ray)")
        a.loglog(x, [r["generate_s"] for r in rows], "s--", label="generate events")
        a.set(xlabel="events", ylabel="seconds", title="time")
        a.legend()
        b.semilogx(x, [r["build_peak_pss_total_gb"] for r in rows], "o-", label="build: all processes")
        b.semilogx(x, [r["build_peak_pss_single_gb"] for r in rows], "^-", label="build: largest process")
        b.semilogx(x, [r["generate_peak_pss_gb"] for r in rows], "s--", label="generate")
        b.set(xlabel="events", ylabel="peak PSS (GiB)", title="memory", ylim=(0, None))
        b.legend()
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")
        results["plot"] = str(args.plot)
    write("scale_data", results, args.out)  # after every measurement: it imports torch and ray here
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
