"""What one pre-training cycle costs, projected from a measured per-GPU throughput.

    .venv/bin/python benchmarks/projection.py                       # the H200 rates of BENCHMARKS.md (the defaults)
    .venv/bin/python benchmarks/projection.py --tokens-per-s RATE [RATE ...] --label NAME [NAME ...]
        [--gpus 1 8 80] [--scaling 0.9] [--out FILE]

Nothing is run or timed: it is arithmetic on rates measured elsewhere (one --label per --tokens-per-s, the target
events/s of one GPU). For each rate, workload (tokens = target events per pass) and GPU count: wall hours and
GPU-hours of one pass at the measured rate times the assumed data-parallel scaling efficiency
(`genrec.flops.training_cycle`, arithmetic shown). Nothing here is measured on more than one GPU: the scaling
efficiency is an assumption, printed beside each row. The paper's cycle (PAPER: its GPUs, hours and tokens) is put
beside it through the GPUs' dense bf16 peaks (genrec.flops.PEAK_BF16_TFLOPS), a rough comparison only.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import parser, write  # noqa: E402
from genrec.flops import PEAK_BF16_TFLOPS, training_cycle  # noqa: E402

# Training target events of one pass. Public sets: the events before the 90% time cutoff (what genrec trains on);
# the paper: "2 trillion tokens" per pre-training cycle.
WORKLOADS = {
    "paper pre-training (2e12 tokens)": 2e12,
    "synthetic 1e8 events (benchmarks/scale_data.py)": 0.9e8,
    "ml-latest-small (100,836 ratings)": 0.9 * 100_836,
    "ML-100K (100,000 ratings)": 0.9 * 100_000,
}
PAPER = {"gpus": 80, "hours": 240, "tokens": 2e12, "device": "A100"}


def table(results: dict) -> str:
    """The Markdown table (one row per throughput, workload and GPU count), then the comparison with the paper."""
    out = ["| throughput | workload | GPUs | scaling | arithmetic | wall | GPU-hours |", "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        out.append(f"| {r['throughput']} | {r['workload']} | {r['gpus']} | {r['scaling']} | {r['arithmetic']} | "
                   f"{_human(r['wall_h'])} | {_number(r['gpu_hours'])} |")
    paper, peaks = results["paper"], results["peak_bf16_tflops"]
    per_a100 = paper["tokens"] / (paper["gpus"] * paper["hours"] * 3600)
    ratio = peaks["H200"] / peaks["A100"]
    out.append(f"\nThe paper: {paper['tokens']:.0e} tokens on {paper['gpus']} {paper['device']} x {paper['hours']} h = "
               f"{paper['gpus'] * paper['hours']:,} A100-hours, i.e. {per_a100:,.0f} tokens/s per A100; "
               f"at the same MFU (peaks {peaks['H200']:.0f} / {peaks['A100']:.0f} TFLOP/s, H200 / A100):")
    out.append("; ".join(
        f"{label}: {rate:,.0f} tokens/s per H200 = {rate / ratio:,.0f} per A100, 2e12 of genrec's tokens in "
        f"{paper['tokens'] / (rate / ratio) / 3600:,.0f} A100-hours, {paper['tokens'] / rate / 3600:,.0f} H200-hours"
        for label, rate in zip(results["labels"], results["tokens_per_s"]))
        + ". A rough comparison: the paper's 1B model, token and head are not genrec's.")
    return "\n".join(out)


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--tokens-per-s", type=float, nargs="+", default=[68_581, 76_059],
                   help="measured target events/s of one GPU (default: 1b eager and compiled on an H200)")
    p.add_argument("--label", nargs="+", default=["1b eager, H200", "1b compiled+dropout 0, H200"])
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 80])
    p.add_argument("--scaling", type=float, default=0.9, help="assumed data-parallel efficiency beyond 1 GPU")
    args = p.parse_args(argv)
    if len(args.label) != len(args.tokens_per_s):
        raise SystemExit("--label needs one name per --tokens-per-s")

    rows = []
    for label, rate in zip(args.label, args.tokens_per_s):
        for name, tokens in WORKLOADS.items():
            for g in args.gpus:
                scaling = 1.0 if g == 1 else args.scaling
                c = training_cycle(tokens, rate, g, scaling)
                rows.append({"throughput": label, "workload": name, "gpus": g, "scaling": scaling,
                             "arithmetic": f"{tokens:.3g} / ({rate:,.0f} x {g} x {scaling})",
                             "tokens": tokens, "tokens_per_s": rate, "wall_h": c["wall_h"],
                             "gpu_hours": round(c["gpu_hours"], 4)})
    results = {"rows": rows, "labels": args.label, "tokens_per_s": args.tokens_per_s, "gpus": args.gpus,
               "scaling": args.scaling, "workloads": WORKLOADS, "paper": PAPER,
               "peak_bf16_tflops": {g: PEAK_BF16_TFLOPS[g] for g in ("H200", "A100")}}
    print(table(results))
    write("projection", results, args.out)
    return 0


def _number(v: float) -> str:
    return f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}"


def _human(hours: float) -> str:
    if hours < 1 / 60:
        return f"{hours * 3600:.1f} s"
    if hours < 1:
        return f"{hours * 60:.1f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


if __name__ == "__main__":
    raise SystemExit(main())
