"""The backbone size presets, in one list: each name with its target backbone size and its shape for both blocks.

A preset names a backbone size (transformer or HSTU blocks and the final norm; embeddings and decoding excluded, see
genrec.model.backbone_params). From 2m up, widths are multiples of 128 and head dims 32..128 so GPU kernels stay
efficient. The sub-2M ladder (head dim 32) exists for scaling-law fits on one CPU box: a fit needs several sizes.
HSTU blocks (5 d^2 per block against the transformer's 12 d^2) keep the transformer's widths and heads, with the
layers that bring the backbone to the same size. Pure data: the config validates names against it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    target_params: float  # the backbone size the name promises (tests keep each shape within 15% of it)
    transformer: tuple[int, int, int]  # (layers, width, heads)
    hstu: tuple[int, int, int]


PRESET_LIST = (
    Preset("100k", 1e5, (2, 64, 2), (5, 64, 2)),
    Preset("250k", 2.5e5, (5, 64, 2), (12, 64, 2)),
    Preset("500k", 5e5, (5, 96, 3), (11, 96, 3)),
    Preset("1m", 1e6, (5, 128, 4), (12, 128, 4)),
    Preset("2m", 2e6, (10, 128, 4), (24, 128, 4)),
    Preset("8m", 8e6, (10, 256, 4), (24, 256, 4)),
    Preset("32m", 32e6, (10, 512, 8), (24, 512, 8)),
    Preset("100m", 100e6, (14, 768, 12), (34, 768, 12)),
    Preset("300m", 300e6, (24, 1024, 16), (58, 1024, 16)),
    Preset("1b", 1e9, (20, 2048, 16), (48, 2048, 16)),
)
PRESET_NAMES = tuple(p.name for p in PRESET_LIST)
PRESETS: dict[str, tuple[int, int, int]] = {p.name: p.transformer for p in PRESET_LIST}
HSTU_PRESETS: dict[str, tuple[int, int, int]] = {p.name: p.hstu for p in PRESET_LIST}
PRESET_TARGETS: dict[str, float] = {p.name: p.target_params for p in PRESET_LIST}
