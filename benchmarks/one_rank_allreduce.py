"""What DeepSpeed's gradient all-reduce costs a one-worker CPU step, which genrec.engine.train_step now skips there.

    .venv/bin/python benchmarks/one_rank_allreduce.py [--synthetic-items 1700 24000 100000] [--decoding sampled full]
        [--steps 5] [--set KEY=VALUE ...] [--out FILE]

On one rank at ZeRO-0 in fp32 DeepSpeed's engine still all-reduces the gradients after every backward: it flattens them
into one buffer, all-reduces it over the one rank (gloo), scales it by 1 and copies it back. genrec.engine.train_step
skips that there (genrec.engine.reduces_nothing, through DeepSpeed's own no_sync()). For each catalogue size and
decoding this builds the trainer's DeepSpeed engine in this process as one rank (genrec.reference_loop's, the SASRec
shape of benchmarks/loop_thread.py, the seeded synthetic data), takes `--steps` of train_step's steps after two to warm
up, then times the skipped call alone, `engine.allreduce_gradients()`, on the gradients of one more backward, ten times:
its milliseconds against the step's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, write  # noqa: E402
from benchmarks.loop_thread import SASREC_SHAPE  # noqa: E402
from genrec.build import all_windows, build_run, num_negatives, optimizer_and_schedule  # noqa: E402
from genrec.config import load_config  # noqa: E402
from genrec.defaults import resolve as resolve_defaults  # noqa: E402
from genrec.engine import reduces_nothing, train_step  # noqa: E402
from genrec.preparation import prepare_shards  # noqa: E402
from genrec.reference_loop import WINDOW_COLUMNS, deepspeed_engine  # noqa: E402

BATCH = 128  # the SASRec shape's train.batch_size


def measure(items: int, decoding: str, steps: int, overrides: list[str]) -> dict:
    cfg = load_config("configs/local.yaml", [
        "data.source=synthetic", f"data.synthetic.items={items}", "data.synthetic.users=3000",
        "data.synthetic.events_per_user=50", f"name=loop-thread-synthetic-{items}", "data.split=leave_one_out",
        "storage.root=benchmarks/work/loop-thread", "tracking.wandb=disabled", f"model.decoding={decoding}",
        *SASREC_SHAPE, *overrides])
    shards = prepare_shards(cfg)
    cfg = resolve_defaults(cfg, shards)
    torch.set_num_threads(cfg.train.torch_threads)
    run = build_run(cfg, shards)
    optimizer, schedule = optimizer_and_schedule(cfg, run.model, 1000)
    engine = deepspeed_engine(cfg, run.model, optimizer, schedule)
    windows = all_windows(shards, cfg.model.max_seq_len, run.window, run.targets_from)
    n_neg = num_negatives(cfg, len(run.trained))
    gen = torch.Generator().manual_seed(0)

    def batch(k: int) -> dict:
        rows = slice(k * BATCH % (len(windows["items"]) - BATCH), None)
        return {c: torch.from_numpy(windows[c][rows][:BATCH]) for c in WINDOW_COLUMNS}

    for k in range(2):
        train_step(engine, batch(k), run.trained, n_neg, run.mask_rate, gen)[0].item()
    t0 = time.perf_counter()
    for k in range(steps):
        train_step(engine, batch(2 + k), run.trained, n_neg, run.mask_rate, gen)[0].item()
    step_s = (time.perf_counter() - t0) / steps
    # the gradients of one more backward (without the step, which would clear them), then the skipped call alone
    b = batch(2 + steps)
    items_, actions, gaps, ts = (b[c].long() for c in ("items", "actions", "gaps", "ts"))
    negatives = None if n_neg is None else run.trained[:n_neg]
    with engine.no_sync():
        engine.backward(engine(items_, actions, gaps, b["utils"].float(), ts, negatives, None))
    t0 = time.perf_counter()
    for _ in range(10):
        engine.allreduce_gradients()
    allreduce_s = (time.perf_counter() - t0) / 10
    return {"items": items, "decoding": decoding, "parameters": sum(p.numel() for p in run.model.parameters()),
            "skipped_in_train_step": reduces_nothing(engine), "step_ms": 1e3 * step_s,
            "allreduce_ms": 1e3 * allreduce_s, "share_of_step": allreduce_s / step_s}


def table(results: dict) -> str:
    out = ["| titles | decoding | parameters | train_step skips it | step (ms) | all-reduce (ms) | share of a step |",
           "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        out.append(f"| {r['items']:,} | {r['decoding']} | {r['parameters']:,} | "
                   f"{'yes' if r['skipped_in_train_step'] else 'no'} | {r['step_ms']:,.0f} | {r['allreduce_ms']:.1f} | "
                   f"{r['share_of_step']:.1%} |")
    out.append(f"\nOne rank, ZeRO-0, fp32, {results['threads']} threads: the step is train_step's (mean of "
               f"{results['steps']}, after 2), the all-reduce `engine.allreduce_gradients()` alone (mean of 10)")
    return "\n".join(out)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--synthetic-items", type=int, nargs="+", default=[1700, 24000, 100000])
    p.add_argument("--decoding", nargs="+", default=["sampled", "full"], choices=["sampled", "full"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    rows = [measure(items, decoding, args.steps, args.overrides)
            for items in args.synthetic_items for decoding in args.decoding]
    results = {"rows": rows, "steps": args.steps, "threads": torch.get_num_threads()}
    print(table(results))
    write("one_rank_allreduce", results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
