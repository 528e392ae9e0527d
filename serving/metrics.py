"""The Serve app's own metrics, exported through Ray's metrics (Prometheus format, on every node's metrics export
port; Ray prefixes each name with `ray_`, and counters get `_total`):

  genrec_request_seconds{route, status}                    request latency, a histogram per route and status
  genrec_requests{route, status}                           requests answered, by route and HTTP status
  genrec_recommendations{model, checkpoint, state}         rankings served: which model and checkpoint answered,
                                                           from a history sent in full or a cached user state
  genrec_user_states{result}                               user-state lookups by id: hit (cached state current),
                                                           encoded (re-encoded from the stored events)
  genrec_batch_size                                        requests per batched model forward (serve.batch)

Routes are the app's path templates (`/users/{user_id}/events`), never raw paths, so a label has a bounded number of
values. Created in each replica (Ray metrics belong to the process that records them).
"""

from __future__ import annotations

from ray.util.metrics import Counter, Histogram

LATENCY_BOUNDS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
BATCH_BOUNDS = [1, 2, 4, 8, 16, 32, 64]


class AppMetrics:
    """One replica's instruments."""

    def __init__(self):
        self.latency = Histogram("genrec_request_seconds", "request latency by route and HTTP status",
                                 boundaries=LATENCY_BOUNDS_S, tag_keys=("route", "status"))
        self.requests = Counter("genrec_requests", "requests answered by route and HTTP status",
                                tag_keys=("route", "status"))
        self.rankings = Counter("genrec_recommendations", "rankings served by model, checkpoint and the "
                                "context they came from (history or cached state)",
                                tag_keys=("model", "checkpoint", "state"))
        self.user_states = Counter("genrec_user_states", "user-state lookups by id: hit (the cached state is "
                                   "current) or encoded (re-encoded from the stored events)", tag_keys=("result",))
        self.batch_size = Histogram("genrec_batch_size", "requests per batched model forward",
                                    boundaries=BATCH_BOUNDS)

    def request(self, route: str, status: int, seconds: float) -> None:
        tags = {"route": route, "status": str(status)}
        self.latency.observe(seconds, tags=tags)
        self.requests.inc(1.0, tags=tags)
