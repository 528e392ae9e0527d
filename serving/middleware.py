"""The Serve app's HTTP middleware, with the settings each replica gives it when it starts.

Their settings live here, not in serving/app.py: Ray Serve ships the deployment class to its replicas by value
(cloudpickle), and the data globals its methods use travel as copies, while these functions, like every function of
an importable module, are found by reference. A value the replica stored in a global of serving.app was never the
one the middleware read (serve.max_body_bytes kept its default, and no request was measured).
"""

from __future__ import annotations

import time

from fastapi.responses import JSONResponse

from serving.metrics import AppMetrics

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
_settings: dict = {"max_body_bytes": DEFAULT_MAX_BODY_BYTES, "metrics": None}


def configure_middleware(max_body_bytes: int, metrics: AppMetrics | None) -> None:
    """Called by the replica when it starts: serve.max_body_bytes, and the metrics requests are recorded in."""
    _settings.update(max_body_bytes=max_body_bytes, metrics=metrics)


async def refuse_oversized_bodies(request, call_next):
    """A body larger than serve.max_body_bytes is refused from its Content-Length, before it is read or parsed."""
    limit = _settings["max_body_bytes"]
    size = request.headers.get("content-length")
    if size is None and request.method in ("POST", "PUT", "PATCH"):
        # A chunked body would slip past the limit: every client that sends JSON also sends its length.
        return JSONResponse(status_code=411, content={"detail": "content-length: required for a request body"})
    if size is not None:
        if not size.isdigit():
            return JSONResponse(status_code=400, content={"detail": f"content-length: {size!r} is not a size"})
        if int(size) > limit:
            return JSONResponse(status_code=413, content={
                "detail": f"body: {int(size):,} bytes, at most {limit:,} allowed (serve.max_body_bytes)"})
    return await call_next(request)


async def measure_requests(request, call_next):
    """Latency and count of every answered request by route (the path template) and status (serving.metrics)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        metrics = _settings["metrics"]
        if metrics is not None:
            route = request.scope.get("route")
            metrics.request(getattr(route, "path", "unmatched"), status, time.perf_counter() - started)
