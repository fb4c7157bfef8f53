"""The official tinker SDK (pinned) drives gradserve over loopback HTTP: the same steps as gRPC."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import tinker
import torch
from helpers import TIMEOUT, field_violations
from tinker import types
from tinker_helpers import (
    datum,
    digest,
    grpc_adapter_run,
    grpc_forward_backward,
    grpc_optim_step,
    sdk_garbage,  # noqa: F401 - an autouse fixture
    sequences,
    service,
    start,
    weights_for,
)

from gradserve.codec import tensor_from_proto, tensor_to_proto
from gradserve.v1 import gradserve_pb2 as pb

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    # The SDK's own unclosed client socket (tinker_helpers.sdk_garbage).
    pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning"),
]


def test_ten_sdk_steps_are_bitwise_the_same_steps_over_grpc(
    make_server, make_stub, tmp_path: Path
) -> None:
    running, url = start(make_server, tmp_path)
    stub = make_stub(running)
    client = service(url).create_lora_training_client(base_model="tiny", rank=32, seed=7).result()
    grpc_adapter_run(stub, "twin", seed=7)
    # One batch, ten times: the loss must fall.
    steps = [sequences(100, 3)] * 10
    sdk_losses, grpc_losses, norms = [], [], []
    for number, step in enumerate(steps):
        weights = [weights_for(tokens, i) for i, tokens in enumerate(step)]
        data = [datum(tokens, weights=w) for tokens, w in zip(step, weights, strict=True)]
        # Both submitted before either is awaited, as the SDK's docs recommend.
        forward = client.forward_backward(data, "cross_entropy")
        update = client.optim_step(types.AdamParams(learning_rate=0.02))
        output, metrics = forward.result(), update.result().metrics
        sdk_losses.append(output.metrics["loss:sum"])
        assert metrics is not None
        norms.append(metrics["grad_norm"])

        total = 0.0
        for tokens, w, out in zip(step, weights, output.loss_fn_outputs, strict=True):
            answer = grpc_forward_backward(stub, "twin", tokens, weights=w)
            total += answer.loss
            # Both fronts answer the training forward's per-token logprobs, bitwise alike.
            assert tensor_from_proto(answer.logprobs)[0].tolist() == out["logprobs"].tolist()
        grpc_losses.append(total)
        assert grpc_optim_step(stub, "twin", 0.02).gradient_norm == norms[-1]
        # Per-token logprobs answered from the forward that made the gradients: one per target.
        assert [len(o["logprobs"].tolist()) for o in output.loss_fn_outputs] == [
            len(t) - 1 for t in step
        ]
    assert sdk_losses == grpc_losses
    assert sdk_losses[-1] < sdk_losses[0]
    run = client.model_id.replace(":", "-")
    assert digest(stub, run) == digest(stub, "twin")
    assert digest(stub, run)[1] == 10


def test_logprobs_are_the_log_softmax_of_the_targets(
    make_server, make_stub, tmp_path: Path
) -> None:
    running, url = start(make_server, tmp_path)
    client = service(url).create_lora_training_client(base_model="tiny", rank=4, seed=1).result()
    tokens = sequences(5, 1)[0]
    output = client.forward_backward(
        [datum(tokens, weights=torch.ones(len(tokens) - 1))], "cross_entropy"
    ).result()
    logprobs = torch.tensor(output.loss_fn_outputs[0]["logprobs"].tolist())
    # A fresh adapter adds nothing (lora_B is zero): the base's own log-probabilities.
    base = running.runs.bases.get("tiny").module
    with torch.no_grad():
        logits = base(torch.tensor([tokens[:-1]])).logits.float()
    expected = torch.log_softmax(logits, -1)[0].gather(-1, torch.tensor(tokens[1:])[:, None])[:, 0]
    assert torch.allclose(logprobs, expected, atol=1e-6)
    assert output.metrics["loss:sum"] == pytest.approx(-float(logprobs.sum()), rel=1e-6)


def test_the_optimizer_honours_every_adam_field_and_answers_the_norm_before_clipping(
    make_server, make_stub, tmp_path: Path
) -> None:
    running, url = start(make_server, tmp_path)
    stub = make_stub(running)
    client = service(url).create_lora_training_client(base_model="tiny", rank=8, seed=2).result()
    run = client.model_id.replace(":", "-")
    tokens = sequences(9, 1)[0]
    weights = torch.ones(len(tokens) - 1)
    client.forward_backward([datum(tokens, weights=weights)], "cross_entropy").result()
    params = types.AdamParams(
        learning_rate=0.05, beta1=0.5, beta2=0.6, eps=1e-3, weight_decay=0.1, grad_clip_norm=0.01
    )
    metrics = client.optim_step(params).result().metrics
    assert metrics is not None and metrics["grad_clipped"] == 1.0 and metrics["grad_norm"] > 0.01

    # The same step over gRPC: every field as this step's AdamW settings, clipping at 0.01.
    grpc_adapter_run(stub, "local", seed=2, rank=8)
    grpc_forward_backward(stub, "local", tokens, weights=weights)
    answer = stub.ApplyUpdate(
        pb.ApplyUpdateRequest(
            run="local",
            learning_rate=0.05,
            hyperparameters={"beta1": 0.5, "beta2": 0.6, "eps": 1e-3, "weight_decay": 0.1},
            max_grad_norm=0.01,
        ),
        timeout=TIMEOUT,
    )
    assert answer.clipped and answer.gradient_norm == metrics["grad_norm"]
    assert digest(stub, run) == digest(stub, "local")


def test_an_unserved_loss_is_refused_naming_it(make_server, tmp_path: Path) -> None:
    _, url = start(make_server, tmp_path)
    client = service(url).create_lora_training_client(base_model="tiny", rank=4, seed=1).result()
    tokens = sequences(3, 1)[0]
    with pytest.raises(Exception, match="cispo"):
        client.forward_backward([datum(tokens)], "cispo").result(timeout=30)
    # The refused call took its seq_id's turn: the client's next calls do not wait for it.
    answer = client.forward_backward([datum(tokens)], "cross_entropy").result(timeout=30)
    assert answer.metrics["loss:sum"] > 0


def test_capabilities_list_the_operators_bases(make_server, tmp_path: Path) -> None:
    _, url = start(make_server, tmp_path)
    capabilities = (
        tinker.RestClient(base_url=url, api_key="tml-test").get_server_capabilities().result()
    )
    assert [(m.model_name, m.trainable) for m in capabilities.supported_models] == [("tiny", True)]


def test_chunks_of_one_forward_backward_run_in_order_and_combine(
    make_server, make_stub, tmp_path: Path
) -> None:
    """A body limit of 1 KiB makes the SDK cut 10 datums into chunks it sends together, the first
    last: they run in seq_id order, so the step equals the same datums over gRPC bitwise."""
    running, url = start(make_server, tmp_path, tinker_max_body_bytes=1024)
    stub = make_stub(running)
    client = service(url).create_lora_training_client(base_model="tiny", rank=4, seed=9).result()
    grpc_adapter_run(stub, "twin", seed=9, rank=4)
    batch = sequences(31, 10)
    weights = [weights_for(tokens, i) for i, tokens in enumerate(batch)]
    forward = client.forward_backward(
        [datum(t, weights=w) for t, w in zip(batch, weights, strict=True)], "cross_entropy"
    )
    client.optim_step(types.AdamParams(learning_rate=0.05)).result()
    output = forward.result()
    assert [len(o["logprobs"].tolist()) for o in output.loss_fn_outputs] == [
        len(t) - 1 for t in batch
    ]
    losses = [
        grpc_forward_backward(stub, "twin", t, weights=w).loss
        for t, w in zip(batch, weights, strict=True)
    ]
    grpc_optim_step(stub, "twin", 0.05)
    assert output.metrics["loss:sum"] == pytest.approx(sum(losses), rel=1e-6)
    assert digest(stub, client.model_id.replace(":", "-")) == digest(stub, "twin")


def test_grpc_return_logprobs_is_refused_on_a_run_that_is_not_a_language_model(
    make_server, make_stub, tmp_path: Path
) -> None:
    running, _ = start(make_server, tmp_path)
    stub = make_stub(running)
    x = torch.rand(4, 1)
    request = pb.ComputeGradientsRequest(
        inputs=tensor_to_proto(x), targets=tensor_to_proto(2 * x), return_logprobs=True
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.ComputeGradients(request, timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(refused.value) == ["return_logprobs"]
