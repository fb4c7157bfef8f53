"""Losses a batch names for itself (LossSpec), their options, and per-example weights.

A request that names no loss and sends no weights never comes here: it takes the run's loss
(models.py) on the store's hot path. Otherwise `prepare` checks the batch against the named
loss (targets as that loss needs them, options in range, weights [N] finite and >= 0) and
returns the function of (outputs, targets) the store calls in place of the run's loss. The
exact torch expressions are in docs/losses.md; tests compare against them bitwise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch.nn import functional

from gradserve.codec import torch_dtype_name
from gradserve.errors import InvalidArgumentError
from gradserve.token_types import TokenBatchLoss
from gradserve.types import (
    BatchLoss,
    LossInfo,
    LossSpec,
    TensorSpec,
    TrainStep,
    WeightedReduction,
)

from .adapter_models import TokenLossFunction, TokenModel
from .model import BatchSpec, LossFunction, Model, all_finite, mean_squared_error
from .token_losses import OPTIONS as TOKEN_OPTIONS

Options = Mapping[str, float]
# (outputs, targets, options, reduction) -> the loss, reduced ("mean"/"batchmean") or "none".
Expression = Callable[[torch.Tensor, torch.Tensor, Options, str], torch.Tensor]


def _nonnegative(value: float) -> bool:
    return value >= 0


def _positive(value: float) -> bool:
    return value > 0


def _unit(value: float) -> bool:
    return 0 <= value <= 1


def _integer(value: float) -> bool:
    return value == int(value) and abs(value) < 2**62


def _flag(value: float) -> bool:
    return value in (0, 1)


@dataclass(frozen=True)
class Option:
    default: float
    valid: Callable[[float], bool]
    expected: str


@dataclass(frozen=True)
class NamedLoss:
    name: str
    expression: Expression
    class_targets: bool
    options: Mapping[str, Option] = dataclasses.field(default_factory=dict)
    # How an example's elementwise losses become its one loss: mean, or sum for kl_div (so
    # that the unweighted loss, "batchmean", is the mean of the examples' losses).
    per_example: str = "mean"


def _mse(o: torch.Tensor, t: torch.Tensor, _: Options, reduction: str) -> torch.Tensor:
    return mean_squared_error(o, t) if reduction == "mean" else (o - t) ** 2


def _l1(o: torch.Tensor, t: torch.Tensor, _: Options, reduction: str) -> torch.Tensor:
    return functional.l1_loss(o, t, reduction=reduction)


def _smooth_l1(o: torch.Tensor, t: torch.Tensor, opt: Options, reduction: str) -> torch.Tensor:
    return functional.smooth_l1_loss(o, t, reduction=reduction, beta=opt["beta"])


def _huber(o: torch.Tensor, t: torch.Tensor, opt: Options, reduction: str) -> torch.Tensor:
    return functional.huber_loss(o, t, reduction=reduction, delta=opt["delta"])


def _cross_entropy(o: torch.Tensor, t: torch.Tensor, opt: Options, reduction: str) -> torch.Tensor:
    return functional.cross_entropy(
        o,
        t,
        reduction=reduction,
        label_smoothing=opt["label_smoothing"],
        ignore_index=int(opt["ignore_index"]),
    )


def _nll(o: torch.Tensor, t: torch.Tensor, _: Options, reduction: str) -> torch.Tensor:
    return functional.nll_loss(o, t, reduction=reduction)


def _bce(o: torch.Tensor, t: torch.Tensor, opt: Options, reduction: str) -> torch.Tensor:
    pos_weight = opt.get("pos_weight")
    weight = (
        None if pos_weight is None else torch.tensor(pos_weight, dtype=o.dtype, device=o.device)
    )
    return functional.binary_cross_entropy_with_logits(o, t, reduction=reduction, pos_weight=weight)


def _kl_div(o: torch.Tensor, t: torch.Tensor, opt: Options, reduction: str) -> torch.Tensor:
    reduction = "batchmean" if reduction == "mean" else reduction
    return functional.kl_div(o, t, reduction=reduction, log_target=bool(opt["log_target"]))


NAMED: dict[str, NamedLoss] = {
    loss.name: loss
    for loss in (
        NamedLoss("mse", _mse, class_targets=False),
        NamedLoss("l1", _l1, class_targets=False),
        NamedLoss("smooth_l1", _smooth_l1, False, {"beta": Option(1.0, _nonnegative, ">= 0")}),
        NamedLoss("huber", _huber, False, {"delta": Option(1.0, _positive, "> 0")}),
        NamedLoss(
            "cross_entropy",
            _cross_entropy,
            True,
            {
                "label_smoothing": Option(0.0, _unit, "in [0, 1]"),
                "ignore_index": Option(-100.0, _integer, "an integer"),
            },
        ),
        NamedLoss("nll", _nll, class_targets=True),
        # pos_weight has no default: unset, torch's None (every positive weighs 1).
        NamedLoss(
            "bce_with_logits", _bce, False, {"pos_weight": Option(math.nan, _nonnegative, ">= 0")}
        ),
        NamedLoss("kl_div", _kl_div, False, {"log_target": Option(0.0, _flag, "0 or 1")}, "sum"),
    )
}


def output_shape(model: Model) -> tuple[int, ...]:
    """The shape of one sample's outputs (the model's loss targets tell it)."""
    if model.num_classes is not None:
        return (model.num_classes,)
    return model.target.sample_shape


def output_dtype(model: Model) -> torch.dtype:
    return model.target.dtype if model.target.dtype.is_floating_point else torch.float32


def target_spec(model: Model, loss: NamedLoss) -> BatchSpec | None:
    """What this loss needs as targets for this model; None when the model cannot take it."""
    shape = output_shape(model)
    if loss.class_targets:
        return BatchSpec(torch.int64, ()) if len(shape) == 1 else None
    return BatchSpec(output_dtype(model), shape)


def available(model: Model) -> tuple[LossInfo, ...]:
    """The losses GetModelInfo lists for this model (for token models, the token losses with
    int64 [B, T] targets, docs/adapters.md)."""
    if model.tokens:
        tokens = TensorSpec("targets", torch.int64, (-1, -1))
        return tuple(LossInfo(name, tokens, tuple(TOKEN_OPTIONS[name])) for name in TOKEN_OPTIONS)
    infos = []
    for loss in NAMED.values():
        spec = target_spec(model, loss)
        if spec is not None:
            target = TensorSpec("targets", spec.dtype, spec.shape)
            infos.append(LossInfo(loss.name, target, tuple(loss.options)))
    return tuple(infos)


def _options(loss: NamedLoss, given: Options) -> dict[str, float]:
    for key, value in given.items():
        rule = loss.options.get(key)
        if rule is None:
            known = ", ".join(loss.options) or "none"
            raise InvalidArgumentError(
                f"loss.options: {loss.name} has no option {key[:40]!r} (options: {known})",
                field=f"loss.options.{key[:40]}",
            )
        if not math.isfinite(value) or not rule.valid(value):
            raise InvalidArgumentError(
                f"loss.options.{key}: {value}, expected {rule.expected}",
                field=f"loss.options.{key}",
            )
    chosen = {
        key: rule.default for key, rule in loss.options.items() if math.isfinite(rule.default)
    }
    chosen.update(given)
    return chosen


def _named(model: Model, spec: LossSpec | None) -> tuple[NamedLoss, BatchSpec, dict[str, float]]:
    name = model.loss.name if spec is None else spec.name
    if model.tokens:
        raise InvalidArgumentError(
            "loss: a token model (an adapter run over a language model) takes its run's token "
            "loss, summed over tokens; per-batch losses and weights are not offered yet",
            field="loss.name",
        )
    loss = NAMED.get(name)
    if loss is None:
        raise InvalidArgumentError(
            f"loss.name: unknown loss {name[:40]!r}; known: {', '.join(NAMED)}", field="loss.name"
        )
    target = target_spec(model, loss)
    if target is None:
        raise InvalidArgumentError(
            f"loss.name: {name} needs one score per class, but the model's outputs are "
            f"{list(output_shape(model))} per sample",
            field="loss.name",
        )
    return loss, target, _options(loss, {} if spec is None else spec.options)


def _check_targets(
    model: Model,
    loss: NamedLoss,
    target: BatchSpec,
    options: Options,
    batch: tuple[torch.Tensor, torch.Tensor],
) -> int:
    inputs, targets = batch
    checked = dataclasses.replace(model, target=target, num_classes=None)
    batch_size = checked.check_batch(inputs, targets)
    if loss.class_targets:
        classes = output_shape(model)[0]
        bad = (targets < 0) | (targets >= classes)
        if "ignore_index" in options:
            bad &= targets != int(options["ignore_index"])
        if bool(bad.any()):
            raise InvalidArgumentError(
                f"targets.data: class indices must be in [0, {classes})", field="targets.data"
            )
    return batch_size


def _check_weights(weights: torch.Tensor, batch_size: int, dtype: torch.dtype) -> None:
    if weights.dtype != dtype:
        raise InvalidArgumentError(
            f"sample_weights.dtype: {torch_dtype_name(weights.dtype)}, expected "
            f"{torch_dtype_name(dtype)} (the model's outputs)",
            field="sample_weights.dtype",
        )
    if tuple(weights.shape) != (batch_size,):
        raise InvalidArgumentError(
            f"sample_weights.shape: {list(weights.shape)}, expected [{batch_size}] (one per example)",
            field="sample_weights.shape",
        )
    if not all_finite(weights) or bool((weights < 0).any()):
        raise InvalidArgumentError(
            "sample_weights.data: weights must be finite and >= 0", field="sample_weights.data"
        )


def answered_logprobs(function: LossFunction | None) -> torch.Tensor | None:
    """A token loss's per-token log-probabilities of its last batch (None for other losses)."""
    if isinstance(function, TokenLossFunction):
        return function.last_logprobs()
    return None


def logprobs_choice(model: Model, choice: BatchLoss | None) -> BatchLoss:
    """A batch's loss that answers per-token log-probabilities: its own token loss, or token
    cross_entropy with weights 1 (the run's default, the same arithmetic) when it chose none."""
    if not model.tokens:
        raise InvalidArgumentError(
            "return_logprobs: only adapter runs over a language model answer per-token "
            "log-probabilities",
            field="return_logprobs",
        )
    return choice if choice is not None else BatchLoss(loss=LossSpec("cross_entropy"))


def forward_loss(
    function: LossFunction, logits: torch.Tensor, targets: torch.Tensor
) -> tuple[float, torch.Tensor | None]:
    """A forward-only batch's loss (no graph) and, for token losses, its per-token logprobs."""
    with torch.no_grad():
        loss = function(logits, targets.to(logits.device))
    return float(loss), answered_logprobs(function)


def prepare(
    model: Model, inputs: torch.Tensor, targets: torch.Tensor, choice: BatchLoss
) -> tuple[int, LossFunction]:
    """Check a batch that chose its own loss or weights; its size and its loss function."""
    if isinstance(model, TokenModel):  # token losses and per-token tensors: docs/adapters.md
        return model.batch_loss_function(inputs, targets, choice)
    if isinstance(choice, TokenBatchLoss):  # per-token tensors are never ignored
        sent = [
            name
            for name in ("logprobs", "advantages", "attention_mask")
            if getattr(choice, name) is not None
        ]
        raise InvalidArgumentError(
            f"{sent[0]}: only adapter runs over a language model take per-token tensors",
            field=sent[0],
        )
    loss, target, options = _named(model, choice.loss)
    batch_size = _check_targets(model, loss, target, options, (inputs, targets))
    weights, reduction = choice.sample_weights, choice.weighted_reduction
    if weights is None:
        if reduction is not None:
            raise InvalidArgumentError(
                "weighted_reduction: set, but the request has no sample_weights",
                field="weighted_reduction",
            )
        return batch_size, lambda outputs, targets: loss.expression(
            outputs, targets, options, "mean"
        )
    if reduction is None:
        raise InvalidArgumentError(
            "weighted_reduction: required with sample_weights (SUM, MEAN or NORMALIZED; "
            "docs/losses.md): the server never picks a normalisation for you",
            field="weighted_reduction",
        )
    _check_weights(weights, batch_size, output_dtype(model))
    if reduction is WeightedReduction.NORMALIZED and not bool((weights > 0).any()):
        raise InvalidArgumentError(
            "sample_weights.data: all weights are 0, so NORMALIZED divides by 0",
            field="sample_weights.data",
        )
    return batch_size, _weighted(loss, options, weights, reduction)


def _weighted(
    loss: NamedLoss, options: Options, weights: torch.Tensor, reduction: WeightedReduction
) -> LossFunction:
    def function(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        w = weights.to(outputs.device)
        per = loss.expression(outputs, targets, options, "none")
        if per.dim() > 1:
            per = per.flatten(1).sum(1) if loss.per_example == "sum" else per.flatten(1).mean(1)
        total = (per * w).sum()
        if reduction is WeightedReduction.MEAN:
            return total / per.shape[0]
        if reduction is WeightedReduction.NORMALIZED:
            return total / w.sum()
        return total

    return function


def checked_batch_size(
    model: Model, inputs: torch.Tensor, targets: torch.Tensor, choice: BatchLoss | None
) -> int:
    """The batch's size, checked against its own loss when it chose one, else the run's."""
    if choice is None:
        return model.check_batch(inputs, targets)
    return prepare(model, inputs, targets, choice)[0]


def batch_loss_function(model: Model, step: TrainStep, index: int) -> LossFunction | None:
    """The loss function of a Train step's batch; None: the run's (checked by check_steps)."""
    choice = step.batch_losses[index] if step.batch_losses else None
    if choice is None:
        return None
    inputs, targets = step.batches[index]
    return prepare(model, inputs, targets, choice)[1]
