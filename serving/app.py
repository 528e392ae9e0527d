"""The Ray Serve app: `serve run serving.app:app [config=configs/local.yaml] [checkpoint=PATH]`.

It serves the checkpoint named by the winner manifest that `tuning.sweep` wrote under the config's storage (or an
explicit `checkpoint=` folder). Routes: `POST /recommend` (a user's recent events -> top-k titles with scores),
`GET /healthz`, and FastAPI's OpenAPI page at `/docs`. Invalid bodies get a 4xx that names the field; the replica
keeps serving.
"""


import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from genrec.checkpoint import load_checkpoint
from genrec.config import GenrecConfig, load_config
from genrec.windows import context_window

api = FastAPI(title="genrec", description="Next-title recommendations from a generative recommender.")
# Set by the replica from serve.max_body_bytes; a module global because the middleware belongs to the app object.
MAX_BODY_BYTES = [4 * 1024 * 1024]


@api.middleware("http")
async def refuse_oversized_bodies(request, call_next):
    """A body larger than serve.max_body_bytes is refused from its Content-Length, before it is read or parsed."""
    size = request.headers.get("content-length")
    if size is None and request.method in ("POST", "PUT", "PATCH"):
        # A chunked body would slip past the limit: every client that sends JSON also sends its length.
        return JSONResponse(status_code=411, content={"detail": "content-length: required for a request body"})
    if size is not None:
        if not size.isdigit():
            return JSONResponse(status_code=400, content={"detail": f"content-length: {size!r} is not a size"})
        if int(size) > MAX_BODY_BYTES[0]:
            return JSONResponse(status_code=413, content={
                "detail": f"body: {int(size):,} bytes, at most {MAX_BODY_BYTES[0]:,} allowed (serve.max_body_bytes)"})
    return await call_next(request)


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: int = Field(..., description="catalogue id of the title")
    timestamp: int | None = Field(None, ge=0, description="Unix seconds; omit when unknown")
    action: int = Field(0, ge=0, le=255, description="event type id (0 = play)")
    utility: float = Field(1.0, ge=0.0, le=1e6, description="rating, watch fraction, ...; 1 when unknown")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[Event] = Field(..., min_length=1, description="the user's events, oldest first")
    k: int | None = Field(None, ge=1, description="how many titles to return (default: serve.default_k)")
    exclude_seen: bool = Field(True, description="leave titles already in the history out of the ranking")
    # Up to 10^11 s (year 5138): a larger value is almost surely milliseconds, and would age every title by millennia.
    request_ts: int | None = Field(None, ge=0, le=10**11, description="Unix seconds of the request (default: now); "
                                   "titles are scored by their age at that time")


class Recommendation(BaseModel):
    item_id: int
    title: str
    score: float


class RecommendResponse(BaseModel):
    items: list[Recommendation]
    unknown_items: list[int] = Field(description="history item ids not in the catalogue (ignored for scoring)")
    model: str


@serve.deployment
@serve.ingress(api)
class Recommender:
    def __init__(self, checkpoint: str, default_k: int = 10, max_k: int = 1000, max_history: int = 10_000,
                 max_body_bytes: int = 4 * 1024 * 1024):
        torch.set_num_threads(1)
        MAX_BODY_BYTES[0] = max_body_bytes
        self.loaded = load_checkpoint(checkpoint)
        items = self.loaded.items
        ids = items.column("item_id").to_numpy()
        index = items.column("index").to_numpy()
        self.index_of = dict(zip(ids.tolist(), index.tolist()))
        self.id_at = np.zeros(len(ids) + 1, dtype=np.int64)
        self.id_at[index] = ids
        titles = items.column("title").to_pylist()
        self.title_at = [""] * (len(ids) + 1)
        for i, t in zip(index.tolist(), titles):
            self.title_at[i] = t or ""
        self.default_k, self.max_k, self.max_history = default_k, max_k, max_history
        self.name = f"{self.loaded.info.get('preset', 'custom')}-len{self.loaded.spec.max_seq_len}"
        with torch.no_grad():  # the catalogue's output embeddings do not depend on the request: computed once
            self.item_matrix = self.loaded.model.item_matrix()

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "model": self.name, "titles": len(self.index_of)}

    @api.post("/recommend", response_model=RecommendResponse)
    def recommend(self, req: RecommendRequest) -> RecommendResponse:
        k = req.k or self.default_k
        if k > self.max_k:
            raise HTTPException(422, f"k: {k} is above the maximum of {self.max_k}")
        if len(req.history) > self.max_history:
            raise HTTPException(422, f"history: {len(req.history)} events, at most {self.max_history} allowed")
        known = [e for e in req.history if e.item_id in self.index_of]
        unknown = sorted({e.item_id for e in req.history if e.item_id not in self.index_of})
        if not known:
            raise HTTPException(422, f"history: none of the item ids are in the catalogue (unknown: {unknown[:20]})")
        items = [self.index_of[e.item_id] for e in known]
        # Missing timestamps count as back-to-back events (gap bucket of a zero gap).
        ts = np.zeros(len(known), np.int64) if any(e.timestamp is None for e in known) else \
            np.asarray([e.timestamp for e in known], np.int64)
        spec = self.loaded.spec
        x_items, x_actions, x_gaps, x_utils, n = context_window(
            items, ts, [e.action for e in known], spec.max_seq_len, [e.utility for e in known])
        with torch.no_grad():
            scores = self.loaded.model.score_last(
                *(torch.from_numpy(a)[None] for a in (x_items, x_actions, x_gaps, x_utils)), torch.tensor([n]),
                self.item_matrix, torch.tensor([int(time.time()) if req.request_ts is None else req.request_ts]))[0]
        if req.exclude_seen:
            scores[torch.tensor(items)] = float("-inf")
        k = min(k, int(torch.isfinite(scores).sum()))
        top = torch.topk(scores, k)
        return RecommendResponse(
            items=[Recommendation(item_id=int(self.id_at[i]), title=self.title_at[i], score=float(s))
                   for s, i in zip(top.values.tolist(), top.indices.tolist())],
            unknown_items=unknown, model=self.name)


def resolve_checkpoint(cfg: GenrecConfig, checkpoint: str | None = None) -> str:
    if checkpoint:
        return str(Path(checkpoint).resolve())
    winner = cfg.winner_path()
    if not winner.is_file():
        raise FileNotFoundError(f"{winner}: no winner manifest; run `python -m tuning.sweep --config CONFIG` "
                                "first, or pass checkpoint=PATH")
    return json.loads(winner.read_text())["checkpoint"]


def build(cfg: GenrecConfig, checkpoint: str | None = None):
    s = cfg.serve
    return Recommender.options(**s.deployment_options()).bind(
        resolve_checkpoint(cfg, checkpoint), s.default_k, s.max_k, s.max_history, s.max_body_bytes)


def app(args: dict[str, str]):
    """Application builder for `serve run serving.app:app [config=PATH] [checkpoint=PATH]`."""
    return build(load_config(args.get("config") or os.environ.get("GENREC_CONFIG")), args.get("checkpoint"))
