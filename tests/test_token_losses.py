"""Token losses against their formulas computed here, and the checks of a token batch."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn import functional

from gradserve.errors import InvalidArgumentError, ResourceExhaustedError
from gradserve.server.models.token_losses import (
    TokenBatch,
    causal_lm_loss,
    check_options,
    check_token_batch,
    target_logprobs,
)

B, T, V = 3, 7, 13


def _batch(seed: int = 0, **fields: object) -> tuple[torch.Tensor, TokenBatch]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=generator, requires_grad=True)
    batch = TokenBatch(
        inputs=torch.randint(0, V, (B, T), generator=generator),
        targets=torch.randint(0, V, (B, T), generator=generator),
        **fields,  # type: ignore[arg-type]
    )
    return logits, batch


def _floats(seed: int, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(B, T, generator=generator)


def _local_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Written independently: minus the per-token cross-entropy.
    flat = functional.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="none")
    return -flat.reshape(B, T)


def test_target_logprobs_are_log_softmax_at_the_targets() -> None:
    logits, batch = _batch()
    ours = target_logprobs(logits, batch.targets)
    torch.testing.assert_close(ours, _local_logprobs(logits, batch.targets), rtol=0, atol=1e-6)
    for b, t in ((0, 0), (2, 6)):
        expected = logits[b, t].log_softmax(-1)[batch.targets[b, t]]
        assert ours[b, t] == expected


def test_cross_entropy_is_the_weighted_sum() -> None:
    weights = (_floats(1, 0, 2) * (_floats(2) > 0)).float()
    logits, batch = _batch(weights=weights)
    check_token_batch(batch, "cross_entropy", V)
    loss, logprobs = causal_lm_loss(
        logits, batch, "cross_entropy", check_options("cross_entropy", {})
    )
    expected = -(
        torch.log_softmax(logits, -1).gather(-1, batch.targets[..., None])[..., 0] * weights
    )
    assert torch.equal(loss, expected.sum())
    torch.testing.assert_close(loss, (-_local_logprobs(logits, batch.targets) * weights).sum())
    (ours,) = torch.autograd.grad(loss, logits)
    (theirs,) = torch.autograd.grad(expected.sum(), logits)
    assert torch.equal(ours, theirs)
    assert torch.equal(logprobs, target_logprobs(logits, batch.targets))
    # Without weights every token counts once.
    unweighted, _ = causal_lm_loss(
        logits, dataclasses.replace(batch, weights=None), "cross_entropy", {}
    )
    assert torch.equal(unweighted, -logprobs.sum())


def test_importance_sampling_is_the_ratio_times_advantage_summed() -> None:
    sampler, advantages = -_floats(3, 0.1, 3.0), _floats(4)
    logits, batch = _batch(logprobs=sampler, advantages=advantages)
    check_token_batch(batch, "importance_sampling", V)
    loss, logprobs = causal_lm_loss(logits, batch, "importance_sampling", {})
    lp = _local_logprobs(logits, batch.targets)
    torch.testing.assert_close(loss, -(torch.exp(lp - sampler) * advantages).sum())
    assert torch.equal(loss, -(torch.exp(logprobs - sampler) * advantages).sum())


def test_ppo_clips_the_ratio_where_it_should() -> None:
    # Chosen so that ratios fall on both sides of [0.9, 1.1] with both signs of advantage.
    logits, batch = _batch(5)
    lp = target_logprobs(logits, batch.targets).detach()
    shifts = torch.tensor([-0.5, -0.05, 0.0, 0.05, 0.5, 1.0, -1.0]).repeat(B, 1)
    sampler = lp + shifts  # ratio = exp(-shift)
    advantages = torch.tensor([1.0, -1.0, 2.0, 1.0, -2.0, 1.0, -1.0]).repeat(B, 1)
    batch = dataclasses.replace(batch, logprobs=sampler, advantages=advantages)
    options = check_options("ppo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1})
    check_token_batch(batch, "ppo", V)
    loss, _ = causal_lm_loss(logits, batch, "ppo", options)
    ratio = torch.exp(lp - sampler)
    objective = torch.minimum(ratio * advantages, ratio.clamp(0.9, 1.1) * advantages)
    torch.testing.assert_close(loss, -objective.sum())
    (gradient,) = torch.autograd.grad(loss, logits)
    # Clipped tokens (ratio past a threshold on the side the advantage pushes) get no gradient.
    clipped = ((ratio > 1.1) & (advantages > 0)) | ((ratio < 0.9) & (advantages < 0))
    assert bool(clipped.any()) and bool((~clipped).any())
    assert bool((gradient[clipped] == 0).all())
    assert bool((gradient[~clipped].abs().sum(-1) > 0).all())
    # Defaults are Tinker's, 0.8 and 1.2.
    assert check_options("ppo", {}) == {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}


def test_bf16_logits_are_reduced_in_float32() -> None:
    logits, batch = _batch()
    ours = target_logprobs(logits.detach().bfloat16(), batch.targets)
    assert ours.dtype == torch.float32


@pytest.mark.parametrize(
    ("name", "given", "field"),
    [
        ("mse", {}, "loss.name"),
        ("cross_entropy", {"label_smoothing": 0.1}, "loss.options.label_smoothing"),
        ("ppo", {"clip_low_threshold": 1.5}, "loss.options.clip_low_threshold"),
        ("ppo", {"clip_high_threshold": 0.5}, "loss.options.clip_high_threshold"),
        ("ppo", {"clip_high_threshold": float("inf")}, "loss.options.clip_high_threshold"),
    ],
)
def test_bad_loss_names_and_options_name_the_field(
    name: str, given: dict[str, float], field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check_options(name, given, prefix="steps[0].")
    assert caught.value.field == f"steps[0].{field}"


def _change(batch: TokenBatch, **fields: object) -> TokenBatch:
    return dataclasses.replace(batch, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("loss", "edit", "field"),
    [
        ("cross_entropy", {"inputs": torch.full((B, T), V)}, "inputs.data"),
        ("cross_entropy", {"inputs": torch.full((B, T), -1)}, "inputs.data"),
        ("cross_entropy", {"targets": torch.full((B, T), V)}, "targets.data"),
        ("cross_entropy", {"targets": torch.zeros(B, T, dtype=torch.int32)}, "targets.dtype"),
        ("cross_entropy", {"targets": torch.zeros(B, T + 1, dtype=torch.int64)}, "targets.shape"),
        ("cross_entropy", {"inputs": torch.zeros(B, T)}, "inputs.dtype"),
        ("cross_entropy", {"inputs": torch.zeros(B * T, dtype=torch.int64)}, "inputs.shape"),
        ("cross_entropy", {"inputs": torch.zeros(0, T, dtype=torch.int64)}, "inputs.shape"),
        ("cross_entropy", {"attention_mask": torch.full((B, T), 2)}, "attention_mask.data"),
        ("cross_entropy", {"attention_mask": torch.ones(B, T)}, "attention_mask.dtype"),
        (
            "cross_entropy",
            {"attention_mask": torch.ones(B, 1, dtype=torch.bool)},
            "attention_mask.shape",
        ),
        ("cross_entropy", {"weights": torch.ones(B, T, dtype=torch.float64)}, "weights.dtype"),
        ("cross_entropy", {"weights": torch.ones(B)}, "weights.shape"),
        ("cross_entropy", {"weights": torch.full((B, T), float("nan"))}, "weights.data"),
        ("cross_entropy", {"advantages": torch.ones(B, T)}, "advantages"),
        ("importance_sampling", {"advantages": torch.ones(B, T)}, "logprobs"),
        ("importance_sampling", {"logprobs": torch.ones(B, T)}, "advantages"),
        (
            "ppo",
            {
                "logprobs": torch.ones(B, T),
                "advantages": torch.ones(B, T),
                "weights": torch.ones(B, T),
            },
            "weights",
        ),
        (
            "ppo",
            {"logprobs": torch.full((B, T), -float("inf")), "advantages": torch.ones(B, T)},
            "logprobs.data",
        ),
    ],
)
def test_batches_that_do_not_fit_are_refused_naming_the_field(
    loss: str, edit: dict[str, object], field: str
) -> None:
    _, batch = _batch()
    with pytest.raises(InvalidArgumentError) as caught:
        check_token_batch(_change(batch, **edit), loss, V, prefix="batches[2].")
    assert caught.value.field == f"batches[2].{field}"


def test_sizes_are_bounded_before_any_logits_exist() -> None:
    _, batch = _batch()
    with pytest.raises(InvalidArgumentError, match="at most 6") as caught:
        check_token_batch(batch, "cross_entropy", V, max_sequence_length=6)
    assert caught.value.field == "inputs.shape"
    needed = 2 * B * T * V * 4
    check_token_batch(batch, "cross_entropy", V, max_logits_bytes=needed)
    with pytest.raises(ResourceExhaustedError) as exhausted:
        check_token_batch(batch, "cross_entropy", V, max_logits_bytes=needed - 1)
    assert exhausted.value.field == "inputs.shape"
