"""The server's Prometheus metrics: RPC counts and latency, training state, rejections."""

from __future__ import annotations

import math

import grpc
import pytest
import torch
from helpers import TIMEOUT, apply, compute, linear_batch, set_parameters

from gradserve.defaults import SERVICE_NAME as SERVICE
from gradserve.v1 import gradserve_pb2 as pb

# Training state is labelled by run; these tests use the default run ("").
RUN_LABELLED = {
    "gradserve_model_version",
    "gradserve_accumulated_batches",
    "gradserve_gradient_norm",
    "gradserve_last_loss",
    "gradserve_samples_total",
    "gradserve_updates_total",
}


def sample(server, name: str, **labels: str) -> float | None:
    if name in RUN_LABELLED:
        labels = {"run": "", **labels}
    return server.metrics.registry.get_sample_value(name, labels)


def handled(server, method: str, code: str) -> float | None:
    return sample(
        server,
        "grpc_server_handled_total",
        grpc_type="unary",
        grpc_service=SERVICE,
        grpc_method=method,
        grpc_code=code,
    )


def test_rpc_and_training_metrics(server, stub) -> None:
    x, y = linear_batch(6, torch.Generator().manual_seed(0))
    first = compute(stub, x, y)
    second = compute(stub, x[:3], y[:3])
    for learning_rate in (math.nan, -1.0):
        with pytest.raises(grpc.RpcError):
            apply(stub, learning_rate)
    update = apply(stub, 0.1)
    with pytest.raises(grpc.RpcError):
        apply(stub, 0.1)  # nothing accumulated
    third = compute(stub, x, y)

    assert handled(server, "ComputeGradients", "OK") == 3
    assert handled(server, "ApplyUpdate", "OK") == 1
    assert handled(server, "ApplyUpdate", "INVALID_ARGUMENT") == 2
    assert handled(server, "ApplyUpdate", "FAILED_PRECONDITION") == 1
    assert handled(server, "ComputeGradients", "INVALID_ARGUMENT") == 0
    latency = {"grpc_type": "unary", "grpc_service": SERVICE}
    assert sample(server, "grpc_server_handling_seconds_count", grpc_method="ApplyUpdate",
                  **latency) == 4  # fmt: skip
    assert sample(server, "grpc_server_handling_seconds_sum", grpc_method="ComputeGradients",
                  **latency) > 0  # fmt: skip

    assert sample(server, "gradserve_model_version") == 1
    assert sample(server, "gradserve_accumulated_batches") == 1
    assert sample(server, "gradserve_gradient_norm") == pytest.approx(update.gradient_norm)
    assert update.gradient_norm > 0
    assert sample(server, "gradserve_last_loss") == third.loss
    assert second.loss != third.loss
    assert sample(server, "gradserve_samples_total") == 6 + 3 + 6
    assert sample(server, "gradserve_updates_total") == 1
    assert first.loss > 0
    reasons = {"grpc_method": "ApplyUpdate"}
    assert sample(server, "gradserve_rejected_requests_total", reason="INVALID_ARGUMENT",
                  **reasons) == 2  # fmt: skip
    assert sample(server, "gradserve_rejected_requests_total", reason="FAILED_PRECONDITION",
                  **reasons) == 1  # fmt: skip


def test_last_loss_and_state_after_set_and_discard(server, stub) -> None:
    response = compute(stub, *linear_batch(4))
    assert sample(server, "gradserve_last_loss") == pytest.approx(response.loss)
    assert sample(server, "gradserve_accumulated_batches") == 1
    set_parameters(stub, {"w": torch.ones(1)})
    assert sample(server, "gradserve_model_version") == 1
    assert sample(server, "gradserve_accumulated_batches") == 0
    compute(stub, *linear_batch(4))
    stub.DiscardGradients(pb.DiscardGradientsRequest(), timeout=TIMEOUT)
    assert sample(server, "gradserve_accumulated_batches") == 0
    assert handled(server, "DiscardGradients", "OK") == 1


def test_an_unexpected_error_is_internal_without_a_traceback(server, stub, monkeypatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret detail from /srv/gradserve/parameter_store.py")

    # The store is our own domain object: make it fail the way a bug would.
    monkeypatch.setattr(server.store, "compute_gradients", broken)
    with pytest.raises(grpc.RpcError) as caught:
        compute(stub, *linear_batch(4))
    error = caught.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal server error"
    on_the_wire = repr(error.trailing_metadata()) + error.debug_error_string()
    for leak in ("secret", "Traceback", "RuntimeError", "parameter_store"):
        assert leak not in on_the_wire
    assert handled(server, "ComputeGradients", "INTERNAL") == 1
    # The server keeps serving.
    assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT).model_version == 0


def test_each_server_exports_the_process_collectors(make_server) -> None:
    # Two servers in one process: each registry has its own copy, nothing clashes.
    for running in (make_server(), make_server()):
        registry = running.metrics.registry
        assert registry.get_sample_value("process_cpu_seconds_total") is not None
        assert registry.get_sample_value("python_gc_collections_total", {"generation": "0"})
        info = [
            sample
            for family in registry.collect()
            if family.name == "python_info"
            for sample in family.samples
        ]
        assert info and info[0].labels["implementation"]


def test_each_outcome_is_counted_once_with_its_latency(server, stub) -> None:
    # The interceptor's three ways out of a unary call: an answer, a project error (here the
    # bytes do not parse, which it rejects before the servicer runs) and a bug.
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.unary_unary(f"/{SERVICE}/ComputeGradients")
        with pytest.raises(grpc.RpcError) as caught:
            raw(b"\xff\xff\xff", timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    compute(stub, *linear_batch(4))
    assert handled(server, "ComputeGradients", "INVALID_ARGUMENT") == 1
    assert handled(server, "ComputeGradients", "OK") == 1
    assert sample(server, "gradserve_rejected_requests_total", grpc_method="ComputeGradients",
                  reason="INVALID_ARGUMENT") == 1  # fmt: skip
    latency = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "ComputeGradients"}
    assert sample(server, "grpc_server_handling_seconds_count", **latency) == 2
