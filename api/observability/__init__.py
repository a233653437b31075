"""Prometheus metrics for operators: `GET /metrics` in the Prometheus text format.

Each app has a registry of its own: the request metrics (api.observability.http), the database's
figures read at scrape time (api.observability.database), and the client library's process, platform
and garbage-collector collectors. The API runs as one uvicorn process (`rlhf-service api`); run
several behind a balancer and scrape each one as its own target: the request counters are per
process, the database gauges the same from any of them.

/metrics needs no project key. With METRICS_TOKEN set it needs `Authorization: Bearer <token>`
instead (401 otherwise); it is left out of the OpenAPI schema.
"""

import hmac

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from api.errors import Unauthenticated
from api.observability.database import DatabaseCollector
from api.observability.http import HttpMetrics
from core.settings import Settings

METRICS_PATH = "/metrics"


def install_metrics(app: FastAPI, settings: Settings) -> None:
    """Count `app`'s requests and serve its registry at /metrics. Call it after the app's other middleware,
    so that requests those refuse (413, 503) are counted and the wait for admission is part of the latency."""
    registry = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    registry.register(DatabaseCollector(settings.database_url))
    app.add_middleware(HttpMetrics, registry=registry, routes=app.router.routes,
                       skip_paths=frozenset({METRICS_PATH}))
    token = settings.metrics_token.get_secret_value().encode() if settings.metrics_token else None

    @app.get(METRICS_PATH, include_in_schema=False)
    def metrics(request: Request) -> Response:
        if token is not None and not _bearer_matches(request.headers.get("authorization", ""), token):
            raise Unauthenticated("/metrics needs the METRICS_TOKEN as `Authorization: Bearer <token>`")
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), media_type=content_type)


def _bearer_matches(header: str, token: bytes) -> bool:
    scheme, _, credentials = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token)
