"""What `hft serve` tells operators: Prometheus metrics (one registry per app) and one JSON access-log line per request.

Metrics (prometheus-client, text format at GET /metrics):
- `hft_requests_total{endpoint, status}`: every request, by route (unmatched paths count as `other`);
- `hft_request_duration_seconds{endpoint}`: latency histogram;
- `hft_batch_size`: inputs per model call (what micro-batching achieved);
- `hft_in_flight_requests`: requests being handled now;
- `hft_model_info{task, backend, source}`: what is served.
The access log holds method, route, status, duration, request id and client address: never bodies, query strings
or headers, so neither inputs nor tokens reach it.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any, Callable

ACCESS_LOGGER = "hftoolkit.access"
REQUEST_ID_HEADER = b"x-request-id"
UNMATCHED = "other"  # endpoint label of paths no route matched (keeps the label set small)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # a client's own X-Request-ID is kept only when it is this plain

access_log = logging.getLogger(ACCESS_LOGGER)


class Metrics:
    """The app's own registry, so two apps in one process (tests) never share counters."""

    def __init__(self, model_info: dict[str, str]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = CollectorRegistry()
        self.requests = Counter("hft_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram(
            "hft_request_duration_seconds", "Request latency by endpoint.", ["endpoint"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram("hft_batch_size", "Inputs per model call.", buckets=BATCH_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("hft_in_flight_requests", "Requests being handled.", registry=self.registry)
        Info("hft_model", "The model being served.", registry=self.registry).info(model_info)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def configure_access_log() -> None:
    """JSON lines on stderr, one per request, kept apart from hft's `[hft] …` messages."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.handlers[:] = [handler]
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


def request_id(scope: dict) -> str:
    return scope.setdefault("state", {}).get("request_id", "")


class RequestMonitor:
    """Pure ASGI middleware: request id (also sent back as X-Request-ID), in-flight gauge, counters, latency, access log."""

    def __init__(self, app: Callable, metrics: Metrics, routes: set[str]):
        self.app = app
        self.metrics = metrics
        self.routes = routes  # the app's route paths, for requests answered before routing (413)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER, b"").decode("latin-1")
        rid = given if _CLIENT_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = {"code": 500}  # what the client sees if the app fails before it starts a response

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, rid.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", None)
            endpoint = route or (scope["path"] if scope["path"] in self.routes else UNMATCHED)
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
            self.metrics.latency.labels(endpoint).observe(elapsed)
            access_log.info(json.dumps(_access_line(scope, rid, endpoint, status["code"], elapsed)))


def _access_line(scope: dict, rid: str, endpoint: str, status: int, elapsed: float) -> dict[str, Any]:
    client = scope.get("client")
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "request_id": rid,
        "method": scope.get("method"),
        "endpoint": endpoint,
        "status": status,
        "duration_ms": round(elapsed * 1000, 2),
        "client": client[0] if client else None,
    }
