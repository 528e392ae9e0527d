"""Batch recommendations (`genrec recommend`) against the Serve endpoint, side by side: users/s for the same users,
histories, request time, k and checkpoint.

    .venv/bin/python benchmarks/recommend_batch.py --checkpoint FOLDER --config C [--users N] [--k 100]
        [--actors 1] [--clients 8] [--out results.json]

1. batch: genrec.offline.recommend_all (Ray Data, an actor pool holding the checkpoint), every user's context being
   every event of the configured data; timed from the Ray Data run's start to its Parquet files written (actors'
   start-up and checkpoint load included; the data's loading and the context table are not).
2. endpoint: the Serve app (one replica, serving the same checkpoint) answering POST /recommend with each user's full
   history, from `--clients` concurrent HTTP clients on this machine; timed from the first request to the last answer.
Both run on the same embedded local Ray; the lists of the two are compared (they must agree).
"""

from __future__ import annotations

import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, write  # noqa: E402
from genrec.cli import post_json  # noqa: E402
from genrec.config import load_config  # noqa: E402
from genrec.offline import ListSpec, last_timestamp, recommend_all, user_contexts  # noqa: E402
from genrec.preparation import load_dataset  # noqa: E402
from genrec.ray_session import init_ray  # noqa: E402


def post(url: str, body: dict) -> dict:
    status, answer = post_json(url, body, timeout=120)
    if status != 200:
        raise SystemExit(f"{url}: {status} {answer}")
    return answer


def table(results: dict) -> str:
    """The Markdown table of a stored run: users/s of each path for the same users, and whether the lists agree."""
    n = results["users"]
    rows = [("batch (`genrec recommend`: Ray Data, actor pool)", results["batch_s"], f"{results['actors']} actor(s)"),
            ("endpoint (POST /recommend, one replica)", results["endpoint_s"], f"{results['clients']} clients")]
    out = ["| path | users | k | seconds | users/s | parallelism |", "|---|---|---|---|---|---|"]
    out += [f"| {path} | {n:,} | {results['k']} | {s:.1f} | {n / s:,.1f} | {par} |" for path, s, par in rows]
    out.append(f"\nbatch / endpoint: **{results['endpoint_s'] / results['batch_s']:.1f}x**; the two lists equal for "
               f"{results['lists_equal']:,} of {n:,} users")
    return "\n".join(out)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--config", default=None, help="the deployment config (data, storage, serve)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder of a model trained on the config's data")
    p.add_argument("--users", type=int, default=None, help="the first N users (default: all)")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--clients", type=int, default=8)
    args = p.parse_args(argv)
    from ray import serve

    from serving.app import build

    cfg = load_config(args.config, args.overrides)
    events = load_dataset(cfg, lambda *_: None).events
    at = last_timestamp(events)
    contexts = user_contexts(events, at)
    if args.users:
        contexts = contexts.slice(0, args.users)
    n = contexts.num_rows
    init_ray(cfg)
    out = Path(tempfile.mkdtemp()) / "lists"
    started = time.perf_counter()
    recommend_all(contexts, cfg, args.checkpoint, ListSpec(k=args.k, at=at), str(out), actors=args.actors)
    batch_s = time.perf_counter() - started
    batch = {r["user_id"]: r["item_ids"] for r in pq.read_table(out).to_pylist()}
    print(f"batch: {n:,} users in {batch_s:.1f} s ({n / batch_s:,.1f} users/s, {args.actors} actor(s))", flush=True)

    serve.start(http_options={"host": "127.0.0.1", "port": cfg.serve.port})
    serve.run(build(cfg, args.checkpoint), name="genrec", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{cfg.serve.port}/recommend"
    rows = contexts.to_pylist()
    bodies = [{"history": [{"item_id": i, "timestamp": t, "action": c, "utility": u}
                           for i, t, c, u in zip(r["item_ids"], r["ts"], r["actions"], r["utils"])],
               "k": args.k, "request_ts": at} for r in rows]
    post(url, bodies[0])  # the replica loads the checkpoint on its first request: not timed
    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        answers = list(pool.map(lambda b: post(url, b), bodies))
    endpoint_s = time.perf_counter() - started
    print(f"endpoint: {n:,} users in {endpoint_s:.1f} s ({n / endpoint_s:,.1f} users/s, {args.clients} clients)")
    same = sum(batch[r["user_id"]] == [i["item_id"] for i in ans["items"]] for r, ans in zip(rows, answers))
    print(f"lists equal for {same:,} of {n:,} users")
    serve.shutdown()
    results = {"users": n, "k": args.k, "actors": args.actors, "clients": args.clients, "batch_s": batch_s,
               "batch_users_per_s": n / batch_s, "endpoint_s": endpoint_s, "endpoint_users_per_s": n / endpoint_s,
               "lists_equal": same, "checkpoint": args.checkpoint}
    print(table(results))
    write("recommend_batch", results, args.out)
    return 0 if same == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
