"""The Tinker front's metrics, read from a real /metrics scrape: requests by route and status
class (made-up paths as one "other" route) and latency by route."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from helpers import TIMEOUT
from prometheus_client.parser import text_string_to_metric_families
from tinker_helpers import post, start

from gradserve.server.metrics_endpoint import start_metrics_endpoint


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_tinker_requests_are_counted_by_route_and_status_class(make_server, tmp_path: Path) -> None:
    running, url = start(make_server, tmp_path)
    endpoint = start_metrics_endpoint(running.config, running.metrics.registry, port=0)
    try:
        with urllib.request.urlopen(url + "/api/v1/healthz", timeout=TIMEOUT) as answer:
            assert answer.status == 200
        assert post(url, "/api/v1/create_session", {})[0] == 200
        assert post(url, "/api/v1/create_session", {})[0] == 200
        for path in ("/api/v1/made_up", "/api/v1/another_made_up/1"):
            assert post(url, path, {})[0] == 404
        # A registered path with a method it does not serve: "other" too (405).
        assert post(url, "/api/v1/samplers/none-such", {})[0] == 405
        assert post(url, "/api/v1/get_info", {}, raw=b"[not json")[0] == 400
        scrape = f"http://127.0.0.1:{endpoint.port}/metrics"
        with urllib.request.urlopen(scrape, timeout=TIMEOUT) as answer:
            text = answer.read().decode()
    finally:
        endpoint.close()
    counted = _samples(text, "gradserve_tinker_requests_total")
    assert counted == {
        (("code", "2xx"), ("route", "/api/v1/healthz")): 1.0,
        (("code", "2xx"), ("route", "/api/v1/create_session")): 2.0,
        (("code", "4xx"), ("route", "other")): 3.0,
        (("code", "4xx"), ("route", "/api/v1/get_info")): 1.0,
    }
    timed = _samples(text, "gradserve_tinker_request_seconds_count")
    assert timed[(("route", "/api/v1/create_session"),)] == 2.0
    assert timed[(("route", "other"),)] == 3.0
