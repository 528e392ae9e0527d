"""Serving latency and throughput on loopback, next to the bare model forward.

    .venv/bin/python benchmarks/serving.py [--preset 2m] [--seq-len 256] [--items 10000] [--history 50]
        [--clients 1,8,32] [--requests 600] [--max-seconds 60] [--malformed 0.01] [--cpus 4]
        [--k 10] [--out RESULTS.json]

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

Counted in a served latency: a valid request's wall time at the client, from sending it on a kept-alive connection to
the answer read (loopback, Serve's proxy, the batch wait, the model, JSON both ways). Not counted: malformed or failed
requests, and 20 warm-up requests at 1 client (the replica loads the model on its first).
Writes one results JSON (`--out`, default benchmarks/results/serving-<time>.json: the served rows, the bare forward,
Serve's floor, the cached state) and prints the table; exits 1 if a valid request failed or a malformed one got no 4xx.
"""

from __future__ import annotations

import http.client
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from ray import serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, write  # noqa: E402
from genrec.cli import deploy  # noqa: E402
from genrec.config import load_config  # noqa: E402
from genrec.data.synthetic import generate  # noqa: E402
from genrec.features import build_vocab  # noqa: E402
from genrec.model import GenRec, ModelSpec, resolve_shape  # noqa: E402
from genrec.recommend import Events, Ranker  # noqa: E402
from genrec.shards import write_checksums  # noqa: E402
from genrec.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_ITEMS, CHECKPOINT_SPEC, CHECKPOINT_WEIGHTS,  # noqa: E402
                               TRAIN_COUNT, load_checkpoint, write_weights)

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


def table(results: dict) -> str:
    """The served rows against the bare forward, then Serve's floor, the bare forward and the cached user state."""
    out = ["| clients | p50 ms | p99 ms | req/s | mean server batch | bare forward p99 ms (batch) | p99 / bare | "
           "valid errors | malformed not 4xx |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        valid = r["valid_ok"] + r["valid_errors"]
        out.append(f"| {r['clients']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['throughput_rps']:.1f} | "
                   f"{r['mean_batch']:.1f} | {r['bare_p99_ms']:.1f} ({r['bare_batch']}) | {r['p99_over_bare']:.2f} | "
                   f"{r['valid_errors']} of {valid} | {r['malformed_not_4xx']} of {r['requests'] - valid} |")
    f, c = results["serve_floor"], results["cached_state"]
    bare = ", ".join(f"batch {b['batch']} {b['p50_ms']:.1f} / {b['p99_ms']:.1f} ms" for b in results["bare"])
    out.append(f"\nServe's floor (GET /healthz, no model work, 1 client): p50 {f['p50_ms']:.1f} ms, p99 "
               f"{f['p99_ms']:.1f} ms; bare forward (encode + score + top-k, p50 / p99): {bare}.")
    out.append(f"Cached state, {c['history_events']}-event history + 1 event: encoder "
               f"{c['encode_incremental_p50_ms']:.2f} ms (incremental) vs {c['encode_full_p50_ms']:.2f} ms "
               f"(full window, {c['encode_full_p50_ms'] / c['encode_incremental_p50_ms']:.1f}x); over HTTP "
               f"{c['http_incremental_p50_ms']:.1f} ms vs {c['http_full_p50_ms']:.1f} ms (POST /recommend), p50s.")
    return "\n".join(out)


def main(argv=None) -> int:
    p = parser(__doc__)
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
    args = p.parse_args(argv)

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

    results = {"rows": served, "bare": list(bare_rows.values()), "serve_floor": floor_ms, "cached_state": cached,
               "args": vars(args), "model": {"layers": ranker.spec.layers, "width": ranker.spec.width,
                                             "titles": ranker.size},
               "serve_batch": {"max_size": batch_max, "wait_s": cfg.serve.batch_wait_s}}
    print()
    print(table(results))
    write("serving", results, args.out)
    bad = [r for r in served if r["valid_errors"] or r["malformed_not_4xx"]]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
