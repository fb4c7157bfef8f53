"""TLS, mTLS and bearer tokens: who gets in, who does not, and that tokens never reach the logs.

Certificates are made here with the openssl CLI (docs/security.md shows the same commands).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import linear_batch

from gradserve.client.gradient_client import NO_RETRY, GradientClient
from gradserve.client.security import bearer_metadata, channel_credentials, read_token
from gradserve.errors import UnauthenticatedError, UnavailableError
from gradserve.server.flags import parse_args

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

TOKEN = "gs-test-token-7f3a9c1e5b"
OTHER_TOKEN = "gs-second-token-0d2e4f"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "1", "-subj", f"/CN={name}",
        cwd=folder,
    )  # fmt: skip


def make_cert(folder: Path, name: str, ca: str, extensions: str) -> None:
    (folder / f"{name}.ext").write_text(extensions + "\n")
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=folder,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext",
        cwd=folder,
    )  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    make_ca(folder, "ca")
    make_ca(folder, "other-ca")
    make_cert(folder, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    make_cert(folder, "client", "ca", "extendedKeyUsage=clientAuth")
    make_cert(folder, "stranger", "other-ca", "extendedKeyUsage=clientAuth")
    return folder


def tls_server(make_server, certs: Path, **overrides):
    return make_server(
        tls_cert=str(certs / "server.pem"), tls_key=str(certs / "server.key"), **overrides
    )


def client_for(server, **options) -> GradientClient:
    return GradientClient(server.address, timeout=5.0, retry=NO_RETRY, **options)


def test_plaintext_client_cannot_talk_to_a_tls_server(make_server, certs) -> None:
    server = tls_server(make_server, certs)
    with client_for(server) as client, pytest.raises(UnavailableError):
        client.model_info()


def test_tls_client_trusting_the_ca_gets_in(make_server, certs) -> None:
    server = tls_server(make_server, certs)
    with client_for(server, credentials=channel_credentials(certs / "ca.pem")) as client:
        assert client.model_info().model == "linear"


def test_tls_client_trusting_another_ca_is_refused(make_server, certs) -> None:
    server = tls_server(make_server, certs)
    with (
        client_for(server, credentials=channel_credentials(certs / "other-ca.pem")) as client,
        pytest.raises(UnavailableError),
    ):
        client.model_info()


def test_mtls_requires_a_client_certificate_from_the_ca(make_server, certs) -> None:
    server = tls_server(make_server, certs, tls_client_ca=str(certs / "ca.pem"))
    without = channel_credentials(certs / "ca.pem")
    with client_for(server, credentials=without) as client, pytest.raises(UnavailableError):
        client.model_info()
    stranger = channel_credentials(certs / "ca.pem", certs / "stranger.pem", certs / "stranger.key")
    with client_for(server, credentials=stranger) as client, pytest.raises(UnavailableError):
        client.model_info()
    good = channel_credentials(certs / "ca.pem", certs / "client.pem", certs / "client.key")
    with client_for(server, credentials=good) as client:
        assert client.model_info().model_version == 0


def test_tokens_missing_or_wrong_are_unauthenticated_and_change_nothing(
    make_server, tmp_path, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"# operators\n{TOKEN}\n\n")
    server = make_server(auth_tokens_file=str(tokens_file), auth_tokens=(OTHER_TOKEN,))
    x, y = linear_batch(4)
    before = server.store.export_state()
    for metadata in ((), bearer_metadata("not-the-token"), (("authorization", TOKEN),)):
        with client_for(server, metadata=metadata) as client:
            for call in (
                lambda c: c.compute_gradients(x, y),
                lambda c: c.apply_update(0.1),
                lambda c: c.set_parameters({"w": torch.ones(1)}),
                lambda c: c.get_parameters(),
                lambda c: c.discard_gradients(),
            ):
                with pytest.raises(UnauthenticatedError):
                    call(client)
    after = server.store.export_state()
    assert (after.version, after.accumulated_batches) == (before.version, 0)
    for name, value in before.parameters.items():
        assert torch.equal(after.parameters[name], value)
    assert not after.gradients
    assert (
        server.metrics.registry.get_sample_value(
            "gradserve_rejected_requests_total",
            {"grpc_method": "ComputeGradients", "reason": "UNAUTHENTICATED"},
        )
        == 3
    )

    for token in (TOKEN, OTHER_TOKEN):
        with client_for(server, metadata=bearer_metadata(token)) as client:
            result = client.compute_gradients(x, y)
            assert result.accumulated_batches >= 1
            client.apply_update(0.1)
    assert server.store.version == 2
    assert TOKEN not in caplog.text and OTHER_TOKEN not in caplog.text


def test_health_needs_no_token_unless_configured(make_server) -> None:
    open_health = make_server(auth_tokens=(TOKEN,))
    closed_health = make_server(auth_tokens=(TOKEN,), auth_allow_unauthenticated_health=False)
    request = health_pb2.HealthCheckRequest(service="gradserve.v1.GradientService")
    with grpc.insecure_channel(open_health.address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(closed_health.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Check(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        response = stub.Check(request, timeout=5, metadata=bearer_metadata(TOKEN))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_tokens_come_from_the_environment_and_are_never_printed(tmp_path) -> None:
    config = parse_args([], {"GRADSERVE_AUTH_TOKENS": f"{TOKEN},{OTHER_TOKEN}"})
    assert config.security.auth_tokens == (TOKEN, OTHER_TOKEN)
    assert TOKEN not in repr(config) and TOKEN not in str(config)
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    assert read_token(token_file) == TOKEN
    assert read_token(None, {"GRADSERVE_TOKEN": OTHER_TOKEN}) == OTHER_TOKEN
    assert read_token(None, {}) is None


def test_not_ready_names_tls_when_a_plaintext_client_meets_a_tls_server(make_server, certs) -> None:
    server = tls_server(make_server, certs)
    with client_for(server) as client, pytest.raises(UnavailableError) as caught:
        client.wait_until_ready(timeout=1.0)
    assert "not ready" in str(caught.value)
    assert "speaks TLS" in str(caught.value) and "--tls-ca" in str(caught.value)


def test_not_ready_names_the_client_certificate_an_mtls_server_asks_for(make_server, certs) -> None:
    server = tls_server(make_server, certs, tls_client_ca=str(certs / "ca.pem"))
    without = channel_credentials(certs / "ca.pem")
    with (
        client_for(server, credentials=without) as client,
        pytest.raises(UnavailableError) as caught,
    ):
        client.wait_until_ready(timeout=1.0)
    assert "client certificate" in str(caught.value) and "--tls-cert" in str(caught.value)


def test_not_ready_adds_no_tls_hint_when_tls_is_not_the_cause(make_server, certs) -> None:
    server = tls_server(make_server, certs)
    stopped = make_server()
    stopped.stop(0)  # nothing listens on its port any more
    for target, credentials in (
        (stopped.address, None),
        (server.address, channel_credentials(certs / "other-ca.pem")),  # TLS as expected
    ):
        client = GradientClient(target, timeout=5.0, retry=NO_RETRY, credentials=credentials)
        with client, pytest.raises(UnavailableError) as caught:
            client.wait_until_ready(timeout=1.0)
        assert "TLS" not in str(caught.value) and "certificate" not in str(caught.value)
