"""No metric label takes a value a client chose: made-up method paths, with or without a
token, add no series to /metrics."""

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
