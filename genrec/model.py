"""The generative recommender: a causal transformer over event tokens.

One token per event: title (id embedding + semantic tower) + action + utility bucket + time-gap bucket + learned
position. Titles are scored through a projected decoding head (d -> d/r) against output-side title embeddings (id +
tower), plus a learned bias on the title's age at the request time (`title_age`), the same path in training,
evaluation and serving. Sequences are right-padded with item index 0, so a causal mask alone keeps real tokens from ever attending to padding and
`scaled_dot_product_attention(is_causal=True)` can use the flash kernels on GPU.

Size presets count the **backbone** only (transformer blocks and the final norm), as the paper does; embeddings and
the decoding head are excluded. Per block: fused QKV (3d^2) + output projection (d^2) + a 4x GELU MLP (8d^2), no biases,
two RMSNorm weights (2d): 12 d^2 + 2d.

Every parameter lives in a submodule that is *called* (never read as `.weight` from a parent), because DeepSpeed
ZeRO-3 gathers a module's partitioned parameters in that module's forward hook.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from genrec.features import (LAUNCH_UNKNOWN, MAX_GENRES, MAX_TOKENS, NUM_AGE_BUCKETS, YEAR_BUCKETS, FeatureVocab,
                             ItemFeatures, catalogue_age_bias, catalogue_age_bias_grad, title_age_buckets)
from genrec.hstu import HSTUBlock, hstu_params
from genrec.objectives import (NEG_INF, chunked_full_softmax_loss, context_titles, logq_correction,
                               merge_duplicate_targets, mtp_targets, normalise, sampled_softmax_loss, seen_in_context,
                               utility_buckets)
from genrec.presets import HSTU_PRESETS, PRESETS
from genrec.windows import NUM_ACTIONS, NUM_GAP_BUCKETS

BLOCKS = ("transformer", "hstu")

NUM_UTILITY_BUCKETS = 21  # half units: 0..10 (see objectives.utility_buckets)


def backbone_params(layers: int, width: int, block: str = "transformer") -> int:
    """Exact backbone parameter count of :class:`Backbone` (pure arithmetic; tested against the module)."""
    per_block = hstu_params(width) if block == "hstu" else 12 * width * width + 2 * width
    return layers * per_block + width


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network (saved beside every checkpoint)."""

    num_items: int  # titles with an id row (the training catalogue); indices 1..num_items, 0 is padding
    layers: int
    width: int
    heads: int
    max_seq_len: int
    dropout: float = 0.1
    activation_checkpointing: bool = False
    # Projected decoding head: GELU + linear d -> d / projection_ratio before item scoring (1 = score at width d).
    projection_ratio: int = 8
    # Semantic item tower beside the id embedding (genres, year, hashed title/text n-grams, optional text vectors).
    semantic: bool = True
    features: dict = field(default_factory=dict)  # FeatureVocab.to_dict(): the tower's vocabulary
    # A learned score bias per bucket of the title's age at the request (launch weeks, catalogue titles, not yet
    # launched). False in specs saved before it existed, so their checkpoints still load.
    title_age: bool = False
    # Score titles against their input representation (one id table, as SASRec ties them); needs projection_ratio 1.
    tie_embeddings: bool = False
    # "transformer" (causal softmax attention + MLP) or "hstu" (pointwise aggregated attention, genrec.hstu).
    block: str = "transformer"

    @property
    def backbone_params(self) -> int:
        return backbone_params(self.layers, self.width, self.block)

    @property
    def out_dim(self) -> int:
        """Width at which titles are scored."""
        return max(1, self.width // max(1, self.projection_ratio))

    @property
    def tower_width(self) -> int:
        return min(self.width, 256)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(**d)


def resolve_shape(preset: str, layers: int | None = None, width: int | None = None, heads: int | None = None,
                  block: str = "transformer"):
    """(layers, width, heads) for a preset name and block, or the explicit values for "custom"."""
    if preset == "custom":
        assert layers and width and heads
        return layers, width, heads
    table = HSTU_PRESETS if block == "hstu" else PRESETS
    if preset not in table:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(table)} or 'custom'")
    return table[preset]


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

    def forward(self, x: torch.Tensor, ts: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, d); ts (event times) is not used by this block."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        drop = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        x = x + F.dropout(self.proj(a.transpose(1, 2).reshape(b, t, d)), drop, self.training)
        h = self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return x + F.dropout(h, drop, self.training)

    def step(self, x: torch.Tensor, ts: torch.Tensor | None, past: tuple[torch.Tensor, torch.Tensor] | None):
        """Inference on new tokens x (B, T, d) after cached keys/values past ((B, heads, P, d/heads) each): returns
        (x, (keys, values) of all P + T tokens). Serving appends a user's new events without re-encoding the rest.
        ts is not used by this block."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        p = k.shape[2] - t
        # New token i sees every cached token and the new ones up to itself (is_causal would align the mask top-left).
        mask = torch.ones(t, p + t, dtype=torch.bool, device=x.device).tril(diagonal=p)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)))), (k, v)


class Backbone(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.block not in BLOCKS:
            raise ValueError(f"block {spec.block!r}: expected one of {', '.join(BLOCKS)}")
        self.needs_ts = spec.block == "hstu"
        self.blocks = nn.ModuleList(
            HSTUBlock(spec.width, spec.heads, spec.dropout, spec.max_seq_len) if self.needs_ts
            else Block(spec.width, spec.heads, spec.dropout) for _ in range(spec.layers))
        self.norm = nn.RMSNorm(spec.width, elementwise_affine=True)
        self.activation_checkpointing = spec.activation_checkpointing

    def forward(self, x: torch.Tensor, ts: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, d); ts (B, T) the events' Unix times (needed by HSTU blocks' time bias)."""
        if self.needs_ts and ts is None:
            raise ValueError("HSTU blocks need the events' timestamps (ts)")
        for block in self.blocks:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, ts, use_reentrant=False)
            else:
                x = block(x, ts)
        return self.norm(x)


class SemanticTower(nn.Module):
    """Metadata -> a hidden vector per title: mean genre embedding + year bucket + mean hashed n-gram embedding
    (+ a projected text vector when the catalogue has one), then a GELU layer. Two linear heads map it to the input
    width and to the scoring width, so the same metadata informs both sides of the model."""

    def __init__(self, vocab: FeatureVocab, hidden: int, width: int, out_dim: int | None):
        super().__init__()
        # Bags (mean, padding excluded) never materialise a (titles, tokens, hidden) tensor: scoring a catalogue of
        # 10^6 titles would otherwise need tens of GB.
        self.genre = nn.EmbeddingBag(len(vocab.genres) + 1, hidden, mode="mean", padding_idx=0)
        self.year = nn.Embedding(YEAR_BUCKETS, hidden)
        self.text = nn.EmbeddingBag(vocab.text_buckets + 1, hidden, mode="mean", padding_idx=0)
        self.dense = nn.Linear(vocab.text_dim, hidden, bias=False) if vocab.text_dim else None
        self.mlp = nn.Linear(hidden, hidden)
        self.to_input = nn.Linear(hidden, width, bias=False)
        self.to_output = None if out_dim is None else nn.Linear(hidden, out_dim, bias=False)

    def forward(self, genres: torch.Tensor, year: torch.Tensor, tokens: torch.Tensor,
                dense: torch.Tensor | None) -> torch.Tensor:
        h = self.genre(genres) + self.year(year) + self.text(tokens)  # a bag of only padding embeds to zero
        if self.dense is not None and dense is not None:
            h = h + self.dense(dense)
        return F.gelu(self.mlp(h))


class ItemEncoder(nn.Module):
    """Title representations on the input side (width d) and the output side (scoring width d/r).

    representation = id embedding + semantic tower. The id embedding is replaced by a learned out-of-vocabulary (OOV)
    one for titles without a trained id row (launched after the cutoff, or added to the catalogue later) and, during
    training, for the titles of the collaborative-embedding mask: the model learns to score titles from metadata.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.tie_embeddings and spec.out_dim != spec.width:
            raise ValueError(f"tied embeddings score titles at the input width {spec.width}: projection_ratio must be "
                             f"1, not {spec.projection_ratio}")
        self.num_items = spec.num_items
        self.tied = spec.tie_embeddings
        # Tied: one table on both sides (id_out, oov_out and the tower's output head are not made).
        self.id_in = nn.Embedding(spec.num_items + 1, spec.width, padding_idx=0)
        self.id_out = None if self.tied else nn.Embedding(spec.num_items + 1, spec.out_dim, padding_idx=0)
        self.oov_in = nn.Embedding(1, spec.width)
        self.oov_out = None if self.tied else nn.Embedding(1, spec.out_dim)
        vocab = FeatureVocab.from_dict(spec.features)
        self.tower = (SemanticTower(vocab, spec.tower_width, spec.width, None if self.tied else spec.out_dim)
                      if spec.semantic else None)
        # One scalar per age bucket, added to the title's score. Popularity moves with age the same way for a new title
        # as for a trained one, so a title launched after the cutoff gets its launch-week lift without an id row.
        self.age = nn.Embedding(NUM_AGE_BUCKETS, 1) if spec.title_age else None
        # The catalogue: per-title features, which titles have a trained id row. Not saved with the weights: they are
        # recomputed from the item table (see set_catalogue), so a catalogue can grow after training.
        self.set_catalogue(item_features_placeholder(spec.num_items, vocab), None)

    def set_catalogue(self, features: ItemFeatures, known: torch.Tensor | None) -> None:
        n = len(features)
        if known is None:
            known = torch.ones(n, dtype=torch.bool)
            known[self.num_items + 1:] = False
        known = known.clone()
        known[0] = True  # padding keeps its (zero) id row
        known[self.num_items + 1:] = False  # no id row exists beyond the training catalogue
        device = self.id_in.weight.device
        launch = features.launch
        if launch is None:
            launch = torch.full((n,), LAUNCH_UNKNOWN, dtype=torch.long)
        for name, value in (("f_genres", features.genres), ("f_year", features.year), ("f_tokens", features.tokens),
                            ("f_dense", features.dense), ("f_launch", launch), ("known", known)):
            self.register_buffer(name, None if value is None else value.to(device), persistent=False)

    @property
    def catalogue_size(self) -> int:
        """Titles that can be ranked (indices 1..catalogue_size)."""
        return self.f_year.shape[0] - 1

    def _ids(self, idx: torch.Tensor, table: nn.Embedding, oov: nn.Embedding, mask: torch.Tensor | None):
        cold = ~self.known[idx]
        if mask is not None:
            cold = cold | mask[idx]
        e = table(torch.where(cold, torch.zeros_like(idx), idx))
        # One OOV row, broadcast: a (catalogue x d) copy of it would cost a GB per pass at 10^6 titles.
        one = oov(torch.zeros(1, dtype=torch.long, device=idx.device))[0].to(e.dtype)
        return torch.where(cold[..., None], one, e)

    def _tower(self, idx: torch.Tensor, distinct: bool = False):
        """Tower outputs for idx: embedded once per distinct title (a batch repeats titles), unless the caller
        says idx is already distinct (the whole catalogue)."""
        flat = idx.reshape(-1)
        if distinct:
            uniq, inv = flat, None
        else:
            uniq, inv = torch.unique(flat, return_inverse=True)
        h = self.tower(self.f_genres[uniq], self.f_year[uniq], self.f_tokens[uniq],
                       None if self.f_dense is None else self.f_dense[uniq].to(self.tower.mlp.weight.dtype))
        return h, inv, idx.shape

    @staticmethod
    def _spread(x: torch.Tensor, inv: torch.Tensor | None, shape) -> torch.Tensor:
        return (x if inv is None else x[inv]).view(*shape, -1)

    def age_bias(self, idx: torch.Tensor, request_ts: torch.Tensor) -> torch.Tensor:
        """Score bias of titles idx at request times request_ts (broadcast together): float, the broadcast shape."""
        return self.age(title_age_buckets(request_ts, self.f_launch[idx]))[..., 0]

    def age_table(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the age buckets' weights (NUM_AGE_BUCKETS,), launch times sorted, each title's place in that order): what
        genrec.features.catalogue_age_bias needs to bias every title at once."""
        order = torch.argsort(self.f_launch, stable=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        weights = self.age(torch.arange(NUM_AGE_BUCKETS, device=order.device))[:, 0]
        return weights, self.f_launch[order], inverse

    def catalogue_age_bias(self, request_ts: torch.Tensor) -> torch.Tensor:
        """age_bias of every title (row 0 included) at request times (P,): (P, catalogue + 1), without bucketing each
        (request, title) pair (genrec.features.catalogue_age_bias)."""
        weights, launch_sorted, inverse = self.age_table()
        return catalogue_age_bias(weights, request_ts, launch_sorted, inverse)

    def encode_input(self, idx: torch.Tensor, mask: torch.Tensor | None = None, distinct: bool = False):
        e = self._ids(idx, self.id_in, self.oov_in, mask)
        if self.tower is not None:
            h, inv, shape = self._tower(idx, distinct)
            e = e + self._spread(self.tower.to_input(h), inv, shape)
        return e

    def encode_output(self, idx: torch.Tensor, mask: torch.Tensor | None = None, distinct: bool = False):
        if self.tied:
            return self.encode_input(idx, mask, distinct)
        e = self._ids(idx, self.id_out, self.oov_out, mask)
        if self.tower is not None:
            h, inv, shape = self._tower(idx, distinct)
            e = e + self._spread(self.tower.to_output(h), inv, shape)
        return e


def item_features_placeholder(num_items: int, vocab: FeatureVocab) -> ItemFeatures:
    """An all-unknown catalogue of the right size, so a bare model runs (tests, FLOPs probes) before set_catalogue."""
    return ItemFeatures(torch.zeros(num_items + 1, MAX_GENRES, dtype=torch.long),
                        torch.zeros(num_items + 1, dtype=torch.long),
                        torch.zeros(num_items + 1, MAX_TOKENS, dtype=torch.long),
                        torch.zeros(num_items + 1, vocab.text_dim) if vocab.text_dim else None,
                        torch.full((num_items + 1,), LAUNCH_UNKNOWN, dtype=torch.long))


class EventEmbedding(nn.Module):
    """One token per event: title (id + metadata) + action + utility bucket + time-gap bucket + learned position."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.action = nn.Embedding(NUM_ACTIONS, spec.width)
        self.utility = nn.Embedding(NUM_UTILITY_BUCKETS, spec.width)
        self.gap = nn.Embedding(NUM_GAP_BUCKETS, spec.width)
        self.pos = nn.Embedding(spec.max_seq_len, spec.width)
        self.drop = nn.Dropout(spec.dropout)

    def forward(self, item_emb, actions, gaps, utils, offset: int = 0) -> torch.Tensor:
        """offset: position of the first token (events already encoded in a serving cache)."""
        pos = torch.arange(offset, offset + item_emb.shape[1], device=item_emb.device)
        x = (item_emb + self.action(actions.clamp(0, NUM_ACTIONS - 1))
             + self.utility(utility_buckets(utils, NUM_UTILITY_BUCKETS)) + self.gap(gaps) + self.pos(pos)[None])
        return self.drop(x)


@dataclass(frozen=True)
class Objective:
    """How the model is trained (not part of the architecture: a checkpoint serves the same whatever trained it).

    decoding: "full" softmax over the catalogue; "sampled": uniform negatives shared by the batch; "in_batch": the
    batch's other targets are the negatives. logq: correct sampled logits by the sampler's log-probability.
    mtp_k / half_life_s: multi-token targets over the next k events, time-decayed (None = no decay).
    """

    decoding: str = "sampled"
    logq: bool = False
    mtp_k: int = 1
    half_life_s: float | None = None
    # A long-horizon task's objective (fine-tuning): skip the next events, keep targets min_dt_s <= dt < max_dt_s.
    skip: int = 0
    min_dt_s: float = 0.0
    max_dt_s: float | None = None
    # Leave the titles already in a position's context out of its softmax (never its own targets), as ranking leaves
    # the user's history out: no capacity spent learning not to repeat what is never asked.
    exclude_history: bool = False
    # Only events at or after this Unix time are targets (train.new_window_h: a retrain on its new window).
    targets_from: int | None = None


class GenRec(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.items = ItemEncoder(spec)
        self.embed = EventEmbedding(spec)
        self.backbone = Backbone(spec)
        # Projected decoding head: scoring at d/r makes every candidate r times cheaper (see genrec.flops).
        self.head = (nn.Sequential(nn.GELU(), nn.Linear(spec.width, spec.out_dim, bias=False))
                     if spec.projection_ratio > 1 else nn.Identity())
        self.objective = Objective()
        # log q(title) of the sampler, for the logQ correction (uniform until the trainer sets item frequencies).
        self.register_buffer("log_q", torch.full((spec.num_items + 1,), -math.log(max(spec.num_items, 1))),
                             persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "fc2.weight")):  # GPT-2 style: residual branches scaled by depth
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * spec.layers))
            if name.endswith(("rab.position", "rab.time")):  # no relative preference to begin with
                nn.init.zeros_(p)
        if spec.projection_ratio > 1:
            # Unit-variance queries: with 0.02 on both the query and the title side, logits start ~1e-3 and the
            # two sides wait on each other for hundreds of steps.
            nn.init.normal_(self.head[1].weight, std=1.0 / math.sqrt(spec.width))
        if self.items.age is not None:
            nn.init.zeros_(self.items.age.weight)  # no age preference until the data shows one
        # The event's other features start at zero: random ones, as large as the title's own embedding, drown the
        # title in noise and slow learning (BENCHMARKS.md's ablation). They grow from zero where they help.
        for table in (self.embed.action, self.embed.utility, self.embed.gap):
            nn.init.zeros_(table.weight)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding, nn.EmbeddingBag)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def set_catalogue(self, features: ItemFeatures, known: torch.Tensor | None = None,
                      log_q: torch.Tensor | None = None) -> None:
        self.items.set_catalogue(features, known)
        if log_q is not None:
            self.register_buffer("log_q", log_q.to(self.items.known.device), persistent=False)

    def hidden(self, items, actions, gaps, utils, id_mask=None, ts=None) -> torch.Tensor:
        """Hidden states (B, T, d) of right-padded events; ts (B, T): their Unix times (HSTU blocks need them)."""
        return self.backbone(self.embed(self.items.encode_input(items, id_mask), actions, gaps, utils), ts)

    def item_matrix(self, id_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Output embeddings of the whole catalogue (row 0 = padding): (catalogue + 1, out_dim)."""
        idx = torch.arange(self.items.catalogue_size + 1, device=self.items.known.device)
        return self.items.encode_output(idx, id_mask, distinct=True)

    def new_head(self) -> None:
        """A freshly initialised decoding head (fine-tuning a task on a frozen backbone)."""
        if self.spec.projection_ratio <= 1:
            raise ValueError("a new decoding head needs a projected head (model.projection_ratio > 1)")
        self.head = nn.Sequential(nn.GELU(), nn.Linear(self.spec.width, self.spec.out_dim, bias=False))
        self.head.to(self.items.known.device)
        nn.init.normal_(self.head[1].weight, std=1.0 / math.sqrt(self.spec.width))

    def forward(self, items, actions, gaps, utils, ts, negatives=None, id_mask=None) -> torch.Tensor:
        """Training loss for windows of T + 1 events (B, T + 1), right-padded with item 0.

        negatives (S,): uniform negative ids shared by the batch ("sampled"); id_mask: titles whose id embedding is
        hidden this step (collaborative-embedding masking)."""
        obj = self.objective
        h = self.hidden(items[:, :-1], actions[:, :-1], gaps[:, :-1], utils[:, :-1], id_mask, ts[:, :-1])
        targets, weights = mtp_targets(items, ts, utils, obj.mtp_k, obj.half_life_s, obj.skip, obj.min_dt_s,
                                       obj.max_dt_s, obj.targets_from)
        targets, weights = merge_duplicate_targets(targets.flatten(0, 1), weights.flatten(0, 1))
        keep, weights = normalise(weights)
        targets = targets[keep]
        # The titles in each row's context (events 0..t of its window), when they leave its softmax.
        ctx = context_titles(items[:, :-1], keep.nonzero().squeeze(1)) if obj.exclude_history else None
        q = self.head(h.flatten(0, 1)[keep])
        # Position t's request is event t + 1, the event a user arrives with (as evaluation and serving see it).
        request = ts[:, 1:].flatten()[keep][:, None] if self.items.age is not None else None
        if obj.decoding == "full":
            # Only titles with training events compete: one launched after the cutoff must not be trained down
            # (nor the future catalogue leak into training). Padding (row 0) never competes.
            blocked = ~self.items.known
            blocked[0] = True
            context_of = age = age_bias_of = age_bias_grad_of = None
            if ctx is not None:
                own = torch.where(weights > 0, targets, torch.zeros_like(targets))

                def context_of(a: int, b: int) -> torch.Tensor:  # never the row's own targets (a title can come back)
                    return seen_in_context(ctx[a:b], len(blocked)).scatter_(1, own[a:b], False)
            if request is not None:
                age, launch_sorted, inverse = self.items.age_table()

                def age_bias_of(a: int, b: int, w: torch.Tensor) -> torch.Tensor:
                    return catalogue_age_bias(w, request[a:b, 0], launch_sorted, inverse)

                def age_bias_grad_of(a: int, b: int, g: torch.Tensor) -> torch.Tensor:
                    return catalogue_age_bias_grad(g, request[a:b, 0], launch_sorted, inverse)
            return chunked_full_softmax_loss(q, self.item_matrix(id_mask), targets, weights, blocked, context_of, age,
                                             age_bias_of, age_bias_grad_of)
        pos = (q[:, None, :] * self.items.encode_output(targets, id_mask)).sum(-1)
        if obj.decoding == "in_batch":
            negatives = torch.unique(targets[weights > 0])
        neg = q @ self.items.encode_output(negatives, id_mask).t()
        if request is not None:
            pos = pos + self.items.age_bias(targets, request)
            neg = neg + self.items.age_bias(negatives[None], request)
        if obj.logq:
            draws = negatives.numel() if obj.decoding == "sampled" else int((weights > 0).sum())
            neg = logq_correction(neg, self.log_q[negatives], draws)
        if ctx is not None:  # (a negative that is the row's target is masked by the loss; its positive logit stays)
            neg = neg.masked_fill(seen_in_context(ctx, 0, negatives), NEG_INF)
        return sampled_softmax_loss(pos, targets, weights, neg, negatives)

    @torch.no_grad()
    def score_last(self, items, actions, gaps, utils, lengths, item_matrix: torch.Tensor | None = None,
                   request_ts: torch.Tensor | None = None, ts: torch.Tensor | None = None):
        """Scores (B, catalogue + 1) for the event after each sequence's last real token (column 0 = -inf).

        request_ts (B,) Unix seconds: when each user asks (a stale context ends earlier); a model with `title_age`
        needs it. ts (B, T): the events' own times (HSTU blocks need them)."""
        h = self.hidden(items, actions, gaps, utils, ts=ts)
        q = self.head(h[torch.arange(h.shape[0], device=h.device), lengths - 1])
        return self.score_queries(q, item_matrix, request_ts)

    @torch.no_grad()
    def encode_step(self, items, actions, gaps, utils, past: list | None = None, ts: torch.Tensor | None = None):
        """Serving's incremental encoder: the new events (B, T) of users whose earlier events are cached in `past`
        (one (keys, values) per block, from the previous call; None for a first call). Returns (queries (B, out_dim)
        for the event after the last one, the cache of all events). Same result as :meth:`score_last` on the whole
        history while it fits in max_seq_len (positions are absolute: a window that slides must be re-encoded)."""
        offset = 0 if past is None else past[0][0].shape[2]
        if offset + items.shape[1] > self.spec.max_seq_len:
            raise ValueError(f"{offset} cached + {items.shape[1]} new events exceed max_seq_len "
                             f"{self.spec.max_seq_len}: re-encode the last window instead")
        if self.backbone.needs_ts and ts is None:
            raise ValueError("HSTU blocks need the events' timestamps (ts)")
        x = self.embed(self.items.encode_input(items), actions, gaps, utils, offset)
        cache = []
        for i, block in enumerate(self.backbone.blocks):
            x, kv = block.step(x, ts, None if past is None else past[i])
            cache.append(kv)
        return self.head(self.backbone.norm(x[:, -1])), cache

    @torch.no_grad()
    def score_queries(self, q: torch.Tensor, item_matrix: torch.Tensor | None = None,
                      request_ts: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, catalogue + 1) of every title for queries q (B, out_dim) (the decoding head's output)."""
        m = self.item_matrix() if item_matrix is None else item_matrix
        scores = q.float() @ m.float().t()  # fp32 even under bf16: rounded scores would tie and blur the ranking
        if self.items.age is not None:
            if request_ts is None:
                raise ValueError("this model scores titles by their age at the request (title_age): pass request_ts")
            scores = scores + self.items.catalogue_age_bias(request_ts.to(scores.device).long()).float()
        scores[:, 0] = NEG_INF  # padding is never a recommendation
        return scores


def count_parameters(model: GenRec) -> dict[str, int]:
    def n(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    tower = n(model.items.tower) if model.items.tower is not None else 0
    age = n(model.items.age) if model.items.age is not None else 0
    out_tables = 0 if model.items.tied else n(model.items.id_out) + n(model.items.oov_out)
    return {"backbone": n(model.backbone), "embedding": n(model.embed) + n(model.items.id_in)
            + n(model.items.oov_in), "semantic_tower": tower,
            "decoding": n(model.head) + out_tables + age, "total": n(model)}
