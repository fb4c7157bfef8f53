"""/metrics as a scraper sees it: loopback by default, a token when asked for, TLS when asked
for, and run labels that name no principal's run when the operator chooses opaque ids."""

from __future__ import annotations

import http.client
import shutil
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from test_startup_errors import self_signed

from gradserve.client.security import bearer_metadata
from gradserve.defaults import channel_options
from gradserve.server.flags import parse_args
from gradserve.server.metrics_endpoint import MetricsEndpoint, start_metrics_endpoint
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

TIMEOUT = 30
ALICE, BOB, ROOT = "alice-token-4f1e", "bob-token-9a2c", "root-token-7d3b"


@pytest.fixture
def endpoints() -> Iterator[list[MetricsEndpoint]]:
    started: list[MetricsEndpoint] = []
    yield started
    for endpoint in started:
        endpoint.close()


def scrape(url: str, token: str | None = None, context: ssl.SSLContext | None = None) -> str:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as response:
        return str(response.read().decode())


def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"alice {ALICE}\nbob {BOB}\nroot {ROOT} admin\n")
    return path


def create_runs(server) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server.address, options=channel_options()) as channel:
        stub = pb_grpc.GradientServiceStub(channel)
        for run, token in (("alice-secret-project", ALICE), ("bob-plans", BOB)):
            stub.CreateRun(pb.CreateRunRequest(run=run, model="linear"), timeout=TIMEOUT,
                           metadata=tuple(bearer_metadata(token)))  # fmt: skip


def test_metrics_bind_loopback_unless_told_otherwise() -> None:
    assert parse_args(["--host", "0.0.0.0"], environ={}).network.metrics_host == "127.0.0.1"
    opened = parse_args([], environ={"GRADSERVE_METRICS_HOST": "0.0.0.0"})
    assert opened.network.metrics_host == "0.0.0.0"


def test_a_scrape_without_a_token_gets_401_and_names_no_run(
    make_server, endpoints, tmp_path: Path
) -> None:
    server = make_server(
        auth_tokens_file=str(tokens_file(tmp_path)),
        metrics_auth="admin",
        metrics_run_labels="id",
    )
    create_runs(server)
    endpoints.append(start_metrics_endpoint(server.config, server.metrics.registry, port=0))
    url = f"http://127.0.0.1:{endpoints[0].port}/metrics"
    for token in (None, "wrong", ALICE):  # alice's token is not an admin's
        with pytest.raises(urllib.error.HTTPError) as caught:
            scrape(url, token)
        caught.value.close()
        assert caught.value.code == 401
    text = scrape(url, ROOT)
    assert "gradserve_model_version{" in text
    # Opaque ids: even an admin's scrape carries no principal's run names.
    assert "alice-secret-project" not in text and "bob-plans" not in text
    assert text.count('gradserve_model_version{run="id-') == 2


def test_an_anonymous_scrape_names_no_run_with_opaque_labels(make_server, endpoints) -> None:
    server = make_server(metrics_run_labels="id")
    with grpc.insecure_channel(server.address, options=channel_options()) as channel:
        stub = pb_grpc.GradientServiceStub(channel)
        stub.CreateRun(pb.CreateRunRequest(run="secret-name", model="linear"), timeout=TIMEOUT)
        endpoints.append(start_metrics_endpoint(server.config, server.metrics.registry, port=0))
        text = scrape(f"http://127.0.0.1:{endpoints[0].port}/metrics")
        assert "secret-name" not in text
        assert 'gradserve_model_version{run=""}' in text  # the default run keeps its label
        # Deleting the run removes its series under its opaque label too.
        stub.DeleteRun(pb.DeleteRunRequest(run="secret-name"), timeout=TIMEOUT)
    assert 'run="id-' not in scrape(f"http://127.0.0.1:{endpoints[0].port}/metrics")


def test_run_names_label_runs_by_default(make_server, endpoints) -> None:
    server = make_server()
    with grpc.insecure_channel(server.address, options=channel_options()) as channel:
        stub = pb_grpc.GradientServiceStub(channel)
        stub.CreateRun(pb.CreateRunRequest(run="visible", model="linear"), timeout=TIMEOUT)
    endpoints.append(start_metrics_endpoint(server.config, server.metrics.registry, port=0))
    assert 'run="visible"' in scrape(f"http://127.0.0.1:{endpoints[0].port}/metrics")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_metrics_over_tls_refuse_plain_http(make_server, endpoints, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "server")
    server = make_server(tls_cert=str(cert), tls_key=str(key), metrics_tls=True)
    endpoints.append(start_metrics_endpoint(server.config, server.metrics.registry, port=0))
    port = endpoints[0].port
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        scrape(f"http://127.0.0.1:{port}/metrics")
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False  # the test certificate has a CN and no subjectAltName
    assert "gradserve_model_version" in scrape(f"https://127.0.0.1:{port}/metrics", None, context)
