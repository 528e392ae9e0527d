"""Data at scale on one machine: write N synthetic events as Parquet in chunks, then build the sequence shards out of
core (genrec.partitioned_build: Ray tasks over user partitions), recording time, events/s and peak memory for each N.

    .venv/bin/python benchmarks/scale_data.py --events 1e6 1e7 1e8      # 100 events per user, 10^5 titles
    .venv/bin/python benchmarks/scale_data.py --events 1e6 --keep       # keep the data under --work afterwards

Memory is sampled every 0.2 s over this process and every Ray worker process (proportional set size, psutil's
`memory_full_info().pss`: shared pages such as the object store counted once, split among the processes that map
them): the peak of their sum and of the largest single process. Each N runs on a fresh local Ray with --cpus CPUs. Rows are appended
to --out (JSON lines) as each N finishes; the table and a plot (memory and time against event count) come at the end.
"""

from __future__ import annotations

import argparse
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

from genrec.data.synthetic import write_events  # noqa: E402
from genrec.runtime import print_table  # noqa: E402
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", nargs="+", type=float, default=[1e6, 1e7, 1e8])
    p.add_argument("--events-per-user", type=int, default=100)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--users-per-chunk", type=int, default=20_000, help="users per generated event file")
    p.add_argument("--partitions", type=int, default=None, help="user partitions (default: one per 2M events)")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--work", default="benchmarks/work/scale")
    p.add_argument("--out", default="benchmarks/results/scale_data.jsonl")
    p.add_argument("--plot", default="benchmarks/results/scale_data.png")
    p.add_argument("--keep", action="store_true", help="keep the generated events and shards")
    args = p.parse_args()

    import ray

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
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
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows, ["events", "partitions", "generate_s", "build_s", "build_events_per_s",
                       "build_peak_pss_total_gb", "build_peak_pss_single_gb", "input_gb", "shards_gb"])
    if len(rows) > 1:
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


if __name__ == "__main__":
    main()
