"""What one pre-training cycle costs, projected from a measured per-GPU throughput.

    .venv/bin/python benchmarks/projection.py                       # the H200 figures of BENCHMARKS.md
    .venv/bin/python benchmarks/projection.py --tokens-per-s 76059 --label "1b compiled, H200" --gpus 1 8 80

For each workload (tokens = target events per pass) and GPU count: wall hours and GPU-hours of one pass at the
measured rate times the assumed data-parallel scaling efficiency (`genrec.flops.training_cycle`, arithmetic shown).
Nothing here is measured on more than one GPU: the scaling efficiency is an assumption, printed beside each row.
The paper's figure (80 A100 x 240 h for 2 x 10^12 tokens) is put beside it through the GPUs' dense bf16 peaks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genrec.flops import PEAK_BF16_TFLOPS, training_cycle  # noqa: E402
from genrec.runtime import print_table  # noqa: E402

# Training target events of one pass. Public sets: the events before the 90% time cutoff (what genrec trains on);
# the paper: "2 trillion tokens" per pre-training cycle.
WORKLOADS = {
    "paper pre-training (2e12 tokens)": 2e12,
    "synthetic 1e8 events (benchmarks/scale_data.py)": 0.9e8,
    "ml-latest-small (100,836 ratings)": 0.9 * 100_836,
    "ML-100K (100,000 ratings)": 0.9 * 100_000,
}
PAPER = {"gpus": 80, "hours": 240, "tokens": 2e12, "device": "A100"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens-per-s", type=float, nargs="+", default=[68_581, 76_059],
                   help="measured target events/s of one GPU (default: 1b eager and compiled on an H200)")
    p.add_argument("--label", nargs="+", default=["1b eager, H200", "1b compiled+dropout 0, H200"])
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 80])
    p.add_argument("--scaling", type=float, default=0.9, help="assumed data-parallel efficiency beyond 1 GPU")
    args = p.parse_args()
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
                             "wall": _human(c["wall_h"]), "gpu_hours": round(c["gpu_hours"], 4)})
    print_table(rows, ["throughput", "workload", "gpus", "scaling", "arithmetic", "wall", "gpu_hours"])

    per_a100 = PAPER["tokens"] / (PAPER["gpus"] * PAPER["hours"] * 3600)
    print(f"\nThe paper: {PAPER['tokens']:.0e} tokens on {PAPER['gpus']} {PAPER['device']} x {PAPER['hours']} h = "
          f"{PAPER['gpus'] * PAPER['hours']:,} A100-hours, i.e. {per_a100:,.0f} tokens/s per A100.")
    ratio = PEAK_BF16_TFLOPS["H200"] / PEAK_BF16_TFLOPS["A100"]
    for label, rate in zip(args.label, args.tokens_per_s):
        print(f"{label}: {rate:,.0f} tokens/s per H200 = {rate / ratio:,.0f} per A100 at the same MFU "
              f"(peaks {PEAK_BF16_TFLOPS['H200']:.0f} / {PEAK_BF16_TFLOPS['A100']:.0f} TFLOP/s); 2e12 of genrec's "
              f"tokens would take {PAPER['tokens'] / (rate / ratio) / 3600:,.0f} A100-hours "
              f"(the paper: {PAPER['gpus'] * PAPER['hours']:,}), {PAPER['tokens'] / rate / 3600:,.0f} H200-hours. "
              "A rough comparison: the paper's 1B model, token and head are not genrec's.")


def _human(hours: float) -> str:
    if hours < 1 / 60:
        return f"{hours * 3600:.1f} s"
    if hours < 1:
        return f"{hours * 60:.1f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


if __name__ == "__main__":
    main()
