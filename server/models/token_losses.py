"""Token batches for causal language models and their losses by name, sum-reduced per token.

A batch: `inputs` int64 [B, T], optional `attention_mask` [B, T] (0/1), `targets` int64
[B, T], and per loss its per-token tensors, float32 [B, T]: `weights` (cross_entropy),
`logprobs` of the sampler and `advantages` (importance_sampling, ppo). With lp = log p(target)
from the model's logits (`target_logprobs`), the losses are sums, the convention of the
Tinker-compatible services (normalising is the client's choice):
  cross_entropy        -(lp * weights).sum()
  importance_sampling  -(exp(lp - logprobs) * advantages).sum()
  ppo                  -min(r * advantages, clamp(r, low, high) * advantages).sum(),
                       r = exp(lp - logprobs); low, high: clip_low/high_threshold (0.8, 1.2)
or, by the existing weighted reductions (gradserve.types.WeightedReduction), that sum divided
by the B * T tokens (MEAN) or by the sum of the weights (NORMALIZED: mean over weighted tokens).
Every check runs before the forward, naming the field; sizes are bounded before any logits exist.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from gradserve.errors import InvalidArgumentError, ResourceExhaustedError
from gradserve.types import WeightedReduction

# Per-token float inputs each loss needs (and accepts: any other is refused, not ignored).
NEEDS: dict[str, tuple[str, ...]] = {
    "cross_entropy": ("weights",),
    "importance_sampling": ("logprobs", "advantages"),
    "ppo": ("logprobs", "advantages"),
}
# Options by loss: name -> default.
OPTIONS: dict[str, dict[str, float]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
}
# Bounds a server may lower: tokens of one sequence, and the float32 logits one forward makes.
MAX_SEQUENCE_LENGTH = 32_768
MAX_LOGITS_BYTES = 1 << 30


@dataclass(frozen=True)
class TokenBatch:
    """One batch of token sequences and the per-token inputs of its loss (None when absent)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    attention_mask: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    advantages: torch.Tensor | None = None

    def per_token(self) -> dict[str, torch.Tensor | None]:
        return {"weights": self.weights, "logprobs": self.logprobs, "advantages": self.advantages}


def _bad(field: str, problem: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{field}: {problem}", field=field)


def _check_ids(
    field: str, ids: torch.Tensor, shape: torch.Size, vocab_size: int, values: bool
) -> None:
    if ids.dtype != torch.int64:
        raise _bad(f"{field}.dtype", f"{ids.dtype} is not int64")
    if ids.shape != shape:
        raise _bad(f"{field}.shape", f"{list(ids.shape)}, but inputs is {list(shape)}")
    if values and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise _bad(f"{field}.data", f"token ids must be in [0, {vocab_size}) (the vocabulary)")


def check_options(name: str, given: Mapping[str, float], prefix: str = "") -> dict[str, float]:
    """The loss's options with defaults filled in; unknown names and bad values refused."""
    if name not in NEEDS:
        raise _bad(f"{prefix}loss.name", f"unknown token loss {name!r}; known: {', '.join(NEEDS)}")
    options = dict(OPTIONS[name])
    for key, value in given.items():
        field = f"{prefix}loss.options.{key}"
        if key not in options:
            raise _bad(field, f"{name} takes {', '.join(options) or 'no options'}")
        if not math.isfinite(value):
            raise _bad(field, f"{value} is not finite")
        options[key] = float(value)
    if name == "ppo":
        low, high = options["clip_low_threshold"], options["clip_high_threshold"]
        if not 0 <= low <= 1:
            raise _bad(f"{prefix}loss.options.clip_low_threshold", f"{low} is not in [0, 1]")
        if high < 1:
            raise _bad(f"{prefix}loss.options.clip_high_threshold", f"{high} is below 1")
    return options


def check_token_batch(
    batch: TokenBatch,
    loss_name: str,
    vocab_size: int,
    *,
    prefix: str = "",
    max_sequence_length: int = MAX_SEQUENCE_LENGTH,
    max_logits_bytes: int = MAX_LOGITS_BYTES,
    values: bool = True,
    weights_field: str = "weights",
) -> None:
    """Raise naming the field (under `prefix`) unless the batch fits the loss and the model.
    `values=False` checks dtypes and shapes only (the caller checks values of many at once).
    `weights_field`: the weights' name in errors (the wire's is `sample_weights`)."""
    inputs = batch.inputs
    if inputs.dtype != torch.int64:
        raise _bad(f"{prefix}inputs.dtype", f"{inputs.dtype} is not int64")
    if inputs.dim() != 2 or 0 in inputs.shape:
        raise _bad(f"{prefix}inputs.shape", f"{list(inputs.shape)} is not [B, T], B, T > 0")
    if inputs.shape[1] > max_sequence_length:
        raise _bad(
            f"{prefix}inputs.shape",
            f"sequences of {inputs.shape[1]} tokens; at most {max_sequence_length}",
        )
    # float32 logits [B, T, V], and as much again for their log-softmax.
    logits_bytes = 2 * inputs.numel() * vocab_size * 4
    if logits_bytes > max_logits_bytes:
        raise ResourceExhaustedError(
            f"{prefix}inputs.shape: {list(inputs.shape)} over a vocabulary of {vocab_size} "
            f"needs {logits_bytes} bytes of logits; at most {max_logits_bytes}",
            field=f"{prefix}inputs.shape",
        )
    _check_ids(f"{prefix}inputs", inputs, inputs.shape, vocab_size, values)
    _check_ids(f"{prefix}targets", batch.targets, inputs.shape, vocab_size, values)
    mask = batch.attention_mask
    if mask is not None:
        if mask.dtype not in (torch.int64, torch.bool):
            raise _bad(f"{prefix}attention_mask.dtype", f"{mask.dtype} is not int64 or bool")
        if mask.shape != inputs.shape:
            raise _bad(f"{prefix}attention_mask.shape", f"{list(mask.shape)} is not inputs'")
        if values and mask.dtype == torch.int64 and bool(((mask != 0) & (mask != 1)).any()):
            raise _bad(f"{prefix}attention_mask.data", "values must be 0 or 1")
    needed = NEEDS.get(loss_name, ())
    for name, tensor in batch.per_token().items():
        field = f"{prefix}{weights_field if name == 'weights' else name}"
        if tensor is None:
            # cross_entropy without weights weighs every token 1.
            if name in needed and name != "weights":
                raise _bad(field, f"{loss_name} needs {name} [B, T]")
            continue
        if name not in needed:
            raise _bad(field, f"{loss_name} takes no {name}")
        if tensor.dtype != torch.float32:
            raise _bad(f"{field}.dtype", f"{tensor.dtype} is not float32")
        if tensor.shape != inputs.shape:
            raise _bad(
                f"{field}.shape", f"{list(tensor.shape)}, but inputs is {list(inputs.shape)}"
            )
        if values and not bool(torch.isfinite(tensor).all()):
            raise _bad(f"{field}.data", "values must be finite")


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per token, [B, T], from logits [B, T, V] (in float32 at least)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def check_reduction(
    reduction: WeightedReduction | None, batch: TokenBatch, values: bool = True
) -> WeightedReduction:
    """The batch's reduction (unset: SUM); NORMALIZED needs sample_weights with a positive sum."""
    if reduction is None or reduction is WeightedReduction.SUM:
        return WeightedReduction.SUM
    if reduction is WeightedReduction.NORMALIZED:
        if batch.weights is None:
            raise _bad("weighted_reduction", "NORMALIZED divides by the sum of sample_weights")
        if values and not float(batch.weights.sum()) > 0:
            raise _bad(
                "sample_weights.data", "the weights' sum is not > 0, so NORMALIZED cannot divide"
            )
    return reduction


def token_loss(
    name: str,
    logprobs: torch.Tensor,
    batch: TokenBatch,
    options: Mapping[str, float],
    reduction: WeightedReduction = WeightedReduction.SUM,
) -> torch.Tensor:
    """The named loss (module docstring) from the targets' log-probabilities, 0-d: the sum,
    or with MEAN the sum over the batch's B * T tokens, with NORMALIZED over sum(weights)."""
    total = _summed(name, logprobs, batch, options)
    if reduction is WeightedReduction.MEAN:
        return total / logprobs.numel()
    if reduction is WeightedReduction.NORMALIZED:
        assert batch.weights is not None  # check_reduction
        return total / batch.weights.sum()
    return total


def _summed(
    name: str, logprobs: torch.Tensor, batch: TokenBatch, options: Mapping[str, float]
) -> torch.Tensor:
    if name == "cross_entropy":
        if batch.weights is None:
            return -logprobs.sum()
        return -(logprobs * batch.weights).sum()
    assert batch.logprobs is not None and batch.advantages is not None  # check_token_batch
    ratio = torch.exp(logprobs - batch.logprobs)
    if name == "importance_sampling":
        return -(ratio * batch.advantages).sum()
    clipped = torch.clamp(ratio, options["clip_low_threshold"], options["clip_high_threshold"])
    return -torch.min(ratio * batch.advantages, clipped * batch.advantages).sum()


def causal_lm_loss(
    logits: torch.Tensor, batch: TokenBatch, name: str, options: Mapping[str, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, per-token log-probabilities of the targets) from a checked batch's logits."""
    logprobs = target_logprobs(logits, batch.targets)
    return token_loss(name, logprobs, batch, options), logprobs
