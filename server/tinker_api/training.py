"""Tinker's training verbs on a run's ServedRun: forward_backward, forward and optim_step.

Each datum of a forward_backward is one token batch [1, T] through ServedRun.compute_gradients
with the call's loss: the gradients add up in the run's accumulator exactly as the same
ComputeGradients calls over gRPC would, and each answers its targets' log-probabilities from
the same forward. optim_step is ApplyUpdate with the reduction SUM (Tinker's losses are sums)
and every AdamParams field: the learning rate, beta1, beta2, eps and the (decoupled) weight
decay as this step's AdamW settings, grad_clip_norm > 0 as max_grad_norm. Its metrics answer
the gradient norm before clipping on every step, clipping or not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from gradserve.errors import InvalidArgumentError
from gradserve.token_types import TokenBatchLoss
from gradserve.types import LossSpec

from ..coordination.token_forward import token_forward
from ..runs.principals import Principal
from ..runs.registry import RunRegistry
from .errors import bad_field
from .models import run_name_of
from .wire import ForwardBackwardCall, forward_backward_output_to_proto

SERVED_LOSSES = ("cross_entropy", "importance_sampling", "ppo")
ADAM_FIELDS = ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm")
ADAM_DEFAULTS = {"beta1": 0.9, "beta2": 0.95, "eps": 1e-12, "weight_decay": 0.0}


def check_loss(call: ForwardBackwardCall) -> None:
    """Refuse at submission, naming the loss, what no run here computes."""
    if call.loss_fn not in SERVED_LOSSES:
        raise bad_field(
            "loss_fn",
            f"{call.loss_fn[:80]!r} is not served by gradserve; served: {', '.join(SERVED_LOSSES)}",
        )


def forward_backward(runs: RunRegistry, principal: Principal, call: ForwardBackwardCall) -> bytes:
    """ForwardBackwardOutput (protobuf): per datum its `logprobs`, and `loss:sum`."""
    loss = LossSpec(call.loss_fn, dict(call.loss_fn_config))
    logprobs: list[torch.Tensor] = []
    total = 0.0
    with runs.use(run_name_of(call.model_id), principal) as served:
        if not served.store.model.tokens:
            raise InvalidArgumentError(
                f"model_id: {call.model_id[:80]!r} is not an adapter run over a language model",
                field="model_id",
            )
        for datum in call.data:
            choice = TokenBatchLoss(
                loss=loss,
                sample_weights=datum.per_token.get("weights"),
                logprobs=datum.per_token.get("logprobs"),
                advantages=datum.per_token.get("advantages"),
            )
            if call.forward_only:
                value, answered = token_forward(served, datum.inputs, datum.targets, choice)
            else:
                result = served.compute_gradients(datum.inputs, datum.targets, batch_loss=choice)
                value, answered = result.loss, result.logprobs
            assert answered is not None  # token losses answer them
            total += value
            logprobs.append(answered[0])
    return forward_backward_output_to_proto(logprobs, {"loss:sum": total})


def adam_params(body: Mapping[str, Any]) -> dict[str, float]:
    """AdamParams from an optim_step body (`adam_params`, or the SDK's other spellings)."""
    params = body.get("adam_params") or body.get("optim_params") or body.get("optimizer_params")
    if not isinstance(params, dict):
        raise bad_field("adam_params", "an AdamParams object is needed")
    kind = params.get("type", "adam")
    if kind not in ("adam", "adamw"):
        raise bad_field("adam_params.type", f"{str(kind)[:40]!r}: only Adam is served")
    unknown = sorted(set(params) - set(ADAM_FIELDS) - {"type"})
    if unknown:
        raise bad_field(f"adam_params.{unknown[0][:40]}", "not an AdamParams field")
    values = {"learning_rate": 1e-4, **ADAM_DEFAULTS, "grad_clip_norm": 0.0}
    for key in ADAM_FIELDS:
        value = params.get(key, values[key])
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise bad_field(f"adam_params.{key}", f"{value!r} is not a number")
        values[key] = float(value)
    return values


def optim_step(
    runs: RunRegistry, principal: Principal, model_id: str, params: Mapping[str, float]
) -> dict[str, Any]:
    clip = params["grad_clip_norm"]
    with runs.use(run_name_of(model_id), principal) as served:
        result = served.apply_update(
            params["learning_rate"],
            hyperparameters={key: params[key] for key in ADAM_DEFAULTS},
            max_grad_norm=clip if clip > 0 else None,
        )
    return {
        "metrics": {
            "grad_norm": result.gradient_norm,
            "grad_clipped": 1.0 if result.clipped else 0.0,
            "model_version": float(result.model_version),
        }
    }
