"""Decoding cost on CPU: full softmax vs sampled softmax vs sampled softmax + projected head.

    .venv/bin/python benchmarks/decoding.py [--preset 8m] [--seq-len 64] [--batch 8]
        [--catalogues 10000,100000,1000000] [--modes full,sampled,sampled+projected] [--steps 3] [--threads 2]
        [--repeats 1] [--no-semantic] [--max-step-s 120] [--mem-limit-gb GB] [--out FILE]

One fixed backbone (a genrec.model preset) trained for a few steps on random windows of `seq_len + 1` events over
catalogues of growing size, under three decodings:

* full               - projection_ratio 1, full softmax over the catalogue;
* sampled            - projection_ratio 1, uniform negatives shared by the batch: 1% of the catalogue, at least 64;
* sampled+projected  - projection_ratio 8 (titles scored at width d/8), the same negatives.

A step is forward + backward + torch.optim.AdamW step (the optimizer genrec.train uses). Every (catalogue, mode) runs
in a fresh subprocess (this script re-invoked with --child), so its peak memory is that process's own ru_maxrss; the
child's address space is capped (--mem-limit-gb), so a configuration too large for the box fails with an allocation
error in the child instead of waking the kernel's OOM killer. Configurations run round-robin over --repeats and each
row is the median over repeats of the median step time over --steps timed steps (after one warm-up step).

Beside the measured speed-up vs full softmax, each row prints the FLOPs ratio from genrec.flops
(training_flops_per_token, "genrec" convention): what the speed-up would be if only the matmuls of the backbone and
the decoding layer cost time. On a shared machine other load only ever adds time (and with 2 threads a descheduled
thread stalls the other at every barrier), so beside the median the table gives the best step over all repeats and
the speed-up computed both ways, and splits the best step into forward / backward / AdamW wall time. The results JSON
(benchmarks/_harness.write) also keeps every step and the CPU seconds each used (time.process_time), the load
average before and after, and every child's raw result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, write  # noqa: E402
from genrec.features import MAX_GENRES, MAX_TOKENS, YEAR_BUCKETS, FeatureVocab, ItemFeatures  # noqa: E402
from genrec.flops import training_flops_per_token  # noqa: E402
from genrec.model import GenRec, ModelSpec, Objective, count_parameters, resolve_shape  # noqa: E402
from genrec.windows import NUM_ACTIONS, gap_buckets  # noqa: E402

MODES = {  # name -> (decoding, projection_ratio)
    "full": ("full", 1),
    "sampled": ("sampled", 1),
    "sampled+projected": ("sampled", 8),
}
NEG_FRACTION, MIN_NEGATIVES, PROJECTED_RATIO = 0.01, 64, 8
RESULT_TAG = "DECODING_RESULT "


def num_negatives(catalogue: int) -> int:
    """genrec.build.num_negatives with the default config: max(64, 1% of the catalogue), capped at the catalogue."""
    return int(min(catalogue, max(MIN_NEGATIVES, round(NEG_FRACTION * catalogue))))


# ---------------------------------------------------------------------------------------------------------- child


def synthetic_catalogue(n: int, vocab, gen):
    """Random but valid ItemFeatures for titles 1..n (row 0 = padding): 1-3 genres, a year bucket, 4-32 tokens."""
    genres = torch.randint(1, len(vocab.genres) + 1, (n + 1, MAX_GENRES), generator=gen)
    genres[torch.arange(MAX_GENRES)[None, :] >= torch.randint(1, 4, (n + 1, 1), generator=gen)] = 0
    year = torch.randint(1, YEAR_BUCKETS, (n + 1,), generator=gen)
    tokens = torch.randint(1, vocab.text_buckets + 1, (n + 1, MAX_TOKENS), generator=gen)
    tokens[torch.arange(MAX_TOKENS)[None, :] >= torch.randint(4, MAX_TOKENS + 1, (n + 1, 1), generator=gen)] = 0
    genres[0], year[0], tokens[0] = 0, 0, 0
    return ItemFeatures(genres, year, tokens, None)


def random_batch(batch: int, span: int, catalogue: int, gen):
    """Windows of `span` events: titles 1..catalogue, ascending timestamps, log2 gap buckets as genrec.windows."""
    items = torch.randint(1, catalogue + 1, (batch, span), generator=gen)
    actions = torch.randint(0, NUM_ACTIONS, (batch, span), generator=gen)
    utils = torch.randint(1, 11, (batch, span), generator=gen).float() / 2  # ratings 0.5..5
    steps = torch.randint(1, 7 * 86400, (batch, span), generator=gen)
    ts = 1_600_000_000 + torch.cumsum(steps, dim=1)
    gaps = torch.from_numpy(np.stack([gap_buckets(row) for row in ts.numpy()]).astype(np.int64))
    return items, actions, gaps, utils, ts


def child(cfg: dict) -> dict:
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    layers, width, heads = resolve_shape(cfg["preset"])
    decoding, ratio = MODES[cfg["mode"]]
    n = cfg["catalogue"]
    vocab = FeatureVocab(genres=tuple(f"genre{i}" for i in range(20))) if cfg["semantic"] else FeatureVocab()
    spec = ModelSpec(num_items=n, layers=layers, width=width, heads=heads, max_seq_len=cfg["seq_len"],
                     projection_ratio=ratio, semantic=cfg["semantic"], features=vocab.to_dict())
    model = GenRec(spec)
    model.objective = Objective(decoding=decoding)
    if cfg["semantic"]:
        model.set_catalogue(synthetic_catalogue(n, vocab, gen))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01, betas=(0.9, 0.98))
    counts = count_parameters(model)
    n_neg = num_negatives(n) if decoding == "sampled" else None
    out = {"params": counts, "param_mb": counts["total"] * 4 / 2**20, "negatives": n_neg,
           "rss_setup_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    def step() -> float:
        batch = random_batch(cfg["batch"], cfg["seq_len"] + 1, n, gen)
        negatives = None if n_neg is None else torch.randint(1, n + 1, (n_neg,), generator=gen)
        c0, t0 = time.process_time(), time.perf_counter()
        loss = model(*batch, negatives)
        t1 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3, c3 = time.perf_counter(), time.process_time()
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss.item()}")
        return {"step_s": t3 - t0, "forward_s": t1 - t0, "backward_s": t2 - t1, "optimizer_s": t3 - t2,
                "cpu_s": c3 - c0}

    warm = step()
    out["warmup_s"] = warm["step_s"]
    if warm["step_s"] > cfg["max_step_s"]:
        out.update(status="too_slow",
                   error=f"warm-up step took {warm['step_s']:.1f} s > --max-step-s {cfg['max_step_s']}")
    else:
        steps = [step() for _ in range(cfg["steps"])]
        out.update(status="ok", steps=steps, step_times_s=[s["step_s"] for s in steps],
                   **{k: statistics.median(s[k] for s in steps) for k in steps[0]})
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def child_main(cfg: dict) -> None:
    if cfg.get("mem_limit_gb"):
        lim = int(cfg["mem_limit_gb"] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    try:
        out = child(cfg)
    except (MemoryError, RuntimeError) as e:  # torch's "DefaultCPUAllocator: can't allocate memory" is a RuntimeError
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        oom = isinstance(e, MemoryError) or "alloc" in msg.lower() or "memory" in msg.lower()
        out = {"status": "oom" if oom else "error", "error": msg,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(RESULT_TAG + json.dumps(out), flush=True)


# --------------------------------------------------------------------------------------------------------- parent


def flops_ratio(layers: int, width: int, seq_len: int, catalogue: int, mode: str) -> tuple[float, float]:
    """(training FLOPs per token of `mode`, full / mode) from genrec.flops, "genrec" convention."""
    decoding, ratio = MODES[mode]
    full = training_flops_per_token(layers, width, seq_len, catalogue, "full", NEG_FRACTION, 1, convention="genrec")
    this = training_flops_per_token(layers, width, seq_len, catalogue, decoding, NEG_FRACTION, ratio,
                                    convention="genrec",
                                    num_negatives=num_negatives(catalogue) if decoding == "sampled" else None)
    return this.total, full.total / this.total


def mem_available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 8.0


def run_child(cfg: dict, timeout_s: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(cfg)]
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]), MKL_NUM_THREADS=str(cfg["threads"]))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or b"")[-1500:]
        return {"status": "timeout", "error": f"child killed after {timeout_s:.0f} s",
                "stderr_tail": tail.decode(errors="replace") if isinstance(tail, bytes) else tail,
                "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            out = json.loads(line[len(RESULT_TAG):])
            out["wall_s"] = wall
            if out["status"] != "ok":
                out["stderr_tail"] = p.stderr[-1500:]
            return out
    return {"status": "crashed", "error": f"child exited with code {p.returncode} and no result",
            "stderr_tail": p.stderr[-1500:], "wall_s": wall}


def fmt_row(r: dict) -> str:
    cat = f"10^{len(str(r['catalogue'])) - 1}" if str(r["catalogue"]).strip("0") == "1" else f"{r['catalogue']:,}"
    flops = f"{r['flops_ratio']:.2f}x"
    params = f"{r['param_mb']:,.0f}" if r.get("param_mb") else "-"
    if r["status"] != "ok":
        note = {"oom": "out of memory", "too_slow": "too slow", "timeout": "timed out"}.get(r["status"], r["status"])
        rss = f"{r['peak_rss_mb']:,.0f} at failure" if r.get("peak_rss_mb") else "-"
        return f"| {cat} | {r['mode']} | {note} | - | - | {rss} | {params} | - | - | {flops} | - |"
    x = lambda v: f"{v:.2f}x" if v else "-"  # noqa: E731
    b = r["best"]
    return (f"| {cat} | {r['mode']} | {r['step_s']:.3f} | {b['step_s']:.3f} | {r['tokens_per_s']:,.0f} | "
            f"{r['peak_rss_mb']:,.0f} | {params} | {x(r.get('speedup'))} | {x(r.get('speedup_best'))} | {flops} | "
            f"{b['forward_s']:.3f} / {b['backward_s']:.3f} / {b['optimizer_s']:.3f} |")


TABLE_HEAD = ("| catalogue | mode | step s (median) | step s (best) | tokens/s (median) | peak RSS MB | params MB | "
              "speed-up vs full (median) | speed-up vs full (best) | FLOPs ratio vs full (genrec.flops) | "
              "best step: forward / backward / AdamW s |\n|---|---|---|---|---|---|---|---|---|---|---|")


def table(results: dict) -> str:
    """The Markdown table of a run's results (one row per catalogue and mode), then the run's settings."""
    a, shape = results["args"], results["shape"]
    before, after = results["load_before"], results["load_after"]
    return "\n".join([TABLE_HEAD, *(fmt_row(r) for r in results["rows"])]) + (
        f"\n\npreset {a['preset']} ({shape['layers']} layers, width {shape['width']}), seq_len {a['seq_len']}, "
        f"batch {a['batch']}, semantic {'on' if a['semantic'] else 'off'}, {a['threads']} threads, {a['steps']} timed "
        f"steps x {a['repeats']} repeat(s), child memory cap {results['mem_limit_gb']} GB; load average "
        f"{before[0]:.2f} {before[1]:.2f} {before[2]:.2f} before, {after[0]:.2f} {after[1]:.2f} {after[2]:.2f} after")


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--preset", default="8m", help="backbone preset of genrec.model.PRESETS (default 8m)")
    p.add_argument("--seq-len", type=int, default=64, help="events per window read by the model (default 64)")
    p.add_argument("--batch", type=int, default=8, help="windows per step (default 8)")
    p.add_argument("--catalogues", default="10000,100000,1000000", help="comma-separated catalogue sizes")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per child (default 2)")
    p.add_argument("--repeats", type=int, default=1, help="round-robin passes over all configs; median (default 1)")
    p.add_argument("--semantic", action=argparse.BooleanOptionalAction, default=True,
                   help="semantic item tower on random synthetic features (default on)")
    p.add_argument("--max-step-s", type=float, default=120.0,
                   help="a config whose warm-up step exceeds this is reported as too slow (default 120)")
    p.add_argument("--mem-limit-gb", type=float, default=None,
                   help="address-space cap of each child (default 80%% of MemAvailable at start)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        child_main(json.loads(args.child))
        return 0

    layers, width, heads = resolve_shape(args.preset)
    catalogues = [int(c) for c in args.catalogues.split(",") if c.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error(f"unknown mode(s) {bad}; expected {list(MODES)}")
    mem_limit = args.mem_limit_gb or round(0.8 * mem_available_gb(), 1)
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"preset {args.preset} ({layers} layers, width {width}), seq_len {args.seq_len}, batch {args.batch}, "
          f"semantic {'on' if args.semantic else 'off'}, {args.threads} threads, child memory cap {mem_limit} GB; "
          f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}", flush=True)

    runs: dict[tuple[int, str], list[dict]] = {(c, m): [] for c in catalogues for m in modes}
    for rep in range(args.repeats):
        for c in catalogues:
            for m in modes:
                prev = runs[(c, m)]
                if prev and prev[-1]["status"] != "ok":
                    continue  # a config that failed once is not retried
                cfg = {"preset": args.preset, "seq_len": args.seq_len, "batch": args.batch, "catalogue": c,
                       "mode": m, "steps": args.steps, "threads": args.threads, "semantic": args.semantic,
                       "max_step_s": args.max_step_s, "mem_limit_gb": mem_limit}
                timeout = 300 + (args.steps + 1) * args.max_step_s * 1.5
                out = run_child(cfg, timeout)
                prev.append(out)
                msg = (f"step {out['step_s']:.3f} s, peak RSS {out['peak_rss_mb']:,.0f} MB" if out["status"] == "ok"
                       else f"{out['status']}: {out.get('error', '')}")
                print(f"[repeat {rep + 1}/{args.repeats}] catalogue {c:,} {m}: {msg} ({out['wall_s']:.0f} s wall)",
                      flush=True)
                if out["status"] != "ok" and out.get("stderr_tail"):
                    print("  child stderr tail:\n    " + out["stderr_tail"].strip().replace("\n", "\n    "),
                          flush=True)

    rows = []
    for c in catalogues:
        full_step = full_best = full_cpu = None
        for m in modes:
            outs = runs[(c, m)]
            ok = [o for o in outs if o["status"] == "ok"]
            first = outs[0]
            flops_tok, ratio = flops_ratio(layers, width, args.seq_len, c, m)
            row = {"catalogue": c, "mode": m, "negatives": first.get("negatives"), "flops_per_token": flops_tok,
                   "flops_ratio": ratio, "param_mb": first.get("param_mb"), "params": first.get("params"),
                   "repeats": len(outs)}
            if ok:
                step = statistics.median(o["step_s"] for o in ok)
                row.update(status="ok", step_s=step, tokens_per_s=args.batch * args.seq_len / step,
                           **{k: statistics.median(o[k] for o in ok)
                              for k in ("forward_s", "backward_s", "optimizer_s", "cpu_s")},
                           best=min((st for o in ok for st in o["steps"]), key=lambda st: st["step_s"]),
                           peak_rss_mb=max(o["peak_rss_mb"] for o in ok),
                           rss_setup_mb=max(o["rss_setup_mb"] for o in ok),
                           step_times_s=[o["step_times_s"] for o in ok])
            else:
                row.update(status=outs[-1]["status"], error=outs[-1].get("error"),
                           peak_rss_mb=outs[-1].get("peak_rss_mb"), warmup_s=outs[-1].get("warmup_s"))
            if m == "full" and row["status"] == "ok":
                full_step, full_best, full_cpu = row["step_s"], row["best"]["step_s"], row["cpu_s"]
            if row["status"] == "ok" and full_step:
                row["speedup"] = full_step / row["step_s"]
                row["speedup_best"] = full_best / row["best"]["step_s"]
                row["speedup_cpu"] = full_cpu / row["cpu_s"]
            rows.append(row)

    load_after = os.getloadavg()
    results = {
        "rows": rows, "args": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
        "mem_limit_gb": mem_limit, "shape": {"layers": layers, "width": width, "heads": heads},
        "started_utc": started, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "load_before": list(load_before), "load_after": list(load_after),
        "runs": {f"{c}/{m}": v for (c, m), v in runs.items()}}
    print()
    print(table(results))
    write("decoding", results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
