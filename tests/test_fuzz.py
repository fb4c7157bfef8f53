"""Fuzzing every RPC of gradserve.v1.GradientService (issue 6, "Bad input and load").

(a) arbitrary bytes, sent raw (no serializer on the client), to every method, unary and
streaming; (b) arbitrary gradserve.v1.Tensor messages (any dtype number, any shape, any data
length) in ComputeGradients, Evaluate, SetParameters, Train and DescribeGraph requests, against
a regression model and a classifier. Every answer must be OK or a status of the contract, never
INTERNAL or UNKNOWN; the server keeps answering SERVING; a rejected request leaves parameters,
.grad, version and accumulated counts exactly as they were. Accepted requests are fine (random
input is sometimes a valid batch): the next example takes its snapshot after them.

Bounded: derandomized examples, a fixed number of them, every call under a deadline.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import TIMEOUT, Snapshot, compute
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gradserve.codec import tensor_from_proto, tensor_to_proto
from gradserve.defaults import channel_options
from gradserve.server.app import GradientServer, create_server
from gradserve.server.config import CheckpointConfig, ModelConfig, NetworkConfig, ServerConfig
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

SERVICE = "gradserve.v1.GradientService"
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NEVER = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
# Codes a Train stream can end with after some of its work ran (a step failing while running).
RUNTIME_CODES = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED)

UNARY = (
    "ComputeGradients",
    "ApplyUpdate",
    "Evaluate",
    "GetParameters",
    "SetParameters",
    "GetModelInfo",
    "DiscardGradients",
    "DescribeGraph",
    "SaveCheckpoint",
    "CreateRun",
    "ListRuns",
    "GetRun",
    "DeleteRun",
    "ListCheckpoints",
    "LoadCheckpoint",
    "DeleteCheckpoint",
    "GetStateDigest",
    "ComputeOutputs",
    "BackwardOutputs",
    "ListDatasets",
    "DeleteDataset",
)
STREAMING = ("Train", "UploadParameters", "StreamParameters", "UploadDataset", "Sample")


def test_every_method_is_fuzzed() -> None:
    methods = pb.DESCRIPTOR.services_by_name["GradientService"].methods_by_name
    assert set(methods) == set(UNARY) | set(STREAMING)


@dataclasses.dataclass
class Target:
    """A running server, a channel to it, and what a valid batch for its model looks like."""

    server: GradientServer
    channel: grpc.Channel
    stub: pb_grpc.GradientServiceStub
    health: health_pb2_grpc.HealthStub
    batch: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


def linear_batch(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(size, 1, generator=generator)
    return x, 2 * x + 1


def classifier_batch(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 3, generator=generator), torch.randint(
        0, 3, (size,), generator=generator
    )


def _target(
    tmp: Path, batch: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]], **overrides: Any
) -> Iterator[Target]:
    config = ServerConfig(
        network=NetworkConfig(port=0, metrics_port=0),
        model=ModelConfig(seed=0, **overrides),
        checkpoints=CheckpointConfig(directory=str(tmp), keep=2),
    )
    server = create_server(config)
    channel = grpc.insecure_channel(
        server.address, options=channel_options(config.limits.max_message_bytes)
    )
    try:
        yield Target(
            server,
            channel,
            pb_grpc.GradientServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
            batch,
        )
    finally:
        channel.close()
        server.stop(0)


# Module-scoped: hypothesis runs every example of a test against one server (a fresh server per
# example would be the whole time budget).
@pytest.fixture(scope="module")
def linear(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from _target(tmp_path_factory.mktemp("linear"), linear_batch)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from _target(
        tmp_path_factory.mktemp("classifier"), classifier_batch, spec="mlp:3-4-3:tanh:batchnorm"
    )


@pytest.fixture(scope="module", params=["linear", "classifier"])
def target(request: pytest.FixtureRequest) -> Target:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def prepared(target: Target, seed: int) -> Snapshot:
    """Gradients accumulated (so there is an accumulator to keep), then the snapshot."""
    stub = target.stub
    if stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT).accumulated_batches == 0:
        try:
            compute(stub, *target.batch(3, seed))
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            # An earlier example set parameters that overflow this batch (a legal request, and
            # the refusal says so): start again from finite ones.
            _reset_parameters(stub)
            compute(stub, *target.batch(3, seed))
    return Snapshot.take(target.server, stub)


def _reset_parameters(stub: pb_grpc.GradientServiceStub) -> None:
    held = stub.GetParameters(pb.GetParametersRequest(), timeout=TIMEOUT).parameters
    ones = [tensor_to_proto(torch.ones_like(tensor_from_proto(t)), t.name) for t in held]
    stub.SetParameters(pb.SetParametersRequest(parameters=ones), timeout=TIMEOUT)


def outcome(target: Target, before: Snapshot, call: Callable[[], int], what: str) -> None:
    """Run the call (it returns how many responses it got); check the contract after it."""
    answered = 0
    try:
        answered = call()
        rejected: grpc.RpcError | None = None
    except grpc.RpcError as error:
        rejected = error
        assert error.code() not in NEVER, f"{what}: {error.code().name}: {error.details()}"
    method = what.split(" ", 1)[0]
    event(f"{method}: {'OK' if rejected is None else rejected.code().name}")
    health = target.health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=TIMEOUT)
    assert health.status == health_pb2.HealthCheckResponse.SERVING, what
    if rejected is None or answered:
        # Accepted (a stream ending in an error after some answers ran those answers' work).
        return
    if rejected.code() in RUNTIME_CODES and what.startswith("Train"):
        # A Train step failing while it runs (non-finite loss, stale expected_version before
        # its update) leaves what ran before it applied, as the same ComputeGradients and
        # ApplyUpdate calls would: the Train RPC's contract. The message says where it stopped.
        assert re.search(r"\(\d+ of \d+ steps", rejected.details() or ""), what
        return
    after = Snapshot.take(target.server, target.stub)
    try:
        before.assert_same(after)
    except AssertionError as error:
        raise AssertionError(
            f"{what}: rejected with {rejected.code().name} ({rejected.details()}) but the "
            f"state changed: {error}"
        ) from error


# -- (a) arbitrary bytes --------------------------------------------------------------------


def _valid_bytes() -> dict[str, bytes]:
    x, y = linear_batch(2, 0)
    batch = pb.Batch(inputs=tensor_to_proto(x), targets=tensor_to_proto(y))
    return {
        "ComputeGradients": pb.ComputeGradientsRequest(
            inputs=batch.inputs, targets=batch.targets, request_id="r"
        ).SerializeToString(),
        "ApplyUpdate": pb.ApplyUpdateRequest(
            learning_rate=0.01, expected_version=3
        ).SerializeToString(),
        "Evaluate": pb.EvaluateRequest(
            inputs=batch.inputs, targets=batch.targets, return_predictions=True
        ).SerializeToString(),
        "GetParameters": pb.GetParametersRequest(names=["w", "b"]).SerializeToString(),
        "SetParameters": pb.SetParametersRequest(
            parameters=[tensor_to_proto(torch.ones(1), "w")], expected_version=1
        ).SerializeToString(),
        "GetModelInfo": b"",
        "DiscardGradients": b"",
        "DescribeGraph": pb.DescribeGraphRequest(
            inputs=batch.inputs, targets=batch.targets, max_nodes=8
        ).SerializeToString(),
        "SaveCheckpoint": b"",
        "Train": pb.TrainRequest(
            steps=[pb.TrainStep(batches=[batch], apply_update=True, learning_rate=0.01)]
        ).SerializeToString(),
        "UploadParameters": pb.ParameterChunk(
            name="w", dtype=pb.DATA_TYPE_FLOAT32, shape=[1], data=bytes(4)
        ).SerializeToString(),
        "StreamParameters": pb.StreamParametersRequest(chunk_bytes=2).SerializeToString(),
        "CreateRun": pb.CreateRunRequest(
            run="fuzzed", model="linear", optimizer="sgd", seed=1, request_id="c"
        ).SerializeToString(),
        "ListRuns": b"",
        "GetRun": pb.GetRunRequest(run="fuzzed").SerializeToString(),
        "DeleteRun": pb.DeleteRunRequest(run="fuzzed").SerializeToString(),
        "ListCheckpoints": pb.ListCheckpointsRequest(run="fuzzed").SerializeToString(),
        "LoadCheckpoint": pb.LoadCheckpointRequest(run="fuzzed", name="x").SerializeToString(),
        "DeleteCheckpoint": pb.DeleteCheckpointRequest(run="fuzzed", name="x").SerializeToString(),
        "GetStateDigest": pb.GetStateDigestRequest(run="fuzzed").SerializeToString(),
        "ComputeOutputs": pb.ComputeOutputsRequest(inputs=batch.inputs).SerializeToString(),
        "BackwardOutputs": pb.BackwardOutputsRequest(
            handle="h", output_gradients=batch.targets, loss=0.5
        ).SerializeToString(),
        "UploadDataset": pb.UploadDatasetRequest(
            name="fuzzed",
            inputs=pb.TensorSpec(dtype=pb.DATA_TYPE_FLOAT32, shape=[2, 1]),
            targets=pb.TensorSpec(dtype=pb.DATA_TYPE_FLOAT32, shape=[2, 1]),
            data=bytes(16),
        ).SerializeToString(),
        "ListDatasets": b"",
        "DeleteDataset": pb.DeleteDatasetRequest(name="fuzzed").SerializeToString(),
        "Sample": pb.SampleRequest(
            prompt_tokens=[1, 2], num_samples=1, max_tokens=2
        ).SerializeToString(),
    }


VALID_BYTES = _valid_bytes()


@st.composite
def mutated(draw: st.DrawFn, method: str) -> bytes:
    """A valid request's bytes, cut, overwritten or grown: bytes that almost parse."""
    data = bytearray(VALID_BYTES[method])
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["cut", "overwrite", "insert"]))
        position = draw(st.integers(0, len(data)))
        if action == "cut":
            del data[position : position + draw(st.integers(1, 8))]
        elif action == "overwrite" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def raw_bytes(method: str) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300), mutated(method))


def raw_call(target: Target, method: str, messages: list[bytes]) -> Callable[[], int]:
    path = f"/{SERVICE}/{method}"
    channel = target.channel

    def call() -> int:
        if method in UNARY:
            channel.unary_unary(path)(messages[0], timeout=TIMEOUT)
            return 0
        if method == "Train":
            answers = channel.stream_stream(path)(iter(messages), timeout=TIMEOUT)
        elif method in ("UploadParameters", "UploadDataset"):
            channel.stream_unary(path)(iter(messages), timeout=TIMEOUT)
            return 0
        else:
            answers = channel.unary_stream(path)(messages[0], timeout=TIMEOUT)
        count = 0
        try:
            for _ in answers:
                count += 1
        except grpc.RpcError as error:
            if count == 0 or method != "Train":
                # StreamParameters and Sample read only: their answers change nothing.
                raise
            error_answered = error
            raise _Answered(count, error_answered) from error
        return count

    return call


class _Answered(grpc.RpcError):
    """A stream that answered `count` requests (their work ran) and then failed."""

    def __init__(self, count: int, error: grpc.RpcError) -> None:
        super().__init__()
        self.count = count
        self.error = error

    def code(self) -> grpc.StatusCode:
        return self.error.code()  # type: ignore[no-any-return]

    def details(self) -> str | None:
        return self.error.details()  # type: ignore[no-any-return]


def run_checked(target: Target, before: Snapshot, call: Callable[[], int], what: str) -> None:
    def counted() -> int:
        try:
            return call()
        except _Answered as answered:
            assert answered.code() not in NEVER, f"{what}: {answered.code().name}"
            return answered.count

    outcome(target, before, counted, what)


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    method = draw(st.sampled_from(UNARY + STREAMING))
    single = method in UNARY or method in ("StreamParameters", "Sample")
    count = 1 if single else draw(st.integers(1, 3))
    return method, [draw(raw_bytes(method)) for _ in range(count)]


@FUZZ
@given(request=raw_requests(), seed=st.integers(0, 2**16))
def test_arbitrary_bytes_to_every_method(linear: Target, request, seed: int) -> None:
    method, messages = request
    before = prepared(linear, seed)
    run_checked(linear, before, raw_call(linear, method, messages), f"{method} {messages!r}")


def test_arbitrary_bytes_reach_every_method(linear: Target) -> None:
    """Undecodable bytes are INVALID_ARGUMENT on every method (a bad request, not a bug)."""
    for method in UNARY + STREAMING:
        before = prepared(linear, 0)
        with pytest.raises(grpc.RpcError) as caught:
            raw_call(linear, method, [b"\xff\xff\xff"])()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert "request" in (caught.value.details() or ""), method
        before.assert_same(Snapshot.take(linear.server, linear.stub))


# -- (b) arbitrary Tensor messages ----------------------------------------------------------

DTYPES = [value.number for value in pb.DataType.DESCRIPTOR.values]
ITEMSIZE = {1: 4, 2: 8, 3: 2, 4: 2, 5: 8, 6: 4, 7: 1, 8: 1, 9: 2, 10: 1}
INT64 = st.integers(-(2**63), 2**63 - 1)
dtypes = st.one_of(st.sampled_from(DTYPES), st.integers(-(2**31), 2**31 - 1))
dimensions = st.one_of(st.integers(0, 6), st.integers(-3, 3), INT64, st.just(2**40))


@st.composite
def arbitrary_tensors(draw: st.DrawFn) -> pb.Tensor:
    dtype = draw(dtypes)
    shape = draw(st.lists(dimensions, max_size=draw(st.sampled_from([3, 20]))))
    numel = 1
    for dim in shape:
        numel *= dim
    itemsize = ITEMSIZE.get(dtype, 4)
    exact = numel * itemsize
    if 0 <= exact <= 512 and draw(st.booleans()):
        data = draw(st.binary(min_size=exact, max_size=exact))
    else:
        data = draw(st.binary(max_size=64))
    name = draw(st.sampled_from(["", "w", "b", "0.weight", "1.bias", "nope"]))
    return pb.Tensor(name=name, dtype=dtype, shape=shape, data=data)


def well_formed(target: Target) -> st.SearchStrategy[tuple[pb.Tensor, pb.Tensor]]:
    """A valid batch for the target's model (so that some requests are accepted)."""

    def build(size: int, seed: int) -> tuple[pb.Tensor, pb.Tensor]:
        x, y = target.batch(size, seed)
        return tensor_to_proto(x), tensor_to_proto(y)

    return st.builds(build, st.integers(1, 5), st.integers(0, 2**16))


@st.composite
def nearly(draw: st.DrawFn, tensor: pb.Tensor) -> pb.Tensor:
    """A valid tensor with one field changed (or its data's bytes drawn at random)."""
    changed = pb.Tensor()
    changed.CopyFrom(tensor)
    field = draw(st.sampled_from(["dtype", "shape", "data", "bytes"]))
    if field == "dtype":
        changed.dtype = draw(dtypes)
    elif field == "shape":
        changed.ClearField("shape")
        changed.shape.extend(draw(st.lists(dimensions, max_size=4)))
    elif field == "data":
        changed.data = draw(st.binary(max_size=len(tensor.data) + 8))
    else:
        # The right length, arbitrary values: NaN, Inf, huge, class indices out of range.
        changed.data = draw(st.binary(min_size=len(tensor.data), max_size=len(tensor.data)))
    return changed


def batches(target: Target) -> st.SearchStrategy[tuple[pb.Tensor, pb.Tensor]]:
    good = well_formed(target)

    @st.composite
    def one_bad(draw: st.DrawFn) -> tuple[pb.Tensor, pb.Tensor]:
        inputs, targets = draw(good)
        if draw(st.booleans()):
            return draw(nearly(inputs)), targets
        return inputs, draw(nearly(targets))

    return st.one_of(
        st.tuples(arbitrary_tensors(), arbitrary_tensors()),
        st.tuples(good.map(lambda pair: pair[0]), arbitrary_tensors()),
        st.tuples(arbitrary_tensors(), good.map(lambda pair: pair[1])),
        one_bad(),
        good,
        good,
    )


def parameter_tensors(target: Target) -> st.SearchStrategy[pb.Tensor]:
    """A parameter of the target's model: right name, dtype and shape; random values."""
    specs = target.server.store.info().parameters

    def build(index: int, seed: int) -> pb.Tensor:
        spec = specs[index % len(specs)]
        value = torch.randn(spec.shape, generator=torch.Generator().manual_seed(seed))
        return tensor_to_proto(value.to(spec.dtype), spec.name)

    good = st.builds(build, st.integers(0, 100), st.integers(0, 2**16))
    return st.one_of(arbitrary_tensors(), good, good.flatmap(nearly))


def all_parameters(target: Target) -> st.SearchStrategy[list[pb.Tensor]]:
    """Every parameter of the model, valid: a SetParameters that is accepted."""
    specs = target.server.store.info().parameters

    def build(seed: int) -> list[pb.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return [
            tensor_to_proto(torch.randn(spec.shape, generator=generator).to(spec.dtype), spec.name)
            for spec in specs
        ]

    return st.builds(build, st.integers(0, 2**16))


optional_versions = st.one_of(st.none(), st.none(), st.integers(-2, 5), INT64)
learning_rates = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.01, -1.0])
)
reductions = st.one_of(st.sampled_from([0, 1, 2]), st.integers(-(2**31), 2**31 - 1))


@st.composite
def tensor_requests(draw: st.DrawFn, target: Target) -> tuple[str, Any]:
    method = draw(
        st.sampled_from(["ComputeGradients", "Evaluate", "SetParameters", "Train", "DescribeGraph"])
    )
    if method == "ComputeGradients":
        inputs, targets = draw(batches(target))
        request = pb.ComputeGradientsRequest(
            inputs=inputs,
            targets=targets,
            request_id=draw(st.text(max_size=3) | st.just("x" * 129)),
            return_gradients=draw(st.booleans()),
        )
        based_on = draw(optional_versions)
        if based_on is not None:
            request.based_on_version = based_on
        return method, request
    if method == "Evaluate":
        inputs, targets = draw(batches(target))
        request = pb.EvaluateRequest(inputs=inputs, return_predictions=draw(st.booleans()))
        if draw(st.booleans()):
            request.targets.CopyFrom(targets)
        return method, request
    if method == "SetParameters":
        request = pb.SetParametersRequest(
            parameters=draw(
                st.lists(parameter_tensors(target), max_size=3) | all_parameters(target)
            ),
            request_id=draw(st.text(max_size=3)),
        )
        expected = draw(optional_versions)
        if expected is not None:
            request.expected_version = expected
        return method, request
    if method == "DescribeGraph":
        inputs, targets = draw(batches(target))
        return method, pb.DescribeGraphRequest(
            inputs=inputs,
            targets=targets,
            return_gradients=draw(st.booleans()),
            max_nodes=draw(st.integers(-(2**31), 2**31 - 1) | st.integers(-1, 40)),
        )
    steps = []
    for _ in range(draw(st.integers(0, 3))):
        step = pb.TrainStep(
            batches=[
                pb.Batch(inputs=inputs, targets=targets)
                for inputs, targets in draw(st.lists(batches(target), max_size=2))
            ],
            apply_update=draw(st.booleans()),
            learning_rate=draw(learning_rates),
            reduction=draw(reductions),
        )
        expected = draw(optional_versions)
        if expected is not None:
            step.expected_version = expected
        steps.append(step)
    return method, pb.TrainRequest(steps=steps, request_id=draw(st.text(max_size=3)))


def structured_call(target: Target, method: str, request: Any) -> Callable[[], int]:
    def call() -> int:
        if method == "Train":
            return sum(1 for _ in target.stub.Train(iter([request]), timeout=TIMEOUT))
        getattr(target.stub, method)(request, timeout=TIMEOUT)
        return 0

    return call


@FUZZ
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_arbitrary_tensors_in_every_tensor_request(target: Target, data, seed: int) -> None:
    method, request = data.draw(tensor_requests(target))
    before = prepared(target, seed)
    what = f"{method} {request}"
    outcome(target, before, structured_call(target, method, request), what)


def test_empty_tensor_whose_strides_overflow_is_invalid_argument(linear: Target) -> None:
    """The fuzzer's find: shape [0, 2**40, 2**40] has no elements but strides past int64;
    torch.empty raised "Stride calculation overflowed" and the call ended INTERNAL."""
    huge = pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[0, 2**40, 2**40])
    x, y = linear_batch(2, 0)
    before = prepared(linear, 0)
    requests = {
        "ComputeGradients": pb.ComputeGradientsRequest(inputs=huge, targets=tensor_to_proto(y)),
        "Evaluate": pb.EvaluateRequest(inputs=tensor_to_proto(x), targets=huge),
        "SetParameters": pb.SetParametersRequest(parameters=[pb.Tensor(name="w")]),
    }
    requests["SetParameters"].parameters[0].CopyFrom(huge)
    requests["SetParameters"].parameters[0].name = "w"
    for method, request in requests.items():
        with pytest.raises(grpc.RpcError) as caught:
            getattr(linear.stub, method)(request, timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert "shape" in (caught.value.details() or ""), method
    before.assert_same(Snapshot.take(linear.server, linear.stub))
