"""Losses by name per batch and per-example weights, against local torch bitwise
(the expressions docs/losses.md gives), and the errors for bad names, options and weights."""

from __future__ import annotations

import grpc
import pytest
import torch
from torch.nn import functional

from gradserve.client.gradient_client import GradientClient
from gradserve.codec import tensor_to_proto
from gradserve.errors import InvalidArgumentError
from gradserve.server.models.specs import build
from gradserve.types import BatchLoss, LossSpec, TrainStep, WeightedReduction
from gradserve.v1 import gradserve_pb2 as pb
from tests.conftest import ServerFactory
from tests.helpers import TIMEOUT, Snapshot, compute, field_violations

SPEC = "mlp:4-6-3"
N = 6


def batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 4, generator=g)
    return {
        "x": x,
        "float": torch.randn(N, 3, generator=g),
        "unit": torch.rand(N, 3, generator=g),
        "classes": torch.randint(0, 3, (N,), generator=g),
        "weights": torch.rand(N, generator=g) * 2,
    }


def local_gradients(loss_of) -> tuple[float, dict[str, torch.Tensor]]:
    """The same model as the server's (same spec and seed), the loss computed here."""
    model = build(SPEC, None, 0)
    model.module.train()
    named = dict(model.module.named_parameters())
    loss = loss_of(model.module)
    gradients = torch.autograd.grad(loss, list(named.values()))
    return loss.item(), dict(zip(named, gradients, strict=True))


o = dict  # options
CASES = [
    ("mse", o(), "float", lambda p, t: ((p - t) ** 2).mean()),
    ("l1", o(), "float", functional.l1_loss),
    ("smooth_l1", o(), "float", functional.smooth_l1_loss),
    ("smooth_l1", o(beta=0.25), "float", lambda p, t: functional.smooth_l1_loss(p, t, beta=0.25)),
    ("huber", o(), "float", functional.huber_loss),
    ("huber", o(delta=0.3), "float", lambda p, t: functional.huber_loss(p, t, delta=0.3)),
    ("cross_entropy", o(), "classes", functional.cross_entropy),
    (
        "cross_entropy",
        o(label_smoothing=0.2, ignore_index=1),
        "classes",
        lambda p, t: functional.cross_entropy(p, t, label_smoothing=0.2, ignore_index=1),
    ),
    ("nll", o(), "classes", functional.nll_loss),
    ("bce_with_logits", o(), "unit", functional.binary_cross_entropy_with_logits),
    (
        "bce_with_logits",
        o(pos_weight=2.5),
        "unit",
        lambda p, t: functional.binary_cross_entropy_with_logits(
            p, t, pos_weight=torch.tensor(2.5)
        ),
    ),
    ("kl_div", o(), "unit", lambda p, t: functional.kl_div(p, t, reduction="batchmean")),
    (
        "kl_div",
        o(log_target=1),
        "float",
        lambda p, t: functional.kl_div(p, t, reduction="batchmean", log_target=True),
    ),
]


@pytest.mark.parametrize(("name", "options", "kind", "expression"), CASES)
def test_every_named_loss_and_option_is_the_torch_expression(
    make_server: ServerFactory, name, options, kind, expression
):
    server = make_server(model=SPEC)
    data = batch(len(name) + len(options))
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        result = client.compute_gradients(
            data["x"], data[kind], loss=LossSpec(name, options), return_gradients=True
        )
    loss, gradients = local_gradients(lambda m: expression(m(data["x"]), data[kind]))
    assert result.loss == loss
    for key, value in gradients.items():
        assert torch.equal(result.gradients[key], value), key


def per_example(losses: torch.Tensor, how: str = "mean") -> torch.Tensor:
    if losses.dim() == 1:
        return losses
    return losses.flatten(1).sum(1) if how == "sum" else losses.flatten(1).mean(1)


WEIGHTED = [
    ("mse", "float", lambda p, t: functional.mse_loss(p, t, reduction="none"), "mean"),
    ("huber", "float", lambda p, t: functional.huber_loss(p, t, reduction="none"), "mean"),
    ("cross_entropy", "classes", lambda p, t: functional.cross_entropy(p, t, reduction="none"), ""),
    ("kl_div", "unit", lambda p, t: functional.kl_div(p, t, reduction="none"), "sum"),
]


@pytest.mark.parametrize("reduction", ["sum", "mean", "normalized"])
@pytest.mark.parametrize(("name", "kind", "none", "how"), WEIGHTED)
def test_weighted_losses_are_the_torch_expression(
    make_server: ServerFactory, reduction, name, kind, none, how
):
    server = make_server(model=SPEC)
    data = batch(7)
    w = data["weights"]

    def expression(module: torch.nn.Module) -> torch.Tensor:
        total = (per_example(none(module(data["x"]), data[kind]), how) * w).sum()
        if reduction == "mean":
            return total / N
        return total / w.sum() if reduction == "normalized" else total

    with GradientClient(server.address, timeout=TIMEOUT) as client:
        result = client.compute_gradients(
            data["x"],
            data[kind],
            loss=name,
            sample_weights=w,
            weighted_reduction=reduction,
            return_gradients=True,
        )
    loss, gradients = local_gradients(expression)
    assert result.loss == loss
    for key, value in gradients.items():
        assert torch.equal(result.gradients[key], value), key


def test_weights_without_a_loss_name_weigh_the_runs_loss(make_server: ServerFactory):
    server = make_server(model=SPEC)
    data = batch(3)
    w = data["weights"]
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        result = client.compute_gradients(
            data["x"], data["classes"], sample_weights=w, weighted_reduction="sum"
        )
    expected, _ = local_gradients(
        lambda m: (
            functional.cross_entropy(m(data["x"]), data["classes"], reduction="none") * w
        ).sum()
    )
    assert result.loss == expected


def test_model_info_lists_the_losses_with_their_targets(make_server: ServerFactory):
    server = make_server(model=SPEC)
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        losses = {loss.name: loss for loss in client.model_info().losses}
    assert set(losses) == {
        "mse", "l1", "smooth_l1", "huber", "cross_entropy", "nll", "bce_with_logits", "kl_div"
    }  # fmt: skip
    assert losses["cross_entropy"].target.dtype == torch.int64
    assert losses["cross_entropy"].target.shape == (-1,)
    assert losses["cross_entropy"].options == ("label_smoothing", "ignore_index")
    assert losses["huber"].target.dtype == torch.float32
    assert losses["huber"].target.shape == (-1, 3)
    assert losses["huber"].options == ("delta",)


def _request(
    data: dict[str, torch.Tensor], kind: str = "classes", **fields
) -> pb.ComputeGradientsRequest:
    return pb.ComputeGradientsRequest(
        inputs=tensor_to_proto(data["x"]), targets=tensor_to_proto(data[kind]), **fields
    )


W = tensor_to_proto
BAD = [
    ({"loss": pb.LossSpec(name="pinball")}, "classes", "loss.name"),
    ({"loss": pb.LossSpec(name="mse")}, "classes", "targets.dtype"),
    ({"loss": pb.LossSpec(name="huber", options={"beta": 1.0})}, "float", "loss.options.beta"),
    ({"loss": pb.LossSpec(name="huber", options={"delta": 0.0})}, "float", "loss.options.delta"),
    ({"loss": pb.LossSpec(name="smooth_l1", options={"beta": -1})}, "float", "loss.options.beta"),
    (
        {"loss": pb.LossSpec(name="cross_entropy", options={"label_smoothing": 1.5})},
        "classes",
        "loss.options.label_smoothing",
    ),
    (
        {"loss": pb.LossSpec(name="cross_entropy", options={"ignore_index": 0.5})},
        "classes",
        "loss.options.ignore_index",
    ),
    (
        {"loss": pb.LossSpec(name="kl_div", options={"log_target": 2})},
        "float",
        "loss.options.log_target",
    ),
    (
        {"loss": pb.LossSpec(name="bce_with_logits", options={"pos_weight": float("nan")})},
        "unit",
        "loss.options.pos_weight",
    ),
    ({"sample_weights": W(torch.ones(N))}, "classes", "weighted_reduction"),
    ({"weighted_reduction": pb.WEIGHTED_REDUCTION_SUM}, "classes", "weighted_reduction"),
    (
        {"weighted_reduction": 9, "sample_weights": W(torch.ones(N))},
        "classes",
        "weighted_reduction",
    ),
    (
        {"sample_weights": W(torch.ones(N - 1)), "weighted_reduction": 1},
        "classes",
        "sample_weights.shape",
    ),
    (
        {"sample_weights": W(torch.ones(N, dtype=torch.float64)), "weighted_reduction": 1},
        "classes",
        "sample_weights.dtype",
    ),
    (
        {"sample_weights": W(-torch.ones(N)), "weighted_reduction": 1},
        "classes",
        "sample_weights.data",
    ),
    (
        {"sample_weights": W(torch.full((N,), float("inf"))), "weighted_reduction": 1},
        "classes",
        "sample_weights.data",
    ),
    (
        {"sample_weights": W(torch.zeros(N)), "weighted_reduction": 3},
        "classes",
        "sample_weights.data",
    ),
]


@pytest.mark.parametrize(("fields", "kind", "field"), BAD)
def test_bad_names_options_and_weights_name_the_field_and_change_nothing(
    make_server: ServerFactory, make_stub, fields, kind, field
):
    server = make_server(model=SPEC)
    stub = make_stub(server)
    data = batch(1)
    compute(stub, data["x"], data["classes"])
    before = Snapshot.take(server, stub)
    with pytest.raises(grpc.RpcError) as raised:
        stub.ComputeGradients(_request(data, kind, **fields), timeout=TIMEOUT)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(raised.value) == [field]
    Snapshot.take(server, stub).assert_same(before)


def test_ignored_classes_may_be_outside_the_class_range(make_server: ServerFactory):
    server = make_server(model=SPEC)
    data = batch(2)
    targets = data["classes"].clone()
    targets[0] = -7
    spec = LossSpec("cross_entropy", {"ignore_index": -7})
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        result = client.compute_gradients(data["x"], targets, loss=spec)
        with pytest.raises(InvalidArgumentError) as raised:
            client.compute_gradients(data["x"], targets, loss="cross_entropy")
    assert raised.value.field == "targets.data"
    expected, _ = local_gradients(
        lambda m: functional.cross_entropy(m(data["x"]), targets, ignore_index=-7)
    )
    assert result.loss == expected


def test_train_batches_take_their_own_losses_as_compute_gradients_does(
    make_server: ServerFactory,
):
    data, other = batch(4), batch(5)
    huber = BatchLoss(LossSpec("huber", {"delta": 0.5}))
    weighted = BatchLoss(None, other["weights"], WeightedReduction.NORMALIZED)
    step = TrainStep(
        batches=((data["x"], data["float"]), (other["x"], other["classes"])),
        batch_losses=(huber, weighted),
        apply_update=True,
        learning_rate=0.1,
    )
    streamed, unary = make_server(model=SPEC), make_server(model=SPEC)
    with GradientClient(streamed.address, timeout=TIMEOUT) as client:
        ((result,),) = list(client.train_stream([[step]], window=1))
        _, after_stream = client.get_parameters()
    with GradientClient(unary.address, timeout=TIMEOUT) as client:
        first = client.compute_gradients(data["x"], data["float"], loss=huber.loss)
        second = client.compute_gradients(
            other["x"], other["classes"], sample_weights=other["weights"],
            weighted_reduction="normalized",
        )  # fmt: skip
        client.apply_update(0.1)
        _, after_unary = client.get_parameters()
    assert result.losses == (first.loss, second.loss)
    for name, value in after_unary.items():
        assert torch.equal(after_stream[name], value), name


def test_a_bad_train_batch_loss_names_its_path_and_runs_nothing(make_server: ServerFactory):
    server = make_server(model=SPEC)
    data = batch(6)
    good = TrainStep.of(((data["x"], data["classes"]),), 0.1)
    bad = TrainStep(
        batches=((data["x"], data["classes"]),),
        batch_losses=(BatchLoss(LossSpec("huber", {"delta": -1})),),
    )
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        with pytest.raises(InvalidArgumentError) as raised:
            list(client.train_stream([[good, bad]], window=1))
        assert raised.value.field == "steps[1].batches[0].loss.options.delta"
        assert client.model_info().model_version == 0
