"""The model registry: specs, JSON files, factories, devices; every model against local torch."""

from __future__ import annotations

import json

import grpc
import pytest
import torch
from helpers import TIMEOUT, compute, decoded, get_parameters
from torch import nn
from torch.nn import functional

from gradserve.codec import tensor_from_proto, tensor_to_proto
from gradserve.errors import InvalidArgumentError
from gradserve.server import serve
from gradserve.server.flags import parse_args
from gradserve.v1 import gradserve_pb2 as pb

# -- rejected specs ---------------------------------------------------------------------------

BAD_SPECS = [
    ({"model": "resnet"}, "unknown model 'resnet'"),
    ({"model": "mlp:5"}, "at least two layer sizes"),
    ({"model": "mlp:5-x-3"}, "layer sizes must be integers"),
    ({"model": "mlp:5-0-3"}, "in [1, 1000000]"),
    ({"model": "mlp:5-7-3:swish"}, "unknown option 'swish'"),
    ({"model": "mlp:5-7-3:dropout=1.5"}, "dropout=1.5 must be a number in [0, 1)"),
    ({"model": "mlp:5-7-3:dropout=0.1:dropout=0.2"}, "given twice"),
    ({"model": "cnn"}, "cnn needs an input shape"),
    ({"model": "cnn:1x8-10"}, "CxHxW-OUTPUTS"),
    ({"model": "cnn:1x8x8-10:channels=a"}, "channels must be integers"),
    ({"model": "mlp:5-7-3", "loss": "hinge"}, "unknown loss 'hinge'"),
    ({"model": "linear", "loss": "cross_entropy"}, "cross_entropy needs a classifier"),
    ({"model": "linear:3"}, "linear takes no arguments"),
    ({"model_factories": ("bad",)}, "expected NAME=package.module:function"),
    ({"model_factories": ("mlp=model_factories:tiny",)}, "the name 'mlp' is taken"),
    ({"model_factories": ("x=no_such_module:f",)}, "cannot import it"),
    (
        {"model_factories": ("x=model_factories:not_a_model",), "model": "x"},
        "must return gradserve.server.models.specs.FactoryModel",
    ),
    (
        {"model_factories": ("x=model_factories:tiny",), "model": "x:width=3"},
        "refused the options",
    ),
    ({"device": "tpu"}, "device"),
]


@pytest.mark.parametrize(("overrides", "problem"), BAD_SPECS, ids=lambda v: str(v)[:40])
def test_bad_specs_are_invalid_argument_naming_the_problem(make_server, overrides, problem):
    with pytest.raises(InvalidArgumentError) as caught:
        make_server(**overrides)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in str(caught.value)


def test_serve_exits_non_zero_with_one_line_for_a_bad_spec(capsys) -> None:
    code = serve.main(["--port", "0", "--metrics-port", "0", "--model", "mlp:5-7-3:swish"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "unknown option 'swish'" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here: nothing to refuse")
def test_cuda_without_cuda_is_a_clear_startup_error(capsys) -> None:
    code = serve.main(["--port", "0", "--metrics-port", "0", "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2
    assert "device: cuda was asked for, but this torch build sees no CUDA device" in err


def test_device_model_file_and_factories_come_from_flags_and_environment() -> None:
    environ = {"GRADSERVE_DEVICE": "cpu", "GRADSERVE_MODEL_FACTORIES": "a=m:f,b=m:g"}
    config = parse_args(["--model-factory", "c=m:h", "--model-file", "spec.json"], environ)
    assert (config.model.device, config.model.model_file) == ("cpu", "spec.json")
    assert config.model.model_factories == ("a=m:f", "b=m:g", "c=m:h")


# -- files and factories ------------------------------------------------------------------------


def model_info(stub) -> pb.GetModelInfoResponse:
    return stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)


def test_model_file_builds_the_spec_it_describes(make_server, make_stub, tmp_path) -> None:
    path = tmp_path / "spec.json"
    description = {
        "model": "mlp",
        "sizes": [64, 32, 10],
        "activation": "tanh",
        "dropout": 0.1,
        "batch_norm": True,
        "loss": "cross_entropy",
    }
    path.write_text(json.dumps(description))
    info = model_info(make_stub(make_server(model_file=str(path))))
    assert info.model_spec == "mlp:64-32-10:tanh:dropout=0.1:batchnorm"
    assert info.loss == "cross_entropy"
    assert (list(info.input.shape), info.target.dtype) == ([-1, 64], pb.DATA_TYPE_INT64)
    # Linear 64*32+32, batch norm 32+32, linear 32*10+10.
    assert info.parameter_count == 64 * 32 + 32 + 64 + 32 * 10 + 10

    path.write_text(json.dumps({"model": "cnn", "input": [1, 8, 8], "outputs": 10, "loss": "mse"}))
    info = model_info(make_stub(make_server(model_file=str(path))))
    assert (info.model_spec, info.loss) == ("cnn:1x8x8-10:relu:channels=8-16", "mse")
    assert (list(info.input.shape), list(info.target.shape)) == ([-1, 1, 8, 8], [-1, 10])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not JSON"),
        ('{"sizes": [1, 2]}', '"model" name'),
        ('{"model": "mlp", "sizes": [4, 2], "layers": 3}', "unknown keys for mlp: layers"),
        ('{"model": "mlp", "sizes": "4-2"}', '"sizes" must be a list of integers'),
    ],
)
def test_bad_model_files_name_the_problem(make_server, tmp_path, text, problem) -> None:
    path = tmp_path / "spec.json"
    path.write_text(text)
    with pytest.raises(InvalidArgumentError) as caught:
        make_server(model_file=str(path))
    assert problem in str(caught.value)
    assert caught.value.field == "model_file"


def test_a_registered_factory_is_picked_by_name(make_server, make_stub) -> None:
    stub = make_stub(
        make_server(
            model_factories=("tiny=model_factories:tiny",),
            model="tiny:hidden=6",
            loss="cross_entropy",
        )
    )
    info = model_info(stub)
    assert (info.model, info.model_spec, info.loss) == ("tiny", "tiny:hidden=6", "cross_entropy")
    assert info.parameter_count == 3 * 6 + 6 + 6 * 2 + 2
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    assert compute(stub, x, y).batch_size == 4


# -- every model against local torch -------------------------------------------------------------


def local_module(spec: str) -> nn.Sequential:
    """The server's module, written out in plain torch."""
    if spec.startswith("mlp:5-7-3:tanh"):
        return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    if spec == "mlp:5-7-3:relu:batchnorm":
        return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3))
    if spec == "mlp:5-7-3:relu:dropout=0.5":
        return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Dropout(0.5), nn.Linear(7, 3))
    if spec == "cnn:1x6x6-3":
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 1 * 1, 3),
        )
    if spec == "cnn:2x5x5-3:channels=4:batchnorm:dropout=0.25":
        return nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(4 * 2 * 2, 3),
        )
    raise AssertionError(spec)


LOCAL_LOSSES = {
    "mse": lambda p, t: ((p - t) ** 2).mean(),
    "l1": functional.l1_loss,
    "huber": functional.huber_loss,
    "bce_with_logits": functional.binary_cross_entropy_with_logits,
    "cross_entropy": functional.cross_entropy,
}


def batch(spec: str, loss: str, size: int, generator: torch.Generator):
    shape = {"m": (5,), "c": (1, 6, 6) if "1x6x6" in spec else (2, 5, 5)}[spec[0]]
    x = torch.randn(size, *shape, generator=generator)
    if loss == "cross_entropy":
        return x, torch.randint(0, 3, (size,), generator=generator)
    if loss == "bce_with_logits":
        return x, torch.randint(0, 2, (size, 3), generator=generator).float()
    return x, torch.randn(size, 3, generator=generator)


MODEL_CASES = [
    *[("mlp:5-7-3:tanh", loss) for loss in LOCAL_LOSSES],
    ("mlp:5-7-3:relu:batchnorm", "cross_entropy"),
    ("mlp:5-7-3:relu:batchnorm", "mse"),
    *[("cnn:1x6x6-3", loss) for loss in LOCAL_LOSSES],
    ("cnn:2x5x5-3:channels=4:batchnorm:dropout=0.25", "cross_entropy"),
    ("mlp:5-7-3:relu:dropout=0.5", "cross_entropy"),
    ("mlp:5-7-3:relu:dropout=0.5", "bce_with_logits"),
]


@pytest.mark.parametrize(("spec", "loss"), MODEL_CASES)
def test_every_model_and_loss_gives_local_torch_gradients(make_server, make_stub, spec, loss):
    server = make_server(model=spec, loss=loss)
    stub = make_stub(server)
    assert model_info(stub).model == spec.split(":")[0]
    module = local_module(spec)
    # strict=False: batch norm's running statistics are buffers, fresh on both sides.
    missing, unexpected = module.load_state_dict(get_parameters(stub), strict=False)
    assert not unexpected
    assert all("running" in name or "num_batches" in name for name in missing)
    module.train()
    generator = torch.Generator().manual_seed(7)
    for _ in range(2):  # twice: the second batch sees batch norm's updated running stats
        x, y = batch(spec, loss, 6, generator)
        # Dropout draws from the process's torch RNG: seed it identically before each side.
        torch.manual_seed(11)
        response = compute(stub, x, y, return_gradients=True)
        torch.manual_seed(11)
        expected = LOCAL_LOSSES[loss](module(x), y)
        gradients = torch.autograd.grad(expected, list(module.parameters()))
        assert response.loss == pytest.approx(expected.item(), rel=1e-6, abs=1e-7)
        remote = decoded(response.gradients)
        for (name, _), gradient in zip(module.named_parameters(), gradients, strict=True):
            torch.testing.assert_close(remote[name], gradient, rtol=1e-5, atol=1e-6)


def evaluate(stub, x, y=None) -> pb.EvaluateResponse:
    request = pb.EvaluateRequest(inputs=tensor_to_proto(x), return_predictions=True)
    if y is not None:
        request.targets.CopyFrom(tensor_to_proto(y))
    return stub.Evaluate(request, timeout=TIMEOUT)


def test_dropout_and_batch_norm_train_in_compute_and_hold_still_in_evaluate(
    make_server, make_stub
) -> None:
    spec = "cnn:2x5x5-3:channels=4:batchnorm:dropout=0.25"
    stub = make_stub(make_server(model=spec))
    module = local_module(spec)
    module.load_state_dict(get_parameters(stub), strict=False)
    generator = torch.Generator().manual_seed(3)
    x, y = batch(spec, "cross_entropy", 8, generator)

    # Train mode: dropout masks differ from call to call (unseeded RNG moves on).
    losses = {compute(stub, x, y).loss for _ in range(4)}
    assert len(losses) > 1

    # Eval mode: the same answer every time, and the local eval-mode module's, with batch norm's
    # running statistics after the same four training batches.
    module.train()
    for _ in range(4):
        module(x)
    module.eval()
    with torch.no_grad():
        expected = module(x)
    first, second = evaluate(stub, x, y), evaluate(stub, x, y)
    assert torch.equal(tensor_from_proto(first.predictions), tensor_from_proto(second.predictions))
    assert first.loss == second.loss
    torch.testing.assert_close(tensor_from_proto(first.predictions), expected)


def test_a_one_sample_training_batch_for_batch_norm_is_invalid_argument(make_server, make_stub):
    stub = make_stub(make_server(model="mlp:5-7-3:relu:batchnorm"))
    with pytest.raises(grpc.RpcError) as caught:
        compute(stub, torch.randn(1, 5), torch.tensor([1]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs.shape" in caught.value.details()
    # Evaluate (eval mode, running statistics) takes one sample.
    assert evaluate(stub, torch.randn(1, 5)).batch_size == 1
    assert model_info(stub).accumulated_batches == 0
