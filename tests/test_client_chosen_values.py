"""What a client chose stays bounded on the server: made-up method paths add no series to
/metrics, and an error that echoes a huge name stays within the metadata limit."""

from __future__ import annotations

import grpc

from gradserve.server.metrics import UNKNOWN_METHOD, method_label

TOKEN = "gs-label-test-token-5c8e"


def label_values(server, metric: str, label: str) -> set[str]:  # type: ignore[no-untyped-def]
    found = set()
    for family in server.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == metric:
                found.add(sample.labels[label])
    return found


def test_method_label_is_a_closed_set() -> None:
    assert method_label("/gradserve.v1.GradientService/ComputeGradients") == "ComputeGradients"
    assert method_label("/grpc.health.v1.Health/Check") == "Check"
    for made_up in ("/gradserve.v1.GradientService/Nope", "/x.Y/ComputeGradients", "", "/"):
        assert method_label(made_up) == UNKNOWN_METHOD


def test_unauthenticated_calls_to_made_up_paths_add_no_label_values(make_server) -> None:
    server = make_server(auth_tokens=(TOKEN,))
    with grpc.insecure_channel(server.address) as channel:
        paths = [f"/gradserve.v1.GradientService/Made{i}" for i in range(40)]
        paths += [f"/evil{i}.Service/Call{i}" for i in range(40)]
        paths += ["/gradserve.v1.GradientService/GetModelInfo"]
        for path in paths:
            try:
                channel.unary_unary(path)(b"", timeout=5)
            except grpc.RpcError as error:
                assert error.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.UNIMPLEMENTED,
                )
    values = label_values(server, "gradserve_rejected_requests_total", "grpc_method")
    assert values == {UNKNOWN_METHOD, "GetModelInfo"}


def test_an_error_echoing_a_huge_name_stays_within_the_metadata_limit(make_server) -> None:
    from gradserve.client.gradient_client import GradientClient  # noqa: PLC0415
    from gradserve.errors import InvalidArgumentError  # noqa: PLC0415

    server = make_server()
    with GradientClient(server.address) as client:
        for length in (5_000, 9_000, 60_000):
            try:
                client.get_parameters(["x" * length])
            except InvalidArgumentError as error:
                assert error.field == "names[0]"
                assert len(error.message) <= 1024
                assert "more characters" in error.message
            else:
                raise AssertionError("a missing parameter was not refused")
        # The connection is still good.
        assert client.model_info().model == "linear"
