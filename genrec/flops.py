"""Training FLOPs per token: where the compute of a generative recommender goes, for capacity planning.

A pure function of (layers, width, sequence length, catalogue size, decoding mode). With a catalogue of millions of
titles the decoding layer, not the transformer, dominates a full-softmax step; sampled softmax and a projected head
remove most of it. `genrec flops` prints the comparison.

Assumptions (stated, because FLOPs counts differ by convention):

* a multiply-add is 2 FLOPs, and a training step costs 3x its forward pass (backward = 2x forward), so every
  multiply-add per token in the forward pass costs 6 training FLOPs;
* elementwise work (norms, activations, softmax normalisation, embedding lookups, the optimizer step) is ignored:
  it is O(width) or O(catalogue) per token, against O(width^2) and O(width x catalogue) for the matmuls;
* attention over a window of T events costs 2 x T x d multiply-adds per token per layer (QK^T and AV at full T, no
  causal halving), plus 4d^2 for the Q, K, V and output projections;
* the MLP has `mlp_ratio` x d hidden units: 2 x mlp_ratio x d^2 multiply-adds;
* an HSTU block (genrec.hstu) has no MLP: 4d^2 for u, v, q, k and d^2 for its output projection, plus the same 2 x T
  x d for its pointwise attention (the relative-bias lookups are elementwise);
* sampled softmax scores the positive plus `negatives_fraction` x catalogue titles (negatives shared by the batch are
  still scored against every query); the projected head adds a d x d/r matmul and scores at width d/r;
* `score_flops` training FLOPs per scored (title, dimension).

The "paper" convention reproduces the illustration in arXiv 2605.23312 (6 layers, width 1024, T = 512, 10^6 titles:
~1.26e10 FLOPs per token with full softmax vs ~3.56e8 with 1% sampled negatives and a d/8 head, 35.5x): blocks with a 2x
MLP (8d^2 weights per layer) and 12 FLOPs per scored (title, dimension). The "genrec" convention counts genrec's own
network exactly by the rules above: blocks with a 4x MLP (12d^2) and 6 FLOPs per scored (title, dimension) (one
d-wide dot product, forward and backward); use it for MFU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

CONVENTIONS = {"paper": {"mlp_ratio": 2, "score_flops": 12}, "genrec": {"mlp_ratio": 4, "score_flops": 6}}


@dataclass(frozen=True)
class Flops:
    backbone: float
    decoding: float

    @property
    def total(self) -> float:
        return self.backbone + self.decoding

    def to_dict(self) -> dict:
        return asdict(self) | {"total": self.total}


def backbone_flops_per_token(layers: int, width: int, seq_len: int, mlp_ratio: float = 4,
                             block: str = "transformer") -> float:
    """6 x (attention projections 4d^2 + MLP 2 x mlp_ratio x d^2 + attention scores 2Td) per layer; an HSTU block
    6 x (5d^2 + 2Td)."""
    d = width
    if block == "hstu":
        return 6.0 * layers * (5 * d * d + 2 * seq_len * d)
    return 6.0 * layers * (4 * d * d + 2 * mlp_ratio * d * d + 2 * seq_len * d)


def decoding_flops_per_token(width: int, num_items: int, decoding: str = "full", negatives_fraction: float = 0.01,
                             projection_ratio: int = 1, score_flops: float = 6, num_negatives: int | None = None
                             ) -> float:
    """Scoring cost per token: the projection (if any) plus score_flops x scoring width x titles scored."""
    if decoding not in ("full", "sampled"):
        raise ValueError(f"decoding {decoding!r}: expected 'full' or 'sampled'")
    out = width // projection_ratio if projection_ratio > 1 else width
    projection = 6.0 * width * out if projection_ratio > 1 else 0.0
    if decoding == "full":
        scored = num_items
    else:
        scored = 1 + (num_negatives if num_negatives is not None else negatives_fraction * num_items)
    return projection + score_flops * out * scored


def training_flops_per_token(layers: int, width: int, seq_len: int, num_items: int, decoding: str = "full",
                             negatives_fraction: float = 0.01, projection_ratio: int = 1,
                             convention: str = "genrec", num_negatives: int | None = None,
                             block: str = "transformer") -> Flops:
    """Training FLOPs per token (backbone, decoding) under the module docstring's assumptions."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention {convention!r}: expected one of {', '.join(CONVENTIONS)}")
    c = CONVENTIONS[convention]
    return Flops(backbone_flops_per_token(layers, width, seq_len, c["mlp_ratio"], block),
                 decoding_flops_per_token(width, num_items, decoding, negatives_fraction, projection_ratio,
                                          c["score_flops"], num_negatives))


def comparison(layers: int, width: int, seq_len: int, num_items: int, negatives_fraction: float = 0.01,
               projection_ratio: int = 8, convention: str = "paper") -> list[dict]:
    """Rows for full softmax, sampled softmax, and sampled + projected head, each with its saving vs full."""
    cases = [("full softmax", "full", 1), (f"sampled ({negatives_fraction:.0%})", "sampled", 1),
             (f"sampled ({negatives_fraction:.0%}) + projected head (d/{projection_ratio})", "sampled",
              projection_ratio)]
    rows = []
    full = None
    for name, decoding, r in cases:
        f = training_flops_per_token(layers, width, seq_len, num_items, decoding, negatives_fraction, r, convention)
        full = full or f.total
        rows.append({"decoding": name, "backbone": f.backbone, "decoding_flops": f.decoding, "total": f.total,
                     "vs_full": full / f.total})
    return rows


# Dense bf16 peak TFLOP/s per device, from the vendors' datasheets (no sparsity): what MFU is measured against.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a device by its name (`torch.cuda.get_device_name()`), or None when not known: no MFU is
    reported then rather than one against a made-up peak. An H100 SXM is 989, its PCIe card 756."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key.lower() in device_name.lower():
            return PEAK_BF16_TFLOPS[key]
    return None


def mfu(model_tflops_per_s: float, peak_tflops_per_device: float, devices: int) -> float:
    """Model FLOPs utilisation: achieved model TFLOP/s (all devices together) over the devices' summed peak."""
    return model_tflops_per_s / (peak_tflops_per_device * devices)


def training_cycle(tokens: float, tokens_per_s_per_gpu: float, gpus: int, scaling: float = 1.0) -> dict:
    """One pass over `tokens` training tokens (target events) at a measured per-GPU rate on `gpus` GPUs that each
    keep `scaling` of it (1.0 = perfect data-parallel scaling; an assumption until measured on several GPUs):
    wall hours = tokens / (rate x gpus x scaling) / 3600, GPU-hours = wall hours x gpus."""
    if tokens_per_s_per_gpu <= 0 or gpus < 1 or not 0 < scaling <= 1:
        raise ValueError("training_cycle needs a positive rate, gpus >= 1 and 0 < scaling <= 1")
    wall_h = tokens / (tokens_per_s_per_gpu * gpus * scaling) / 3600.0
    return {"gpus": gpus, "wall_h": wall_h, "gpu_hours": wall_h * gpus}
