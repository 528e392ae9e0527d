"""Serving latency and throughput on loopback, next to the bare model forward.

    .venv/bin/python benchmarks/serving.py [--preset 2m] [--seq-len 256] [--items 10000] [--history 50]
        [--clients 1,8,32] [--requests 600] [--max-seconds 60] [--malformed 0.01] [--cpus 4]

What it does, all on this machine:

1. Writes a serving checkpoint of a freshly initialised model (`--preset`, `--seq-len`) over a synthetic catalogue of
   `--items` titles (latency does not depend on what the weights learned, only on their shapes).
2. Starts a local Ray and the genrec Serve app on 127.0.0.1 (one replica, `serve.batch` with the config's defaults)
   and, for each client count, runs a bounded closed loop (`--requests` requests or `--max-seconds`, whichever comes
   first; one request in flight per client, keep-alive connections) of POST /recommend with `--history`-event
   histories. A share `--malformed` of the requests is malformed (an unknown field, k out of range, an empty
   history, bad JSON): they must get a 4xx, and every valid one a 200.
3. The bare forward: the same checkpoint in this process (`genrec.recommend.Ranker`: encode the windows, score the
   catalogue, top-k) at batch sizes 1, 8 and the server's max batch, no HTTP, no Ray. Each served row is compared with
   the bare forward at the batch size its requests could share (min(clients, batch_max_size)).
4. Cached user state: a user with `--seq-len - 1` stored events gets one more (POST /users/{id}/events, encoded on
   top of the key/value cache) vs the same history sent in full (POST /recommend re-encodes it), over HTTP and in
   process (`Ranker.extend_state` vs `Ranker.encode_state`).

Writes benchmarks/results/serving.json and prints the tables.
"""

import argparse
import http.client
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from genrec.data.synthetic import generate  # noqa: E402
from genrec.features import build_vocab  # noqa: E402
from genrec.model import GenRec, ModelSpec, resolve_shape  # noqa: E402
from genrec.shards import write_checksums  # noqa: E402
from genrec.build import TRAIN_COUNT  # noqa: E402
from genrec.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_ITEMS, CHECKPOINT_SPEC, CHECKPOINT_WEIGHTS,  # noqa: E402
                               write_weights)

TOKEN = "benchmark-token-0123456789"


def write_checkpoint(folder: Path, preset: str, seq_len: int, items: int) -> Path:
    data = generate(users=50, items=items, events_per_user=5, seed=0)
    table = data.items.append_column("index", pa.array(np.arange(1, data.items.num_rows + 1), pa.int32()))
    table = table.append_column(TRAIN_COUNT, pa.array(np.ones(table.num_rows, np.int64)))
    layers, width, heads = resolve_shape(preset)
    spec = ModelSpec(num_items=table.num_rows, layers=layers, width=width, heads=heads, max_seq_len=seq_len,
                     dropout=0.0, features=build_vocab(table).to_dict(), title_age=True)
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    write_weights(GenRec(spec).state_dict(), folder / CHECKPOINT_WEIGHTS)
    (folder / CHECKPOINT_SPEC).write_text(json.dumps({"format": CHECKPOINT_FORMAT, "spec": spec.to_dict(), "preset": preset}))
    pq.write_table(table, folder / CHECKPOINT_ITEMS)
    write_checksums(folder, [CHECKPOINT_WEIGHTS, CHECKPOINT_SPEC, CHECKPOINT_ITEMS])
    return folder


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def histories(ids: list[int], n: int, length: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    t0 = 1_700_000_000
    return [[{"item_id": rng.choice(ids), "timestamp": t0 + 600 * i} for i in range(length)] for _ in range(n)]


MALFORMED = [b'{"history": [], "k": 5}', b'{"histroy": [{"item_id": 1}]}', b'{"history": [{"item_id": 1}], "k": 0}',
             b'{not json']


def load(host: str, port: int, clients: int, bodies: list[bytes], requests: int, max_s: float, malformed: float):
    """A closed loop: `clients` threads, one request in flight each, until `requests` are sent or max_s passes."""
    lat: list[float] = []
    bad_ok, valid_err, sent = [], [], [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + max_s
    rng = random.Random(clients)

    def worker(w: int):
        conn = http.client.HTTPConnection(host, port, timeout=60)
        while True:
            with lock:
                if sent[0] >= requests or time.perf_counter() > stop_at:
                    return
                sent[0] += 1
                is_bad = rng.random() < malformed
                body = rng.choice(MALFORMED) if is_bad else rng.choice(bodies)
            t = time.perf_counter()
            try:
                conn.request("POST", "/recommend", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                status = r.status
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
            dt = time.perf_counter() - t
            with lock:
                if is_bad:
                    if not (isinstance(status, int) and 400 <= status < 500):
                        bad_ok.append(status)
                elif status == 200:
                    lat.append(dt)
                else:
                    valid_err.append(status)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": sent[0], "valid_ok": len(lat), "valid_errors": len(valid_err),
            "malformed_not_4xx": len(bad_ok), "p50_ms": 1e3 * pct(lat, 50), "p99_ms": 1e3 * pct(lat, 99),
            "throughput_rps": len(lat) / wall, "wall_s": wall}


def bare(ranker, hists: list[list[dict]], batch: int, repeats: int, k: int) -> dict:
    """Encode + score + top-k of `batch` histories in this process: what a served batch costs without HTTP or Ray."""
    times = []
    for r in range(repeats):
        chunk = [hists[(r * batch + j) % len(hists)] for j in range(batch)]
        t = time.perf_counter()
        evs = [ranker.resolve(h)[0] for h in chunk]
        scores = ranker.scores(ranker.queries([ranker.window(e) for e in evs]), [1_800_000_000] * batch)
        for e, row in zip(evs, scores):
            ranker.top(row, k, set(e.items), None)
        times.append(time.perf_counter() - t)
    return {"batch": batch, "p50_ms": 1e3 * pct(times, 50), "p99_ms": 1e3 * pct(times, 99)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="2m")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--history", type=int, default=50, help="events per request history")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--requests", type=int, default=600, help="requests per client count (bound)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="time per client count (bound)")
    p.add_argument("--malformed", type=float, default=0.01, help="share of malformed requests mixed in")
    p.add_argument("--cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serving.json"))
    args = p.parse_args(argv)

    import ray
    from ray import serve

    from genrec.checkpoint import load_checkpoint
    from genrec.cli import deploy
    from genrec.config import load_config
    from genrec.recommend import Ranker

    torch.set_num_threads(1)  # as a replica does
    work = Path(tempfile.mkdtemp(prefix="genrec-serving-bench-"))
    ckpt = write_checkpoint(work / "checkpoint", args.preset, args.seq_len, args.items)
    ranker = Ranker(load_checkpoint(ckpt), "bench")
    ids = list(ranker.index_of)
    hists = histories(ids, 64, args.history)
    bodies = [json.dumps({"history": h, "k": args.k, "request_ts": 1_800_000_000}).encode() for h in hists]
    port = 8000 + random.Random().randrange(1000)
    cfg = load_config(None, [f"storage.root={work / 'runs'}", "name=bench", f"serve.port={port}",
                             f"serve.token={TOKEN}", "tracking.wandb=disabled"])
    batch_max = cfg.serve.batch_max_size

    print(f"checkpoint: {args.preset} ({ranker.spec.layers} layers x {ranker.spec.width}), max_seq_len "
          f"{args.seq_len}, {ranker.size} titles; histories of {args.history} events")
    sizes = sorted({1, 8, batch_max})
    bare_rows = {b: bare(ranker, hists, b, 60, args.k) for b in sizes}

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy(cfg, str(ckpt))
    host = "127.0.0.1"
    load(host, port, 1, bodies, 20, 30, 0.0)  # warm-up: the model loads on the first request
    # Serve's own floor: GET /healthz does no model work (one proxy hop, one replica call, a tiny JSON answer).
    conn = http.client.HTTPConnection(host, port, timeout=60)
    floor = []
    for _ in range(200):
        t = time.perf_counter()
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        floor.append(time.perf_counter() - t)
    floor_ms = {"p50_ms": 1e3 * pct(floor, 50), "p99_ms": 1e3 * pct(floor, 99)}
    print(f"  Serve floor (GET /healthz, 1 client): p50 {floor_ms['p50_ms']:.1f} ms, p99 {floor_ms['p99_ms']:.1f} ms")
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("GET", "/healthz")
    served, prev = [], json.loads(conn.getresponse().read())["batching"]
    for c in [int(x) for x in args.clients.split(",")]:
        row = load(host, port, c, bodies, args.requests, args.max_seconds, args.malformed)
        b = min(c, batch_max)
        ref = bare_rows.get(b) or bare(ranker, hists, b, 60, args.k)
        row.update(bare_batch=b, bare_p99_ms=ref["p99_ms"], p99_over_bare=row["p99_ms"] / ref["p99_ms"])
        conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.request("GET", "/healthz")
        stats = json.loads(conn.getresponse().read())["batching"]  # one replica: its counters since the start
        done = {k: stats[k] - prev.get(k, 0) for k in ("batches", "requests")}
        prev = stats
        row.update(mean_batch=done["requests"] / max(1, done["batches"]))
        served.append(row)
        print(f"  {c:>3} clients: p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
              f"{row['throughput_rps']:.1f} req/s, mean batch {row['mean_batch']:.1f}, valid errors {row['valid_errors']}, "
              f"malformed not 4xx {row['malformed_not_4xx']}")

    # Cached user state: one new event on top of seq_len - 1 stored ones, vs the whole history re-encoded.
    long = histories(ids, 1, args.seq_len, seed=1)[0]
    conn = http.client.HTTPConnection(host, port, timeout=60)

    def post(path: str, body: dict, token: str | None = None) -> tuple[float, dict]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        t = time.perf_counter()
        conn.request("POST", path, json.dumps(body).encode(), headers)
        r = conn.getresponse()
        out = json.loads(r.read())
        if r.status != 200:
            raise RuntimeError(f"{path}: {r.status} {out}")
        return time.perf_counter() - t, out

    inc_http, full_http = [], []
    for u in range(20):
        post(f"/users/{u}/events", {"events": long[:-1]}, TOKEN)
        dt, out = post(f"/users/{u}/events", {"events": long[-1:]}, TOKEN)
        assert out["state"] == "incremental", out
        inc_http.append(dt)
        full_http.append(post("/recommend", {"history": long, "k": args.k, "request_ts": 1_800_000_000})[0])
    ev, _ = ranker.resolve(long)
    from genrec.recommend import Events

    head = Events(ev.items[:-1], ev.ts[:-1], ev.actions[:-1], ev.utils[:-1])
    tail = Events(ev.items[-1:], ev.ts[-1:], ev.actions[-1:], ev.utils[-1:])
    state = ranker.encode_state(head, len(head))
    inc_cpu, full_cpu = [], []
    for _ in range(20):
        t = time.perf_counter()
        ranker.extend_state(state, tail, len(ev))
        inc_cpu.append(time.perf_counter() - t)
        t = time.perf_counter()
        ranker.encode_state(ev, len(ev))
        full_cpu.append(time.perf_counter() - t)
    cached = {"history_events": args.seq_len,
              "http_incremental_p50_ms": 1e3 * pct(inc_http, 50), "http_full_p50_ms": 1e3 * pct(full_http, 50),
              "encode_incremental_p50_ms": 1e3 * pct(inc_cpu, 50), "encode_full_p50_ms": 1e3 * pct(full_cpu, 50)}
    serve.shutdown()
    ray.shutdown()

    print("\nbare forward (this process: encode + score + top-k)")
    for b, r in bare_rows.items():
        print(f"  batch {b:>3}: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")
    print(f"\nServe's floor (GET /healthz, no model work): p50 {floor_ms['p50_ms']:.1f} ms, "
          f"p99 {floor_ms['p99_ms']:.1f} ms")
    print("\nserved (POST /recommend over loopback) vs the bare forward at the batch the requests can share")
    print(f"{'clients':>7} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} {'bare b':>6} {'bare p99':>8} "
          f"{'p99/bare':>8} {'errors':>6} {'bad!4xx':>7}")
    for r in served:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{r['throughput_rps']:>7.1f} {r['bare_batch']:>6} {r['bare_p99_ms']:>8.1f} {r['p99_over_bare']:>8.2f} "
              f"{r['valid_errors']:>6} {r['malformed_not_4xx']:>7}")
    print(f"\ncached state, {args.seq_len}-event history + 1 event: HTTP {cached['http_incremental_p50_ms']:.1f} ms "
          f"(incremental) vs {cached['http_full_p50_ms']:.1f} ms (full history in /recommend); encoder alone "
          f"{cached['encode_incremental_p50_ms']:.2f} ms vs {cached['encode_full_p50_ms']:.2f} ms "
          f"({cached['encode_full_p50_ms'] / cached['encode_incremental_p50_ms']:.1f}x)")
    result = {"command": "python " + " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
              "cpus": os.cpu_count(), "torch": torch.__version__, "ray": ray.__version__, "args": vars(args),
              "bare": list(bare_rows.values()), "serve_floor": floor_ms, "served": served, "cached_state": cached}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"-> {args.out}")
    bad = [r for r in served if r["valid_errors"] or r["malformed_not_4xx"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
