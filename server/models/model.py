"""What a served model is: its module, its loss, the batches it accepts; the losses by name.

Each model states the batch it accepts (dtype and per-sample shape of inputs and targets), and
`check_batch` enforces it with errors that name the field. Specs are parsed into models in
model_specs.py (the one parser), networks in networks.py; nothing here is a client's code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from gradserve.codec import torch_dtype_name
from gradserve.errors import InvalidArgumentError

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mean_squared_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # The seed's own expression (not functional.mse_loss) so that results are bitwise the seed's.
    return ((prediction - target) ** 2).mean()


def kl_divergence(log_prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # "batchmean" is the KL divergence; torch's default "mean" divides by every element.
    return functional.kl_div(log_prediction, target, reduction="batchmean")


@dataclass(frozen=True)
class Loss:
    name: str
    function: LossFunction
    # Class-index targets (int64, one per sample) or float targets shaped like the output.
    class_targets: bool


LOSSES: dict[str, Loss] = {
    "mse": Loss("mse", mean_squared_error, class_targets=False),
    "l1": Loss("l1", functional.l1_loss, class_targets=False),
    "huber": Loss("huber", functional.huber_loss, class_targets=False),
    "bce_with_logits": Loss(
        "bce_with_logits", functional.binary_cross_entropy_with_logits, class_targets=False
    ),
    "cross_entropy": Loss("cross_entropy", functional.cross_entropy, class_targets=True),
    # The rest of server/models/losses.py's names, with their default options, for --loss too.
    "smooth_l1": Loss("smooth_l1", functional.smooth_l1_loss, class_targets=False),
    "nll": Loss("nll", functional.nll_loss, class_targets=True),
    "kl_div": Loss("kl_div", kl_divergence, class_targets=False),
}


@dataclass(frozen=True)
class BatchSpec:
    """What one batch tensor must be: dtype and the shape of one sample (after the batch dim)."""

    dtype: torch.dtype
    sample_shape: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (-1, *self.sample_shape)


@dataclass(frozen=True)
class Model:
    name: str
    spec: str
    module: nn.Module
    loss: Loss
    input: BatchSpec
    target: BatchSpec
    # Number of classes for class-index targets (their valid range is [0, num_classes)).
    num_classes: int | None = None
    # An adapter run's base (server/models/adapter_models.py) by name and digest; "" otherwise.
    base_model: str = ""
    base_model_digest: str = ""

    @property
    def tokens(self) -> bool:
        """Batches of token sequences [B, T] (adapter_models.TokenModel)."""
        return False

    def check_batch(
        self, inputs: torch.Tensor, targets: torch.Tensor | None, *, values: bool = True
    ) -> int:
        """Raise InvalidArgumentError naming the field unless the batch fits; return its size.
        `values=False` checks dtypes and shapes only: the caller checks the values of many
        batches at once with `values_fit` and, when that fails, checks each batch again."""
        batch_size = _check_tensor("inputs", inputs, self.input, values)
        if targets is None:
            return batch_size
        target_batch = _check_tensor("targets", targets, self.target, values)
        if target_batch != batch_size:
            raise InvalidArgumentError(
                f"targets.shape: batch of {target_batch}, but inputs has {batch_size}",
                field="targets.shape",
            )
        if (
            values
            and self.num_classes is not None
            and bool(((targets < 0) | (targets >= self.num_classes)).any())
        ):
            raise InvalidArgumentError(
                f"targets.data: class indices must be in [0, {self.num_classes})",
                field="targets.data",
            )
        return batch_size

    def values_fit(self, inputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> bool:
        """Whether every batch's values pass check_batch (finite floats, class indices in
        range), for batches whose dtypes and shapes it passed: a few reductions over all of
        them together instead of a few per batch. False says only that some batch fails."""
        for tensors, spec in ((inputs, self.input), (targets, self.target)):
            if not tensors or not spec.dtype.is_floating_point:
                continue
            if sum(t.numel() for t in tensors) > CONCATENATED_ELEMENTS:
                if not all_finite_tensors(tensors):  # a sum each: no copy of large batches
                    return False
            # Same dtype and sample shape (checked): they concatenate along the batch dim.
            elif not all_finite(tensors[0] if len(tensors) == 1 else torch.cat(list(tensors))):
                return False
        if self.num_classes is not None and targets:
            together = targets[0] if len(targets) == 1 else torch.cat(list(targets))
            low, high = torch.aminmax(together)
            if int(low) < 0 or int(high) >= self.num_classes:
                return False
        return True


def all_finite(tensor: torch.Tensor) -> bool:
    """No element is NaN or +-Inf, in one reduction for the common case: a sum of numbers with
    a NaN or an Inf among them is NaN or Inf whatever the order of the additions, so a finite
    sum proves every element finite. A sum that is not finite (a NaN or Inf, or finite values
    that overflow when added) is settled by the elementwise check. A sum reads each element
    once in its own dtype: cheaper than a float64 norm, which converts the tensor first."""
    if not tensor.is_floating_point() or not tensor.numel():
        return True
    if math.isfinite(_sum(tensor).item()):
        return True
    return bool(torch.isfinite(tensor).all())


def _sum(tensor: torch.Tensor) -> torch.Tensor:
    # Half-precision sums are kept in float32: 65504 is soon reached by finite values.
    return tensor.sum(dtype=torch.float32) if tensor.element_size() < 4 else tensor.sum()


# Below this many elements, copying tensors into one and reducing that once is cheaper than a
# reduction per tensor (measured on the seed model: 3.0 us against 4.5 us for two).
CONCATENATED_ELEMENTS = 1 << 16


def float64_norm(tensors: Sequence[torch.Tensor]) -> float:
    """The 2-norm of all elements of float32/16 `tensors` together, reduced in float64 (so it
    overflows only if an element is NaN or +-Inf): one reduction, no Python step per tensor."""
    if not tensors:
        return 0.0
    return float(float64_norm_tensor(tensors))


def float64_norm_tensor(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """float64_norm as a 0-d float64 tensor, not read back (a Train request reads all of its
    norms at once); `tensors` must not be empty."""
    if len(tensors) == 1:
        together = tensors[0]
    elif sum(t.numel() for t in tensors) <= CONCATENATED_ELEMENTS and (
        len({t.dtype for t in tensors}) == 1
    ):
        together = torch.cat([t if t.dim() == 1 else t.reshape(-1) for t in tensors])
    else:
        # torch's multi-tensor norm: one call for the list, then the norm of the norms.
        together = torch.stack(torch._foreach_norm(list(tensors), 2, dtype=torch.float64))
    norm: torch.Tensor = torch.linalg.vector_norm(together, dtype=torch.float64)
    return norm


def all_finite_tensors(tensors: Sequence[torch.Tensor]) -> bool:
    """all_finite over many tensors (gradients, parameters, optimizer state) in one sum for
    the common case; tensors that are not floating point are skipped."""
    floats = [t for t in tensors if t.is_floating_point() and t.numel()]
    if not floats:
        return True
    if len(floats) == 1:
        total = _sum(floats[0])
    elif sum(t.numel() for t in floats) <= CONCATENATED_ELEMENTS and (
        len({t.dtype for t in floats}) == 1
    ):
        total = _sum(torch.cat([t if t.dim() == 1 else t.reshape(-1) for t in floats]))
    else:
        sums = torch.stack([_sum(t) for t in floats])  # promoted to the widest dtype
        total = sums.sum(dtype=torch.float64)
    if math.isfinite(total.item()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in floats)


def _check_tensor(field: str, tensor: torch.Tensor, spec: BatchSpec, values: bool = True) -> int:
    if tensor.dtype != spec.dtype:
        raise InvalidArgumentError(
            f"{field}.dtype: {torch_dtype_name(tensor.dtype)}, expected {torch_dtype_name(spec.dtype)}",
            field=f"{field}.dtype",
        )
    shape = tuple(tensor.shape)
    if len(shape) != 1 + len(spec.sample_shape) or shape[1:] != spec.sample_shape:
        expected = ["N", *spec.sample_shape]
        raise InvalidArgumentError(
            f"{field}.shape: {list(shape)}, expected [{', '.join(map(str, expected))}]",
            field=f"{field}.shape",
        )
    if shape[0] == 0:
        raise InvalidArgumentError(f"{field}.shape: the batch is empty", field=f"{field}.shape")
    if values and tensor.is_floating_point() and not all_finite(tensor):
        raise InvalidArgumentError(f"{field}.data: contains NaN or Inf", field=f"{field}.data")
    return shape[0]


class LinearRegression(nn.Module):
    """The seed's model: y_hat = w * x + b with w, b of shape (1,)."""

    def __init__(self) -> None:
        super().__init__()
        # Drawn in the seed's order: w from randn, b zeros.
        self.w = nn.Parameter(torch.randn(1))
        self.b = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x + self.b


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
}
