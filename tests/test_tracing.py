"""Tracing (server/tracing.py): real servers on loopback with an in-memory exporter or a real
OTLP/gRPC receiver; spans per RPC, the store's child spans, traceparent, error status, log ids."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch
from torch import nn

from gradserve.client.gradient_client import GradientClient
from gradserve.errors import InternalError, InvalidArgumentError
from gradserve.server import tracing
from gradserve.server.flags import parse_args
from gradserve.server.models.specs import FactoryModel
from gradserve.types import TrainStep

pytest.importorskip(
    "opentelemetry.sdk.trace",
    reason="tracing tests need the tracing extra: pip install -e '.[tracing]' (dev has it)",
)
from helpers import linear_batch
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

SERVICE = "gradserve.v1.GradientService"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"


class Broken(nn.Module):
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a bug in the model")


def broken() -> FactoryModel:
    """A --model-factory whose forward pass fails: the server answers INTERNAL."""
    module = Broken()
    module.weight = nn.Parameter(torch.zeros(1))
    return FactoryModel(module, input_shape=(1,), output_shape=(1,))


@dataclass
class Traced:
    tracing: tracing.Tracing
    exporter: InMemorySpanExporter
    log: io.StringIO

    def spans(self) -> list[ReadableSpan]:
        assert self.tracing.force_flush()
        return list(self.exporter.get_finished_spans())

    def server_spans(self, method: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == f"/{SERVICE}/{method}"]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        return [
            s
            for s in self.spans()
            if s.parent is not None and s.parent.span_id == parent.context.span_id
        ]


@pytest.fixture
def traced() -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    on = tracing.configure_tracing(exporter=exporter, log_handlers=[handler])
    yield Traced(on, exporter, log)
    on.shutdown()
    root.removeHandler(handler)


def client_for(address: str, **options: object) -> GradientClient:
    return GradientClient(address, timeout=10.0, **options)


def test_every_rpc_has_a_server_span_and_the_store_work_child_spans(traced, make_server):
    running = make_server()
    x, y = linear_batch(10, torch.Generator().manual_seed(0))
    with client_for(running.address) as client:
        client.compute_gradients(x, y)
        client.apply_update(learning_rate=0.01)
        client.model_info()

    (compute,) = traced.server_spans("ComputeGradients")
    assert compute.kind is SpanKind.SERVER
    assert compute.attributes["rpc.service"] == SERVICE
    assert compute.attributes["rpc.method"] == "ComputeGradients"
    assert compute.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert compute.resource.attributes["service.name"] == "gradserve-server"
    (store_work,) = traced.children(compute)
    assert store_work.name == "gradserve.compute_gradients"
    assert store_work.context.trace_id == compute.context.trace_id
    assert store_work.attributes["gradserve.batch_size"] == 10
    assert store_work.attributes["gradserve.model_version"] == 0
    assert store_work.attributes["gradserve.accumulated_batches"] == 1

    (update,) = traced.server_spans("ApplyUpdate")
    (store_update,) = traced.children(update)
    assert store_update.name == "gradserve.apply_update"
    assert store_update.attributes["gradserve.model_version"] == 1
    assert store_update.attributes["gradserve.applied_batches"] == 1
    # Calls the store has no span for still get their server span; health probes get none.
    assert len(traced.server_spans("GetModelInfo")) == 1
    assert not [s for s in traced.spans() if "grpc.health" in s.name]


def test_the_train_stream_has_a_span_per_request(traced, make_server):
    running = make_server()
    x, y = linear_batch(10, torch.Generator().manual_seed(0))
    step = TrainStep(batches=((x, y),), apply_update=True, learning_rate=0.01)
    with client_for(running.address) as client:
        results = list(client.train_stream([[step, step], [step]]))
    assert len(results) == 2

    (stream,) = traced.server_spans("Train")
    store_spans = traced.children(stream)
    assert [s.name for s in store_spans] == ["gradserve.train", "gradserve.train"]
    assert [s.attributes["gradserve.steps"] for s in store_spans] == [2, 1]
    assert [s.attributes["gradserve.model_version"] for s in store_spans] == [2, 3]


def test_an_incoming_traceparent_is_continued(traced, make_server):
    running = make_server()
    x, y = linear_batch(4)
    with client_for(running.address, metadata=[("traceparent", TRACEPARENT)]) as client:
        client.compute_gradients(x, y)

    (compute,) = traced.server_spans("ComputeGradients")
    assert format(compute.context.trace_id, "032x") == TRACE_ID
    assert compute.parent is not None and compute.parent.is_remote
    assert format(compute.parent.span_id, "016x") == PARENT_SPAN_ID
    (store_work,) = traced.children(compute)
    assert format(store_work.context.trace_id, "032x") == TRACE_ID


def test_a_rejected_call_carries_its_code_and_the_failing_store_span_is_an_error(
    traced, make_server
):
    running = make_server()
    with client_for(running.address) as client, pytest.raises(InvalidArgumentError):
        client.compute_gradients(torch.zeros(10, 2), torch.zeros(10, 1))

    (compute,) = traced.server_spans("ComputeGradients")
    assert compute.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    # gRPC semantic conventions: the caller's mistake leaves a SERVER span's status unset.
    assert compute.status.status_code is StatusCode.UNSET
    (store_work,) = traced.children(compute)
    assert store_work.status.status_code is StatusCode.ERROR
    assert "inputs.shape" in (store_work.status.description or "")
    (event,) = store_work.events
    assert event.name == "exception"
    assert event.attributes["exception.type"].endswith("InvalidArgumentError")


def test_a_server_failure_is_an_error_span_and_its_log_line_carries_the_trace_id(
    traced, make_server
):
    running = make_server(model="broken", model_factories=("broken=test_tracing:broken",))
    with (
        client_for(running.address, metadata=[("traceparent", TRACEPARENT)]) as client,
        pytest.raises(InternalError),
    ):
        client.compute_gradients(torch.zeros(2, 1), torch.zeros(2, 1))

    (compute,) = traced.server_spans("ComputeGradients")
    assert compute.status.status_code is StatusCode.ERROR
    assert compute.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    (store_work,) = traced.children(compute)
    assert store_work.status.status_code is StatusCode.ERROR
    # The interceptor logs the traceback inside the RPC: the line names the RPC's span.
    lines = [line for line in traced.log.getvalue().splitlines() if "failed" in line]
    assert lines == [
        "ERROR gradserve.server.rpc.interceptors: ComputeGradients failed "
        f"trace_id={TRACE_ID} span_id={format(compute.context.span_id, '016x')}"
    ]


def test_log_records_outside_a_span_have_empty_ids(traced):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("test_tracing.outside")
    logger.addHandler(handler)
    try:
        logger.warning("no span here")
        with tracing.span("gradserve.test", batch_size=3):
            logger.warning("inside")
    finally:
        logger.removeHandler(handler)
    assert (records[0].trace_id, records[0].span_id) == ("", "")
    assert len(records[1].trace_id) == 32 and len(records[1].span_id) == 16
    (manual,) = [s for s in traced.spans() if s.name == "gradserve.test"]
    assert manual.attributes["gradserve.batch_size"] == 3
    assert format(manual.context.trace_id, "032x") == records[1].trace_id


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request, context):
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_reach_an_otlp_grpc_receiver(make_server):
    receiver, collector, port = receive_spans()
    on = tracing.configure_tracing(
        f"127.0.0.1:{port}", service_name="gradserve-test", log_handlers=[]
    )
    try:
        running = make_server()
        x, y = linear_batch(4)
        with client_for(running.address) as client:
            client.compute_gradients(x, y)
        assert on.force_flush()
    finally:
        on.shutdown()
        collector.stop(0)

    spans = exported_spans(receiver)
    assert {service for service, *_ in spans} == {"gradserve-test"}
    assert {name for _, name, *_ in spans} == {
        f"/{SERVICE}/ComputeGradients",
        "gradserve.compute_gradients",
    }


def test_the_flag_and_the_environment_choose_the_endpoint():
    assert parse_args([]).runtime.otlp_endpoint is None
    assert (
        parse_args(["--otlp-endpoint", "collector:4317"]).runtime.otlp_endpoint == "collector:4317"
    )
    environ = {tracing.ENV_OTLP_ENDPOINT: "http://env:4317"}
    assert tracing.otlp_endpoint(None, environ) == "http://env:4317"
    assert tracing.otlp_endpoint("flag:4317", environ) == "flag:4317"
    assert tracing.otlp_endpoint(None, {}) is None
    assert tracing.server_interceptors(None, {}) == []


def test_tracing_off_imports_nothing_and_span_is_a_shared_no_op():
    code = (
        "import sys\n"
        "from gradserve.server import app, serve, tracing\n"
        "assert tracing.server_interceptors(None, {}) == []\n"
        "assert tracing.span('x', a=1) is tracing.span('y')\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


def receive_spans() -> tuple[Receiver, grpc.Server, int]:
    receiver = Receiver()
    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, collector)
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    return receiver, collector, port


def exported_spans(receiver: Receiver) -> list[tuple[str, str, int, dict[str, object]]]:
    """(service.name, span name, status code, attributes) of everything received."""
    found = []
    for request in receiver.requests:
        for resource_spans in request.resource_spans:
            (service,) = [
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            ]
            for scope_spans in resource_spans.scope_spans:
                for exported in scope_spans.spans:
                    attributes = {
                        a.key: getattr(a.value, a.value.WhichOneof("value"))
                        for a in exported.attributes
                    }
                    found.append((service, exported.name, exported.status.code, attributes))
    return found


@pytest.mark.parametrize("launch", ["flag", "opentelemetry-instrument"])
def test_a_server_process_exports_its_spans_on_exit(launch):
    """`gradserve-server --otlp-endpoint`, and the agent's `opentelemetry-instrument
    gradserve-server` (the agent's interceptor, not a second one): spans of a good and a
    rejected call reach the collector when the server ends on SIGTERM."""
    bin_dir = Path(sys.executable).parent
    receiver, collector, port = receive_spans()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GRADSERVE_", "OTEL_"))}
    command = [str(bin_dir / "gradserve-server"), "--port", "0", "--metrics-port", "0"]
    if launch == "flag":
        command += ["--otlp-endpoint", f"127.0.0.1:{port}"]
    else:
        if not (bin_dir / "opentelemetry-instrument").exists():
            pytest.skip("opentelemetry-instrument is not installed (the tracing extra has it)")
        command.insert(0, str(bin_dir / "opentelemetry-instrument"))
        environ |= {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_SERVICE_NAME": "gradserve-server",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        }
    process = subprocess.Popen(
        command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        address = next(line.split()[-1] for line in process.stdout if "listening on" in line)
        with client_for(address) as client:
            client.compute_gradients(torch.zeros(2, 1), torch.zeros(2, 1))
            with pytest.raises(InvalidArgumentError):
                client.compute_gradients(torch.zeros(2, 2), torch.zeros(2, 1))
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
        assert process.returncode == 0, errors
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        collector.stop(0)

    spans = exported_spans(receiver)
    assert {service for service, *_ in spans} == {"gradserve-server"}
    server = [s for s in spans if s[1] == f"/{SERVICE}/ComputeGradients"]
    assert sorted(attributes["rpc.grpc.status_code"] for *_, attributes in server) == [0, 3]
    store = [s for s in spans if s[1] == "gradserve.compute_gradients"]
    error = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
    assert sorted(code for _, _, code, _ in store) == [0, error]


def test_asking_for_tracing_without_the_extra_ends_the_server_with_exit_2():
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if the tracing extra were not installed\n"
        "from gradserve.server.serve import main\n"
        "sys.exit(main(['--port', '0', '--metrics-port', '0', '--otlp-endpoint', '127.0.0.1:1']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2
    assert "pip install 'gradserve[tracing]'" in done.stderr
