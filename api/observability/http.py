"""Request metrics: a counter by method, route template and status, and a latency histogram.

Labels are bounded: the route is the template the request matched (`/v1/jobs/{job_id}`, never the
raw path), a path no route matches is `<unmatched>`, and a method outside the standard ones is
`other`. A request is counted when its response starts, and its latency is the time to that point
(the wait for an admission slot included): a live stream (`/v1/jobs/{id}/stream`) or a download is
counted as soon as its headers go out, not when its body ends minutes later. /metrics itself is not
counted, so scrapes do not show up as traffic.
"""

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Prometheus' default buckets end at 10 s; uploads, scoring and chat completions may take longer.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class HttpMetrics:
    """Pure ASGI middleware (streamed bodies pass through untouched) recording each HTTP request."""

    def __init__(self, app: ASGIApp, *, registry: CollectorRegistry, routes: list[BaseRoute],
                 skip_paths: frozenset[str]) -> None:
        self.app, self.routes, self.skip_paths = app, routes, skip_paths
        self.requests = Counter("rlhf_http_requests", "HTTP requests answered, by method, route template and "
                                "status code.", ["method", "route", "status"], registry=registry)
        self.latency = Histogram("rlhf_http_request_duration_seconds", "Time from a request's arrival to the "
                                 "start of its response, by method and route template.", ["method", "route"],
                                 buckets=LATENCY_BUCKETS, registry=registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip_paths:
            await self.app(scope, receive, send)
            return
        # Routing rewrites the scope (a mount moves the path into root_path): match the request as it came.
        arrival, started, status = dict(scope), time.perf_counter(), None

        async def send_and_count(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self._record(scope, arrival, status, started)
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            if status is None:  # an exception, or no response: the server answers 500
                self._record(scope, arrival, 500, started)

    def _record(self, scope: Scope, arrival: Scope, status: int, started: float) -> None:
        method = scope["method"] if scope["method"] in METHODS else "other"
        route = getattr(scope.get("route"), "path_format", None) or route_template(arrival, self.routes)
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(time.perf_counter() - started)


def route_template(scope: Scope, routes: list[BaseRoute]) -> str:
    """The path template of the first route `scope` matches, else UNMATCHED.

    Only needed where the router set no `scope["route"]`: a mount, a path no route matches, a request a
    middleware refused before routing (a 413, a 503).
    """
    partial = None
    for route in flat_routes(routes):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "path_format", None) or UNMATCHED
        if match is Match.PARTIAL and partial is None:
            partial = getattr(route, "path_format", None)  # the path matches, the method does not (405)
    return partial or UNMATCHED


def flat_routes(routes: list[BaseRoute]) -> Iterator:
    """The app's routes with included routers expanded: recent FastAPI keeps an included router as one entry
    (iter_route_contexts expands it into its routes, each with its full path); older versions list every route."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:
        return iter(routes)
    return iter_route_contexts(routes)
