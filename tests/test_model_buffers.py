"""Buffers (batch norm's running statistics) are model state: untouched by a rejected call,
refused up front in a Train request, and carried by checkpoints."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
import torch

from gradserve.client.gradient_client import GradientClient, TrainStep
from gradserve.codec import tensor_to_proto
from gradserve.errors import InvalidArgumentError
from gradserve.server.checkpoints.encoding import decode_state, encode_state
from gradserve.server.config import ModelConfig
from gradserve.server.models.optimizers import build_optimizer
from gradserve.server.models.specs import build_configured
from gradserve.server.store.parameter_store import ParameterStore
from gradserve.v1 import gradserve_pb2 as pb
from tests.conftest import ServerFactory
from tests.helpers import TIMEOUT, Snapshot, compute

SPEC = "mlp:2-4-1:batchnorm"


def buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in module.named_buffers()}


def assert_same(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert value.dtype == after[name].dtype and torch.equal(value, after[name]), name


def evaluate(stub, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    request = pb.EvaluateRequest(inputs=tensor_to_proto(inputs), targets=tensor_to_proto(targets))
    return stub.Evaluate(request, timeout=TIMEOUT).loss


def test_a_rejected_batch_leaves_the_running_statistics(make_server: ServerFactory, make_stub):
    server = make_server(model=SPEC, loss="mse")
    stub = make_stub(server)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 2, generator=generator), torch.randn(8, 1, generator=generator)
    compute(stub, x, y)
    module = server.store.model.module
    before, state, loss = buffers(module), Snapshot.take(server, stub), evaluate(stub, x, y)
    # Huge (finite) inputs and targets: the loss overflows, after the forward pass ran.
    with pytest.raises(grpc.RpcError) as raised:
        compute(stub, x * 1e30, y * 1e30)
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "nothing was accumulated" in raised.value.details()
    assert_same(before, buffers(module))
    Snapshot.take(server, stub).assert_same(state)
    assert evaluate(stub, x, y) == loss


def test_train_refuses_a_one_sample_batch_before_any_step_runs(make_server: ServerFactory):
    server = make_server(model=SPEC, loss="mse")
    generator = torch.Generator().manual_seed(1)
    good = (torch.randn(4, 2, generator=generator), torch.randn(4, 1, generator=generator))
    single = (torch.randn(1, 2, generator=generator), torch.randn(1, 1, generator=generator))
    module = server.store.model.module
    before = buffers(module)
    steps = [TrainStep.of((good,), 0.1), TrainStep.of((good,), 0.1), TrainStep.of((single,), 0.1)]
    with GradientClient(server.address, timeout=10) as client:
        with pytest.raises(InvalidArgumentError) as raised:
            list(client.train_stream([steps], window=1))
        assert raised.value.field == "steps[2].batches[0].inputs.shape"
        assert client.model_info().model_version == 0
    assert_same(before, buffers(module))


def test_a_one_sample_batch_is_fine_without_batch_norm(make_server: ServerFactory):
    server = make_server(model="mlp:2-4-1", loss="mse")
    single = (torch.ones(1, 2), torch.ones(1, 1))
    with GradientClient(server.address, timeout=10) as client:
        [result] = list(client.train_stream([[TrainStep.of((single,), 0.1)]], window=1))
    assert result[0].model_version == 1


def _store(seed: int = 0) -> ParameterStore:
    model = build_configured(ModelConfig(spec=SPEC, seed=seed, loss="mse"))
    return ParameterStore(model, build_optimizer("adam", list(model.module.parameters())))


def test_checkpoints_carry_the_buffers_and_read_old_ones_without() -> None:
    store = _store()
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):
        store.compute_gradients(torch.randn(8, 2, generator=generator), torch.randn(8, 1))
        store.apply_update(0.01)
    data, manifest = encode_state(store.export_state(), model_spec=SPEC, optimizer="adam")
    fresh = _store(seed=9)
    fresh.restore_state(decode_state(data, manifest))
    assert_same(buffers(store.model.module), buffers(fresh.model.module))
    x = torch.randn(5, 2, generator=generator)
    assert torch.equal(
        store.evaluate(x, None, return_predictions=True).predictions,
        fresh.evaluate(x, None, return_predictions=True).predictions,
    )
    # A checkpoint written before buffers were saved (format 1, unsigned): the model keeps
    # its own.
    old = {
        key: value for key, value in manifest.items() if key not in ("buffers", "manifest_sha256")
    }
    old["format_version"] = 1
    initial = _store(seed=9)
    own = buffers(initial.model.module)
    initial.restore_state(decode_state(data, old))
    assert_same(own, buffers(initial.model.module))


def test_a_checkpoint_with_wrong_buffers_is_refused() -> None:
    store = _store()
    state = store.export_state()
    wrong = dict(state.buffers)
    name = next(iter(wrong))
    wrong[name] = torch.zeros(7)
    before = buffers(store.model.module)
    with pytest.raises(InvalidArgumentError, match=name):
        store.restore_state(dataclasses.replace(state, buffers=wrong))
    assert_same(before, buffers(store.model.module))
