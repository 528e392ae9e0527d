"""The Ray Serve app: `serve run serving.app:app [config=configs/local.yaml] [checkpoint=PATH]`.

It serves the checkpoints named by the winner manifest that `tuning.sweep` wrote under the config's storage: the
winner, and every finished trial of its sweep by id (`2m-len64-s0-w0`), chosen per request (`model` in the body or
Serve's `serve_multiplexed_model_id` header) and loaded on demand with `serve.multiplexed` (least recently used ones
unloaded). Model forwards of concurrent requests are batched with `serve.batch`.

Routes (OpenAPI page at `/docs`):
  POST /recommend               top-k titles for a history sent in full, or for a user id (cached state; token)
  POST /users/{user_id}/events  append a user's new events; encoded on top of the cached state (token)
  DELETE /users/{user_id}       forget a user: the stored events and every replica's cached state (token)
  POST /titles                  add titles to the live catalogue, scored from metadata at once (token)
  GET  /healthz                 the served models and catalogue size

A new winner goes live with `genrec serve --update` (or `serve deploy`): the models map is the deployment's
`user_config`, so replicas switch in place while requests keep being answered. Invalid requests get a 4xx naming
the field; the replica keeps serving.
"""

import hashlib
import hmac
import logging
import os
import time
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Annotated
from pathlib import Path

import torch
from fastapi import FastAPI, Header, HTTPException, Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from ray import serve

from genrec.checkpoint import CheckpointError, load_last_good
from genrec.config import GenrecConfig, load_config
from genrec.data.schema import DataError
from genrec.recommend import Ranker, UserState, titles_table, write_titles
from genrec.storage import Store
from genrec.winner import read_winner
from serving.metrics import AppMetrics
from serving.middleware import configure_middleware, measure_requests, refuse_oversized_bodies

api = FastAPI(title="genrec", description="Next-title recommendations from a generative recommender.")
# Checkpoints one replica keeps loaded (serve.multiplexed takes a constant); the least recently used is unloaded.
MAX_MODELS_PER_REPLICA = 4
ERASURES_KEPT = 100_000  # forgotten users listed for replicas to drop; a replica further behind drops every state
DEFAULT_MODEL = "winner"
logger = logging.getLogger("ray.serve")


# Declared in this order, so that measure_requests is the outermost middleware (Starlette puts the last one added
# outside): a body refused for its size is counted too.
api.middleware("http")(refuse_oversized_bodies)
api.middleware("http")(measure_requests)


@api.exception_handler(RequestValidationError)
async def invalid_request(request, exc: RequestValidationError):
    """422 naming each bad field by its path (body.history.0.item_id), without echoing the input back: a rejected
    4 MB body must not come back as a 4 MB error."""
    return JSONResponse(status_code=422, content={"detail": [
        {"field": ".".join(str(p) for p in e["loc"]), "msg": e["msg"].removeprefix("Value error, ")}
        for e in exc.errors()]})


# Up to 10^11 s (year 5138): a larger value is almost surely milliseconds, and would age every title by millennia.
MAX_TS = 10**11
MAX_ITEM_ID = 2**63 - 1  # the catalogue stores ids as int64: a larger one is a 422, not an overflow (a 500)
GenreName = Annotated[str, StringConstraints(max_length=100)]


def check_time_order(field: str, timestamps: list[int | None]) -> None:
    """Both routes that take events want them oldest first (the model reads them as a sequence): a 422 naming the
    first event earlier than the one before it. Events without a timestamp are not compared."""
    last = None
    for i, t in enumerate(timestamps):
        if t is None:
            continue
        if last is not None and t < last[1]:
            raise HTTPException(422, f"{field}.{i}.timestamp: earlier than event {last[0]}; send events in time order")
        last = (i, t)


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: int = Field(..., description="catalogue id of the title")
    timestamp: int | None = Field(None, ge=0, le=MAX_TS, description="Unix seconds; omit when unknown (for "
                                  "/users/{id}/events: the time the event is received)")
    action: int = Field(0, ge=0, le=255, description="event type id (0 = play)")
    utility: float = Field(1.0, ge=0.0, le=1e6, description="rating, watch fraction, ...; 1 when unknown")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[Event] | None = Field(None, min_length=1, description="the user's events, oldest first")
    user_id: int | None = Field(None, ge=0, description="rank from this user's cached state (POST "
                                "/users/{id}/events) instead of a history")
    model: str | None = Field(None, max_length=200, description="which served model ranks (GET /healthz lists "
                              "them; default: the winner)")
    k: int | None = Field(None, ge=1, description="how many titles to return (default: serve.default_k)")
    exclude_seen: bool = Field(True, description="leave titles already in the history out of the ranking")
    request_ts: int | None = Field(None, ge=0, le=MAX_TS, description="Unix seconds of the request (default: "
                                   "now); titles are scored by their age at that time")
    # Bounded, as every request field an unauthenticated caller sets: at most 100 names of at most 100 characters.
    genres: list[GenreName] | None = Field(None, max_length=100, description="only titles with at least one of these")
    launched_after: int | None = Field(None, ge=0, le=MAX_TS, description="only titles launched at or after this")
    launched_before: int | None = Field(None, ge=0, le=MAX_TS, description="only titles launched before this "
                                        "(availability window: with launched_after)")

    @model_validator(mode="after")
    def _one_source(self) -> "RecommendRequest":
        if (self.history is None) == (self.user_id is None):
            raise ValueError("history, user_id: send exactly one (a full history, or the id of a user whose "
                             "events were posted to /users/{user_id}/events)")
        return self


class Recommendation(BaseModel):
    item_id: int
    title: str
    score: float


class RecommendResponse(BaseModel):
    items: list[Recommendation]
    unknown_items: list[int] = Field(description="history item ids not in the catalogue (ignored for scoring)")
    model: str = Field(description="the served model id that ranked")
    checkpoint: str = Field(description="its checkpoint (run and folder)")
    state: str = Field(description="'history' (encoded from the request) or 'cached' (the user's state)")
    state_age_s: float | None = Field(None, description="seconds since the user's last event reached the state")


class UserEventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[Event] = Field(..., min_length=1, description="new events, oldest first, after the stored ones")
    model: str | None = Field(None, max_length=200, description="which model's state to update at once (others "
                              "are encoded when first asked)")


class UserEventsResponse(BaseModel):
    user_id: int
    events: int = Field(description="events stored for the user (the newest serve.max_history)")
    unknown_items: list[int]
    state: str = Field(description="'incremental' (encoded on top of the cached state), 'recomputed' (the whole "
                       "window re-encoded) or 'none' (no known title yet)")
    model: str


class ForgetResponse(BaseModel):
    user_id: int
    events: int = Field(description="events that were stored for the user and are now deleted (0: none were)")


class Title(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: int = Field(..., ge=0, le=MAX_ITEM_ID)
    title: str = Field("", max_length=1000)
    genres: list[GenreName] = Field(default_factory=list, max_length=32)
    year: int | None = Field(None, ge=0, le=3000)
    launch_ts: int | None = Field(None, ge=0, le=MAX_TS, description="Unix seconds of release (default: now)")
    text: str = Field("", max_length=20_000, description="free text: tags, keywords, a synopsis")


class TitlesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    titles: list[Title] = Field(..., min_length=1, max_length=10_000)


class TitlesResponse(BaseModel):
    added: list[int]
    titles: int = Field(description="titles in the default model's catalogue now")
    update: str = Field(description="the catalogue update file written under storage")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class UserEvents:
    """Every replica's source of truth for users' events (ids, not indices: each model resolves them itself), kept
    for serve.user_ttl_s after a user's last event and for the serve.max_users most recent users. Replicas cache
    encoded states and ask here only for a version number unless theirs is stale."""

    def __init__(self, ttl_s: float, max_users: int, max_events: int):
        self.ttl_s, self.max_users, self.max_events = ttl_s, max_users, max_events
        self.users: OrderedDict[int, dict] = OrderedDict()  # least recently updated first
        # Versions come from one clock that starts at this deployment's start time (ns) and never repeats, across
        # restarts too: a replica's state of a user who was forgotten and came back never passes for the new one's.
        self.clock = time.time_ns()
        # Erasures are numbered from the start time as well: a replica whose count comes from an earlier start of
        # this deployment is told to drop every state (the list it would need is gone).
        self.erasures_from = self.erasures = time.time_ns()
        self.erased: deque[tuple[int, int]] = deque(maxlen=ERASURES_KEPT)  # (erasure number, user id)

    def _expire(self) -> None:
        old = time.time() - self.ttl_s
        while self.users and next(iter(self.users.values()))["updated_at"] < old:
            self.users.popitem(last=False)

    def append(self, user_id: int, events: list[dict]) -> dict:
        self._expire()
        rec = self.users.get(user_id) or {"events": [], "version": 0, "updated_at": 0.0}
        last = rec["events"][-1]["timestamp"] if rec["events"] else None
        if last is not None and events[0]["timestamp"] < last:
            return {"error": f"events.0.timestamp: {events[0]['timestamp']} is before the user's last stored event "
                             f"({last}); send events in time order"}
        prev = rec["version"]
        rec["events"] = (rec["events"] + events)[-self.max_events:]
        self.clock += 1
        rec["version"] = self.clock
        rec["updated_at"] = time.time()
        self.users[user_id] = rec
        self.users.move_to_end(user_id)
        while len(self.users) > self.max_users:
            self.users.popitem(last=False)
        return {"prev_version": prev, "version": rec["version"], "stored": len(rec["events"]),
                "updated_at": rec["updated_at"]}

    def forget(self, user_id: int) -> int:
        """Delete a user's events (the number deleted); replicas drop their cached states of the user as they learn
        of it (erased_since)."""
        rec = self.users.pop(user_id, None)
        self.erasures += 1
        self.erased.append((self.erasures, user_id))
        return len(rec["events"]) if rec else 0

    def erased_since(self, seen: int) -> tuple[int, list[int] | None]:
        """(the latest erasure number, the users erased after erasure `seen`; None when some of those are no longer
        listed: the caller then drops every cached state)."""
        if seen < self.erasures_from or seen > self.erasures or self.erasures - seen > len(self.erased):
            return self.erasures, None
        return self.erasures, [u for n, u in self.erased if n > seen]

    def get(self, user_id: int, have_version: int = -1) -> dict | None:
        """The user's version and last update; the events too unless the caller already has that version."""
        self._expire()
        rec = self.users.get(user_id)
        if rec is None:
            return None
        out = {"version": rec["version"], "updated_at": rec["updated_at"]}
        if rec["version"] != have_version:
            out["events"] = rec["events"]
        return out


@dataclass(frozen=True)
class ReplicaSettings:
    """What a replica reads of the config: the serve.* limits and the storage it loads from. Built once (`of`), where
    the app is built, and pickled to each replica with the deployment's bind arguments (a module-level class, so it
    pickles by reference)."""

    default_k: int
    max_k: int
    max_history: int
    max_body_bytes: int
    batch_max_size: int
    batch_wait_s: float
    state_cache_users: int
    catalogue_poll_s: float
    token_env: str
    storage_root: str
    storage_cache: str | None
    allow_unverified_checkpoints: bool

    @classmethod
    def of(cls, cfg: GenrecConfig) -> "ReplicaSettings":
        serve_config, storage = cfg.serve, cfg.storage
        return cls(default_k=serve_config.default_k, max_k=serve_config.max_k, max_history=serve_config.max_history,
                   max_body_bytes=serve_config.max_body_bytes, batch_max_size=serve_config.batch_max_size,
                   batch_wait_s=serve_config.batch_wait_s, state_cache_users=serve_config.state_cache_users,
                   catalogue_poll_s=serve_config.catalogue_poll_s, token_env=serve_config.token_env,
                   storage_root=storage.root, storage_cache=storage.cache,
                   allow_unverified_checkpoints=storage.allow_unverified_checkpoints)


@serve.deployment
@serve.ingress(api)
class Recommender:
    def __init__(self, users, catalogue_dir: str, token_sha256: str | None, settings: ReplicaSettings):
        torch.set_num_threads(1)
        self.users = users
        # Catalogue updates and checkpoints live in the config's storage: a local folder or a URI (genrec.storage).
        self.store = Store(settings.storage_root, settings.storage_cache)
        self.catalogue_dir = catalogue_dir
        self.token_sha256 = token_sha256
        self.settings = settings
        self.metrics = AppMetrics()
        configure_middleware(settings.max_body_bytes, self.metrics)
        self.score_batch.set_max_batch_size(settings.batch_max_size)
        self.score_batch.set_batch_wait_timeout_s(settings.batch_wait_s)
        self.models: dict[str, str] = {}
        self.default = DEFAULT_MODEL
        self.rankers: weakref.WeakValueDictionary[str, Ranker] = weakref.WeakValueDictionary()
        self.states: OrderedDict[tuple[int, str], UserState] = OrderedDict()
        self.batches = {"batches": 0, "requests": 0, "largest": 0}  # how well serve.batch groups requests
        self.degraded: dict[str, str] = {}  # checkpoint asked for -> why another of its run is served
        self.erasures_seen, self.erasures_polled = 0, float("-inf")

    def reconfigure(self, config: dict) -> None:
        """A rollout: `genrec serve --update` or `serve deploy` with a new models map (the deployment's user_config).
        Requests in flight finish on the model they started with; the next ones use the new map."""
        self.models = dict(config["models"])
        self.default = config.get("default", DEFAULT_MODEL)

    # -- models --------------------------------------------------------------------------------------------------
    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS_PER_REPLICA)
    async def load_ranker(self, path: str) -> Ranker:
        """Keyed by checkpoint folder, so a rollout that points `winner` at a new checkpoint loads the new one."""
        loaded, degraded = load_last_good(path, store=self.store,
                                          allow_unverified=self.settings.allow_unverified_checkpoints)
        if degraded:  # a corrupt checkpoint: serve the run's last good one, and say so in /healthz and the logs
            logger.warning("model %s: %s", path, degraded)
            self.degraded[path] = degraded
        ranker = Ranker(loaded, name=f"{loaded.path.parent.name}/{loaded.path.name}")
        ranker.sync_titles(self.catalogue_dir, self.store)
        ranker.polled_at = time.monotonic()
        self.rankers[path] = ranker
        return ranker

    async def ranker(self, model: str | None) -> tuple[str, Ranker]:
        mid = model or serve.get_multiplexed_model_id() or self.default
        if mid not in self.models:
            raise HTTPException(404, f"model: {mid!r} is not served here; served: {sorted(self.models)}")
        try:
            ranker = await self.load_ranker(self.models[mid])
        except (CheckpointError, OSError) as exc:
            raise HTTPException(503, f"model {mid!r}: {exc}") from None
        if time.monotonic() - ranker.polled_at >= self.settings.catalogue_poll_s:
            ranker.sync_titles(self.catalogue_dir, self.store)  # titles another replica added
            ranker.polled_at = time.monotonic()
        if time.monotonic() - self.erasures_polled >= self.settings.catalogue_poll_s:
            await self.drop_erased()
        return mid, ranker

    async def drop_erased(self) -> None:
        """Drop the cached states of users another replica was asked to forget (DELETE /users/{id})."""
        self.erasures_polled = time.monotonic()
        self.erasures_seen, erased = await self.users.erased_since.remote(self.erasures_seen)
        if erased is None:
            self.states.clear()
        elif erased:
            self.drop_states(*erased)

    def drop_states(self, *user_ids: int) -> None:
        """Forget the cached states of these users (one pass over the cache)."""
        users = set(user_ids)
        for key in [k for k in self.states if k[0] in users]:
            del self.states[key]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def score_batch(self, jobs: list[tuple]) -> list[torch.Tensor]:
        """Score concurrent requests together, on the event loop. Not on a worker thread (so that the loop parses the
        next requests meanwhile): the proxy, not the loop, is what spaces the requests out, so a thread made the
        batches no larger and only added its hand-off; it measured slower (BENCHMARKS.md, "Serving")."""
        b = self.batches
        b["batches"], b["requests"] = b["batches"] + 1, b["requests"] + len(jobs)
        b["largest"] = max(b["largest"], len(jobs))
        self.metrics.batch_size.observe(len(jobs))
        return self._score(jobs)

    @staticmethod
    def _score(jobs: list[tuple]) -> list[torch.Tensor]:
        """One backbone forward per model for the histories among the jobs, one matrix product per model for all
        their queries. A job is (ranker, window or cached query, request_ts)."""
        out: list[torch.Tensor | None] = [None] * len(jobs)
        groups: dict[int, list[int]] = {}
        for j, (ranker, _, _) in enumerate(jobs):
            groups.setdefault(id(ranker), []).append(j)
        for idx in groups.values():
            ranker = jobs[idx[0]][0]
            windows = [j for j in idx if isinstance(jobs[j][1], tuple)]
            encoded = dict(zip(windows, ranker.queries([jobs[j][1] for j in windows]))) if windows else {}
            queries = torch.stack([encoded[j] if j in encoded else jobs[j][1] for j in idx])
            for j, row in zip(idx, ranker.scores(queries, [jobs[j][2] for j in idx])):
                out[j] = row
        return out

    # -- auth and user state -------------------------------------------------------------------------------------
    def authorize(self, authorization: str | None) -> None:
        if self.token_sha256 is None:
            raise HTTPException(403, "this route needs the serve token and none is set: set the environment variable "
                                     f"{self.settings.token_env} (or serve.token) where the app is deployed")
        if not authorization or not authorization.startswith("Bearer "):
            raise HTTPException(401, "authorization: send the header 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(sha256(authorization.removeprefix("Bearer ").strip()), self.token_sha256):
            raise HTTPException(401, "authorization: wrong token", headers={"WWW-Authenticate": "Bearer"})

    def keep(self, key: tuple[int, str], state: UserState) -> None:
        old = self.states.get(key)
        if old is None or old.version <= state.version:
            self.states[key] = state
            self.states.move_to_end(key)
        while len(self.states) > self.settings.state_cache_users:
            self.states.popitem(last=False)

    async def user_state(self, user_id: int, path: str, ranker: Ranker) -> tuple[UserState, float]:
        key = (user_id, path)
        state = self.states.get(key)
        info = await self.users.get.remote(user_id, state.version if state else -1)
        if info is None:
            self.drop_states(user_id)  # expired or forgotten: nothing of the user stays here either
            raise HTTPException(404, f"user_id: {user_id} has no events here (or they expired after "
                                     f"serve.user_ttl_s); POST /users/{user_id}/events first, or send a history")
        current = state is not None and state.version == info["version"]
        self.metrics.user_states.inc(1.0, tags={"result": "hit" if current else "encoded"})
        if not current:
            ev, unknown = ranker.resolve(info["events"])
            if not len(ev):
                raise HTTPException(422, f"user_id: none of user {user_id}'s titles are in the catalogue "
                                         f"(unknown: {unknown[:20]})")
            state = ranker.encode_state(ev, info["version"])
            self.keep(key, state)
        return state, info["updated_at"]

    # -- routes --------------------------------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict:
        mid, ranker = await self.ranker(None)
        return {"status": "ok", "default": mid, "checkpoint": ranker.name, "titles": ranker.size,
                "models": sorted(self.models), "batching": dict(self.batches),
                "degraded": [f"{path}: {why}" for path, why in self.degraded.items() if path in self.models.values()]}

    @api.post("/recommend", response_model=RecommendResponse)
    async def recommend(self, req: RecommendRequest, authorization: str | None = Header(None)) -> RecommendResponse:
        k = req.k or self.settings.default_k
        if k > self.settings.max_k:
            raise HTTPException(422, f"k: {k} is above the maximum of {self.settings.max_k} (serve.max_k)")
        if req.user_id is not None:
            # A stored history is personal data: ranking by user id (which with exclude_seen on and off lists the
            # user's titles) needs the token. A request that sends its own history stays open.
            self.authorize(authorization)
        mid, ranker = await self.ranker(req.model)
        age = None
        if req.history is not None:
            if len(req.history) > self.settings.max_history:
                raise HTTPException(422, f"history: {len(req.history)} events, at most {self.settings.max_history} "
                                         "allowed (serve.max_history)")
            check_time_order("history", [e.timestamp for e in req.history])
            ev, unknown = ranker.resolve([e.model_dump() for e in req.history])
            if not len(ev):
                raise HTTPException(422, f"history: none of the item ids are in the catalogue (unknown: "
                                         f"{unknown[:20]})")
            x, seen, kind = ranker.window(ev), set(ev.items), "history"
        else:
            state, updated_at = await self.user_state(req.user_id, self.models[mid], ranker)
            x, seen, kind, unknown = state.query, state.seen, "cached", []
            age = max(0.0, time.time() - updated_at)
        scores = await self.score_batch((ranker, x, int(time.time()) if req.request_ts is None else req.request_ts))
        allowed = ranker.candidates(req.genres, req.launched_after, req.launched_before)
        items = ranker.top(scores, k, seen if req.exclude_seen else set(), allowed)
        self.metrics.rankings.inc(1.0, tags={"model": mid, "checkpoint": ranker.name, "state": kind})
        return RecommendResponse(items=[Recommendation(**i) for i in items], unknown_items=unknown, model=mid,
                                 checkpoint=ranker.name, state=kind, state_age_s=age)

    @api.post("/users/{user_id}/events", response_model=UserEventsResponse)
    async def add_events(self, req: UserEventsRequest, user_id: int = PathParam(..., ge=0),
                         authorization: str | None = Header(None)) -> UserEventsResponse:
        self.authorize(authorization)
        mid, ranker = await self.ranker(req.model)
        now = int(time.time())
        events = [{**e.model_dump(), "timestamp": now if e.timestamp is None else e.timestamp} for e in req.events]
        check_time_order("events", [e["timestamp"] for e in events])
        stored = await self.users.append.remote(user_id, events)
        if "error" in stored:
            raise HTTPException(422, stored["error"])
        path = self.models[mid]
        new, unknown = ranker.resolve(events)
        state, kind = self.states.get((user_id, path)), "recomputed"
        nxt = None
        if state is not None and state.version == stored["prev_version"]:
            nxt = ranker.extend_state(state, new, stored["version"])
            kind = "incremental" if nxt is not None else kind
        if nxt is None:
            info = await self.users.get.remote(user_id, -1)
            ev, _ = ranker.resolve(info["events"] if info else [])  # None: forgotten meanwhile (DELETE)
            nxt = ranker.encode_state(ev, info["version"]) if len(ev) else None
        if nxt is not None:
            self.keep((user_id, path), nxt)
        return UserEventsResponse(user_id=user_id, events=stored["stored"], unknown_items=unknown,
                                  state=kind if nxt is not None else "none", model=mid)

    @api.delete("/users/{user_id}", response_model=ForgetResponse)
    async def forget_user(self, user_id: int = PathParam(..., ge=0),
                          authorization: str | None = Header(None)) -> ForgetResponse:
        """Forget a user (token): the stored events, and every replica's cached state of them (this one at once,
        the others at their first request after serve.catalogue_poll_s)."""
        self.authorize(authorization)
        deleted = await self.users.forget.remote(user_id)
        self.drop_states(user_id)
        return ForgetResponse(user_id=user_id, events=deleted)

    @api.post("/titles", response_model=TitlesResponse)
    async def add_titles(self, req: TitlesRequest, authorization: str | None = Header(None)) -> TitlesResponse:
        self.authorize(authorization)
        ids = [t.item_id for t in req.titles]
        dup = next((i for i in ids if ids.count(i) > 1), None)
        if dup is not None:
            raise HTTPException(422, f"titles: item_id {dup} appears twice in the request")
        mid, ranker = await self.ranker(None)
        ranker.sync_titles(self.catalogue_dir, self.store)
        taken = [i for i in ids if i in ranker.index_of]
        if taken:
            raise HTTPException(409, f"titles: item_id {taken[0]} is already in the catalogue; send only new titles")
        try:
            table = titles_table([t.model_dump() for t in req.titles])
            name = write_titles(self.catalogue_dir, table, self.store)
            ranker.sync_titles(self.catalogue_dir, self.store)
        except (DataError, ValueError) as exc:
            raise HTTPException(422, f"titles: {exc}") from None
        for other in list(self.rankers.values()):
            other.polled_at = float("-inf")  # the replica's other models pick the update up on their next request
        return TitlesResponse(added=ids, titles=ranker.size, update=name)


def served_models(cfg: GenrecConfig, checkpoint: str | None = None) -> dict[str, str]:
    """Model id -> checkpoint folder: the winner and every finished trial of its sweep (or one explicit folder)."""
    store = cfg.storage.store()
    if checkpoint:
        return {DEFAULT_MODEL: store.uri(store.locate(checkpoint)) if store.remote else str(Path(checkpoint).resolve())}
    manifest = read_winner(store, cfg.winner_path())
    return manifest.served_models() | {DEFAULT_MODEL: manifest.checkpoint}


def build(cfg: GenrecConfig, checkpoint: str | None = None):
    serve_config = cfg.serve
    token = os.environ.get(serve_config.token_env) or serve_config.token
    users = UserEvents.bind(serve_config.user_ttl_s, serve_config.max_users, serve_config.max_history)
    return Recommender.options(
        **serve_config.deployment_options(), user_config={"models": served_models(cfg, checkpoint), "default": DEFAULT_MODEL},
    ).bind(users, cfg.storage.store().path("catalogue", cfg.name), sha256(token) if token else None,
           ReplicaSettings.of(cfg))


def app(args: dict[str, str]):
    """Application builder for `serve run serving.app:app [config=PATH] [checkpoint=PATH]`."""
    return build(load_config(args.get("config") or os.environ.get("GENREC_CONFIG")), args.get("checkpoint"))
