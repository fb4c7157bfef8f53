"""The Tinker HTTP front's Prometheus metrics: requests by route and status class, latency.

Declared on the server's own registry (ServerMetrics.registry), so /metrics shows them beside
the gRPC ones. The route label is the path template the app registers (`/api/v1/asample`,
`/api/v1/samplers/{sampler_id}`), a closed set; any other path a client sends is "other",
so made-up paths never add series. The code label is the status class ("2xx" ... "5xx").
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from ..metrics import LATENCY_BUCKETS

OTHER_ROUTE = "other"


class TinkerMetrics:
    def __init__(self, registry: CollectorRegistry, routes: Iterable[str]) -> None:
        self._routes = frozenset(routes)
        self.requests = Counter(
            "gradserve_tinker_requests_total",
            "Tinker API requests answered, by route and HTTP status class.",
            ["route", "code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "gradserve_tinker_request_seconds",
            "Time to answer a Tinker API request (a retrieve_future long poll included).",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def route_of(self, request: web.Request) -> str:
        """The registered path template the request matched, else "other"."""
        resource = request.match_info.route.resource
        template = resource.canonical if resource is not None else ""
        return template if template in self._routes else OTHER_ROUTE

    def record(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, code=f"{status // 100}xx").inc()
        self.seconds.labels(route=route).observe(seconds)
