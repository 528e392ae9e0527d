"""The full softmax's loss and gradients: the (P, titles) logits materialised, against genrec's chunked loss.

    .venv/bin/python benchmarks/full_softmax.py [--catalogues 1682,9125,24000] [--rows 25600] [--dim 64]
        [--steps 3] [--rounds 3] [--threads 2] [--out FILE]

One step is the loss's forward and backward to the queries and the title embeddings, at the shape genrec trains the
plain SASRec's model in (BENCHMARKS.md's overhead table: batch 128 x 200 positions = 25,600 rows, width 64), for
catalogues of ML-100K's, ml-latest-small's and 24,000 titles:

* materialised - what genrec.model did before the chunked loss: logits = q @ items.T, unknown titles and padding
  filled with -inf in place, genrec.objectives.full_softmax_loss, autograd's backward;
* chunked      - genrec.objectives.chunked_full_softmax_loss, as genrec.model calls it now.

Each (catalogue, way) runs in a fresh process (this script re-invoked with --child), with the environment genrec's
workers get (genrec.ray_session.WORKER_ENV, PyTorch's huge pages among it), so its peak resident memory is its own.
The two ways alternate, round after round (--rounds), since this machine's speed drifts within minutes; a row gives
the median over rounds of each child's median step, and the speed-up of the medians. Each child also reports its
loss and its gradients' norm, which must agree between the two ways (same seed, same inputs).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genrec.ray_session import set_worker_env  # noqa: E402

set_worker_env()  # before torch allocates: the children inherit it, as Ray's workers do

import torch  # noqa: E402

from benchmarks._harness import parser, run_child, write  # noqa: E402
from genrec.objectives import NEG_INF, chunked_full_softmax_loss, full_softmax_loss  # noqa: E402

WAYS = ("materialised", "chunked")


def child(catalogue: int, way: str, rows: int, dim: int, steps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(rows, dim, generator=g).requires_grad_()
    items = (0.02 * torch.randn(catalogue + 1, dim, generator=g)).requires_grad_()
    targets = torch.randint(1, catalogue + 1, (rows, 1), generator=g)
    weights = torch.ones(rows, 1)
    blocked = torch.zeros(catalogue + 1, dtype=torch.bool)
    blocked[0] = True

    def step() -> float:
        q.grad = items.grad = None
        if way == "materialised":
            logits = q @ items.t()
            logits.masked_fill_(blocked, NEG_INF)
            loss = full_softmax_loss(logits, targets, weights)
        else:
            loss = chunked_full_softmax_loss(q, items, targets, weights, blocked)
        loss.backward()
        return loss.item()

    loss = step()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    grad_norm = float(torch.cat([q.grad.flatten(), items.grad.flatten()]).norm())
    return {"catalogue": catalogue, "way": way, "step_s": statistics.median(times), "steps_s": times,
            "loss": loss, "grad_norm": grad_norm,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def table(results: dict) -> str:
    out = ["| titles | logits a step | materialised s/step | chunked s/step | speed-up "
           "| peak RSS materialised / chunked | loss, gradient norm equal |", "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        m, c = row["materialised"], row["chunked"]
        same = (abs(m["loss"] - c["loss"]) <= 1e-5 * abs(m["loss"])
                and abs(m["grad_norm"] - c["grad_norm"]) <= 1e-4 * abs(m["grad_norm"]))
        gb = results["rows_per_step"] * (row["catalogue"] + 1) * 4 / 1e9
        out.append(f"| {row['catalogue']:,} | {gb:.2f} GB | {m['step_s']:.3f} | {c['step_s']:.3f} | "
                   f"**{m['step_s'] / c['step_s']:.2f}x** | {m['peak_rss_mb']:,.0f} / {c['peak_rss_mb']:,.0f} MB | "
                   f"{'yes' if same else 'NO'} |")
    out.append(f"\n{results['rows_per_step']:,} rows a step at width {results['dim']}, {results['threads']} threads; "
               f"the median over {results['rounds']} alternated rounds of each run's median of {results['steps']} "
               f"timed steps (forward and backward, after one warm-up step)")
    return "\n".join(out)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--catalogues", default="1682,9125,24000", help="titles in each catalogue, comma-separated")
    p.add_argument("--rows", type=int, default=25_600, help="positions a step (batch x sequence length)")
    p.add_argument("--dim", type=int, default=64, help="the width titles are scored at")
    p.add_argument("--steps", type=int, default=3, help="timed steps per run, after one warm-up step")
    p.add_argument("--rounds", type=int, default=3, help="alternated rounds of every (catalogue, way)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--child", nargs=2, metavar=("CATALOGUE", "WAY"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(int(a.child[0]), a.child[1], a.rows, a.dim, a.steps, a.threads)))
        return 0
    catalogues = [int(c) for c in a.catalogues.split(",")]
    runs: dict[tuple[int, str], list[dict]] = {}
    for r in range(a.rounds):
        for catalogue in catalogues:
            for way in WAYS:
                cmd = [sys.executable, __file__, "--child", str(catalogue), way, "--rows", str(a.rows), "--dim",
                       str(a.dim), "--steps", str(a.steps), "--threads", str(a.threads)]
                result = run_child(cmd, f"the {way} run at {catalogue} titles")
                runs.setdefault((catalogue, way), []).append(result)
                print(f"round {r + 1}/{a.rounds}: {catalogue:,} titles, {way}: {result['step_s']:.3f} s a step",
                      file=sys.stderr)
    rows = []
    for catalogue in catalogues:
        row = {"catalogue": catalogue}
        for way in WAYS:
            got = runs[(catalogue, way)]
            row[way] = {"step_s": statistics.median(x["step_s"] for x in got), "runs": got, "loss": got[0]["loss"],
                        "grad_norm": got[0]["grad_norm"], "peak_rss_mb": max(x["peak_rss_mb"] for x in got)}
        rows.append(row)
    results = {"rows": rows, "rows_per_step": a.rows, "dim": a.dim, "steps": a.steps, "rounds": a.rounds,
               "threads": a.threads}
    print(table(results))
    write("full_softmax", results, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
