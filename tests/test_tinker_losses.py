"""Tinker's other verbs and losses through the SDK: forward, importance_sampling, ppo, custom."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
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

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning"),
]


def _rl_inputs(tokens: list[int], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    count = len(tokens) - 1
    return {
        "logprobs": -4.1 + 0.3 * torch.randn(count, generator=generator),
        "advantages": torch.randn(count, generator=generator),
    }


@pytest.mark.parametrize("loss", ["importance_sampling", "ppo"])
def test_rl_steps_through_the_sdk_are_bitwise_the_grpc_steps(
    make_server, make_stub, tmp_path: Path, loss: str
) -> None:
    running, url = start(make_server, tmp_path)
    stub = make_stub(running)
    client = service(url).create_lora_training_client(base_model="tiny", rank=32, seed=5).result()
    grpc_adapter_run(stub, "twin", seed=5)
    batch = sequences(21, 2)
    for step in range(3):
        inputs = [_rl_inputs(tokens, step * 10 + i) for i, tokens in enumerate(batch)]
        data = [datum(tokens, **rl) for tokens, rl in zip(batch, inputs, strict=True)]
        forward = client.forward_backward(data, loss)
        update = client.optim_step(types.AdamParams(learning_rate=0.01))
        ours = forward.result().metrics["loss:sum"]
        update.result()
        total = 0.0
        for tokens, rl in zip(batch, inputs, strict=True):
            total += grpc_forward_backward(stub, "twin", tokens, loss=loss, **rl).loss
        grpc_optim_step(stub, "twin", 0.01)
        assert ours == total
    assert digest(stub, client.model_id.replace(":", "-")) == digest(stub, "twin")


def test_forward_answers_the_loss_and_logprobs_and_changes_nothing(
    make_server, make_stub, tmp_path: Path
) -> None:
    running, url = start(make_server, tmp_path)
    stub = make_stub(running)
    client = service(url).create_lora_training_client(base_model="tiny", rank=8, seed=4).result()
    run = client.model_id.replace(":", "-")
    tokens = sequences(2, 1)[0]
    data = [datum(tokens, weights=weights_for(tokens, 1))]
    client.forward_backward(data, "cross_entropy").result()
    client.optim_step(types.AdamParams(learning_rate=0.05)).result()
    before = digest(stub, run)
    forward = client.forward(data, "cross_entropy").result()
    assert digest(stub, run) == before
    # The same batch's forward_backward at this version answers the same loss and logprobs.
    both = client.forward_backward(data, "cross_entropy").result()
    assert forward.metrics["loss:sum"] == both.metrics["loss:sum"]
    assert (
        forward.loss_fn_outputs[0]["logprobs"].tolist()
        == both.loss_fn_outputs[0]["logprobs"].tolist()
    )


def test_a_custom_loss_is_the_linear_surrogate_of_cross_entropy(
    make_server, make_stub, tmp_path: Path
) -> None:
    """forward_backward_custom runs on the client (forward, then cross_entropy with the loss's
    gradient as weights): a custom loss that is weighted cross-entropy steps as cross_entropy."""
    running, url = start(make_server, tmp_path)
    stub = make_stub(running)
    api = service(url)
    custom = api.create_lora_training_client(base_model="tiny", rank=8, seed=6).result()
    plain = api.create_lora_training_client(base_model="tiny", rank=8, seed=6).result()
    tokens = sequences(8, 1)[0]
    weights = weights_for(tokens, 3)

    def weighted_cross_entropy(data, logprobs_list):  # type: ignore[no-untyped-def]
        loss = sum(-(lp * weights).sum() for lp in logprobs_list)
        return loss, {}

    custom.forward_backward_custom([datum(tokens)], weighted_cross_entropy).result()
    plain.forward_backward([datum(tokens, weights=weights)], "cross_entropy").result()
    custom.optim_step(types.AdamParams(learning_rate=0.05)).result()
    plain.optim_step(types.AdamParams(learning_rate=0.05)).result()
    mine, theirs = (digest(stub, c.model_id.replace(":", "-")) for c in (custom, plain))
    assert mine == theirs
