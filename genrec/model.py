"""The generative recommender: a causal transformer over event tokens.

One token per event: item id embedding + action embedding + time-gap bucket embedding + learned position. Sequences
are right-padded with item index 0, so a causal mask alone keeps real tokens from ever attending to padding and
`scaled_dot_product_attention(is_causal=True)` can use the flash kernels on GPU.

Size presets count the **backbone** only (transformer blocks and the final norm), as the paper does; embeddings and
the decoding head are excluded. Per block: fused QKV (3d^2) + output projection (d^2) + a 4x GELU MLP (8d^2), no biases,
two RMSNorm weights (2d): 12 d^2 + 2d.

Every parameter lives in a submodule that is *called* (never read as `.weight` from a parent), because DeepSpeed
ZeRO-3 gathers a module's partitioned parameters in that module's forward hook.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# name -> (layers, width, heads). Widths are multiples of 128 and head dims 32..128 so GPU kernels stay efficient.
PRESETS: dict[str, tuple[int, int, int]] = {
    "2m": (10, 128, 4),
    "8m": (10, 256, 4),
    "32m": (10, 512, 8),
    "100m": (14, 768, 12),
    "300m": (24, 1024, 16),
    "1b": (20, 2048, 16),
}
PRESET_TARGETS = {"2m": 2e6, "8m": 8e6, "32m": 32e6, "100m": 100e6, "300m": 300e6, "1b": 1e9}

NUM_GAP_BUCKETS = 32  # bucket 0 = first event / padding; 1..31 = 1 + floor(log2(1 + gap seconds)), clipped
NUM_ACTIONS = 8


def backbone_params(layers: int, width: int) -> int:
    """Exact backbone parameter count of :class:`Backbone` (pure arithmetic; tested against the module)."""
    return layers * (12 * width * width + 2 * width) + width


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network (saved beside every checkpoint)."""

    num_items: int  # catalogue size; item indices run 1..num_items, 0 is padding
    layers: int
    width: int
    heads: int
    max_seq_len: int
    dropout: float = 0.1
    activation_checkpointing: bool = False

    @property
    def backbone_params(self) -> int:
        return backbone_params(self.layers, self.width)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(**d)


def resolve_shape(preset: str, layers: int | None = None, width: int | None = None, heads: int | None = None):
    """(layers, width, heads) for a preset name, or the explicit values for "custom"."""
    if preset == "custom":
        assert layers and width and heads
        return layers, width, heads
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)} or 'custom'")
    return PRESETS[preset]


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.RMSNorm(width, elementwise_affine=True)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.norm2 = nn.RMSNorm(width, elementwise_affine=True)
        self.fc1 = nn.Linear(width, 4 * width, bias=False)
        self.fc2 = nn.Linear(4 * width, width, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        drop = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        x = x + F.dropout(self.proj(a.transpose(1, 2).reshape(b, t, d)), drop, self.training)
        h = self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return x + F.dropout(h, drop, self.training)


class Backbone(nn.Module):
    def __init__(self, layers: int, width: int, heads: int, dropout: float, activation_checkpointing: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.norm = nn.RMSNorm(width, elementwise_affine=True)
        self.activation_checkpointing = activation_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)


class EventEmbedding(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.item = nn.Embedding(spec.num_items + 1, spec.width, padding_idx=0)
        self.action = nn.Embedding(NUM_ACTIONS, spec.width)
        self.gap = nn.Embedding(NUM_GAP_BUCKETS, spec.width)
        self.pos = nn.Embedding(spec.max_seq_len, spec.width)
        self.drop = nn.Dropout(spec.dropout)

    def forward(self, items: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(items.shape[1], device=items.device)
        x = self.item(items) + self.action(actions.clamp(0, NUM_ACTIONS - 1)) + self.gap(gaps) + self.pos(pos)[None]
        return self.drop(x)


class ItemScorer(nn.Module):
    """Output item embeddings; scores queries against sampled ids or the whole catalogue.

    One module for training, evaluation and serving, so all three rank titles the same way.
    """

    def __init__(self, num_items: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_items + 1, dim))

    def forward(self, q: torch.Tensor, pos: torch.Tensor | None = None, neg: torch.Tensor | None = None):
        if pos is None:
            scores = q @ self.weight.t()
            scores[..., 0] = float("-inf")  # padding is never a recommendation
            return scores
        pos_logits = (q * self.weight[pos]).sum(-1)
        neg_logits = q @ self.weight[neg].t()
        return pos_logits, neg_logits


class GenRec(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.embed = EventEmbedding(spec)
        self.backbone = Backbone(spec.layers, spec.width, spec.heads, spec.dropout, spec.activation_checkpointing)
        self.scorer = ItemScorer(spec.num_items, spec.width)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "fc2.weight")):  # GPT-2 style: residual branches scaled by depth
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * spec.layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, ItemScorer):
            nn.init.normal_(m.weight, std=0.02)

    def hidden(self, items: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.embed(items, actions, gaps))

    def forward(self, items, actions, gaps, targets, negatives) -> torch.Tensor:
        """Sampled-softmax next-event loss. targets (B, T): next item index, 0 = no loss at that position;
        negatives (S,): uniform negatives shared by the batch (accidental hits are masked)."""
        h = self.hidden(items, actions, gaps)
        mask = targets > 0
        q = h[mask]
        t = targets[mask]
        if negatives is None:  # full softmax over the catalogue: the reference for small catalogues
            logits = self.scorer(q)
            return F.cross_entropy(logits.float(), t.long())
        pos, neg = self.scorer(q, t, negatives)
        neg = neg.masked_fill(negatives[None, :] == t[:, None], float("-inf"))
        logits = torch.cat([pos[:, None], neg], dim=1).float()
        return F.cross_entropy(logits, torch.zeros_like(t, dtype=torch.long))

    @torch.no_grad()
    def score_last(self, items, actions, gaps, lengths) -> torch.Tensor:
        """Scores (B, num_items + 1) for the event after each sequence's last real token."""
        h = self.hidden(items, actions, gaps)
        last = h[torch.arange(h.shape[0], device=h.device), lengths - 1]
        return self.scorer(last)


def count_parameters(model: GenRec) -> dict[str, int]:
    def n(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    return {"backbone": n(model.backbone), "embedding": n(model.embed), "decoding": n(model.scorer), "total": n(model)}
