"""Token losses under the existing weighted reductions (SUM, MEAN, NORMALIZED): local torch is
the oracle, in the loss function and over the wire on an adapter run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TIMEOUT, apply
from llm_bases import peft_adapter_tensors, peft_model, tiny_llama
from test_lora_token_wire import (
    TARGETS,
    Batch,
    _assert_adapter_is,
    _batches,
    _create,
    _fields,
    _local_loss,
    _logits,
)
from torch.nn import functional

from gradserve.server.models.token_losses import (
    OPTIONS,
    TokenBatch,
    check_reduction,
    target_logprobs,
    token_loss,
)
from gradserve.types import WeightedReduction
from gradserve.v1 import gradserve_pb2 as pb

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)
WIRE = {
    WeightedReduction.SUM: pb.WEIGHTED_REDUCTION_SUM,
    WeightedReduction.MEAN: pb.WEIGHTED_REDUCTION_MEAN,
    WeightedReduction.NORMALIZED: pb.WEIGHTED_REDUCTION_NORMALIZED,
}


def _divisor(reduction: WeightedReduction, batch: Batch) -> torch.Tensor | int:
    if reduction is WeightedReduction.MEAN:
        return batch["targets"].numel()
    if reduction is WeightedReduction.NORMALIZED:
        return batch["sample_weights"].sum()
    return 1


@pytest.mark.parametrize("reduction", list(WeightedReduction))
def test_cross_entropy_reductions_are_torchs_per_token_cross_entropy_reduced(
    reduction: WeightedReduction,
) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 11, (3, 7), generator=generator)
    weights = torch.rand(3, 7, generator=generator, dtype=torch.float64)
    weights[0, :4] = 0.0
    batch = TokenBatch(targets, targets, weights=weights)
    chosen = check_reduction(reduction, batch)
    ours = token_loss("cross_entropy", target_logprobs(logits, targets), batch, {}, chosen)
    per_token = functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    expected = {
        WeightedReduction.SUM: (per_token * weights).sum(),
        WeightedReduction.MEAN: (per_token * weights).sum() / targets.numel(),
        WeightedReduction.NORMALIZED: (per_token * weights).sum() / weights.sum(),
    }[reduction]
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("name", ["importance_sampling", "ppo"])
def test_rl_losses_under_mean_are_their_sums_over_the_tokens(name: str) -> None:
    generator = torch.Generator().manual_seed(1)
    logprobs = -2.0 + 0.3 * torch.randn(2, 5, generator=generator, dtype=torch.float64)
    targets = torch.zeros(2, 5, dtype=torch.int64)
    batch = TokenBatch(
        targets,
        targets,
        logprobs=-2.0 + 0.3 * torch.randn(2, 5, generator=generator, dtype=torch.float64),
        advantages=torch.randn(2, 5, generator=generator, dtype=torch.float64),
    )
    options = OPTIONS[name]
    ratio = torch.exp(logprobs - batch.logprobs)  # type: ignore[operator]
    advantages = batch.advantages
    assert advantages is not None
    if name == "ppo":
        clipped = torch.clamp(ratio, options["clip_low_threshold"], options["clip_high_threshold"])
        per_token = -torch.min(ratio * advantages, clipped * advantages)
    else:
        per_token = -(ratio * advantages)
    ours = token_loss(name, logprobs, batch, options, WeightedReduction.MEAN)
    torch.testing.assert_close(ours, per_token.mean(), rtol=1e-12, atol=0.0)


@pytest.mark.parametrize(
    ("loss", "reduction"),
    [
        ("cross_entropy", WeightedReduction.MEAN),
        ("cross_entropy", WeightedReduction.NORMALIZED),
        ("importance_sampling", WeightedReduction.MEAN),
        ("ppo", WeightedReduction.MEAN),
    ],
)
def test_reduced_token_losses_train_bitwise_as_the_local_peft_loop(
    make_server, make_stub, tmp_path: Path, loss: str, reduction: WeightedReduction
) -> None:
    folder = tiny_llama(tmp_path / "base")
    stub = make_stub(make_server(base_models=(f"tiny={folder}",)))
    _create(stub, "adapter")
    batches = _batches(loss, 5, 6, masked=loss == "ppo")
    losses = []
    for batch in batches:
        fields = _fields(loss, batch)
        fields["weighted_reduction"] = WIRE[reduction]
        request = pb.ComputeGradientsRequest(run="adapter", **fields)  # type: ignore[arg-type]
        losses.append(stub.ComputeGradients(request, timeout=TIMEOUT).loss)
        apply(stub, 0.01, run="adapter")
    local = peft_model(folder, 4, 8, TARGETS, seed=3).train()
    optimizer = torch.optim.AdamW(
        [p for p in local.parameters() if p.requires_grad], lr=0.01, weight_decay=0.01
    )
    local_losses = []
    for batch in batches:
        value = _local_loss(loss, _logits(local, batch), batch) / _divisor(reduction, batch)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        local_losses.append(value.item())
    assert losses == local_losses
    _assert_adapter_is(stub, "adapter", peft_adapter_tensors(local))
