"""The plain types both sides use: reductions, losses, results, model info, train steps, the graph.

No protobuf and no gRPC here: `gradserve.serde` converts these to and from the wire, the
server's domain objects return them, and `GradientClient` hands them to its callers. Tensors are
torch tensors on the CPU unless a field says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

import torch

# Field metadata read by the server's request-id fingerprints (server/store/request_ids.py).
FINGERPRINT_OMITTED_AT_DEFAULT = "omitted_at_default"  # left out while at its default
FINGERPRINT_STANDS_IN_FOR = "stands_in_for"  # its non-None items replace the named field's


class Reduction(Enum):
    """How an update combines the accumulated gradients of several batches."""

    # PyTorch's `.grad` after several backward() calls: the sum over batches.
    SUM = "sum"
    # The sum divided by the number of accumulated batches.
    MEAN = "mean"

    @classmethod
    def parse(cls, value: str | Reduction) -> Reduction:
        """ "sum" or "mean" (or a Reduction); anything else raises ValueError, never SUM."""
        if isinstance(value, Reduction):
            return value
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(repr(member.value) for member in cls)
            raise ValueError(f"reduction: {value!r}, expected one of {choices}") from None


class WeightedReduction(Enum):
    """How per-example losses l_i with weights w_i combine into a batch's loss (docs/losses.md)."""

    # sum_i w_i * l_i
    SUM = "sum"
    # sum_i w_i * l_i / N
    MEAN = "mean"
    # sum_i w_i * l_i / sum_i w_i
    NORMALIZED = "normalized"

    @classmethod
    def parse(cls, value: str | WeightedReduction) -> WeightedReduction:
        """ "sum", "mean" or "normalized" (or a WeightedReduction); anything else raises ValueError."""
        if isinstance(value, WeightedReduction):
            return value
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(repr(member.value) for member in cls)
            raise ValueError(f"weighted_reduction: {value!r}, expected one of {choices}") from None


@dataclass(frozen=True)
class LossSpec:
    """A loss by name with its options ("huber", {"delta": 0.5}); docs/losses.md lists them."""

    name: str
    options: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchLoss:
    """One batch's own loss: a named loss overriding the run's (None: the run's), and
    optional per-example weights with the reduction they need."""

    loss: LossSpec | None = None
    sample_weights: torch.Tensor | None = None
    weighted_reduction: WeightedReduction | None = None


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's name, dtype and shape; -1 in a shape is any size (the batch dimension)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """What a run holds (GetModelInfo): its model, parameters, input and target specs, loss,
    optimizer, version, what is accumulated, and the server's limits."""

    model: str
    model_spec: str
    parameters: tuple[TensorSpec, ...]
    parameter_count: int
    input: TensorSpec
    target: TensorSpec
    loss: str
    optimizer: str
    model_version: int
    accumulated_batches: int
    accumulated_samples: int
    # The server's limits: elements of one batch tensor, bytes of one message.
    max_batch_elements: int = 0
    max_message_bytes: int = 0
    # The run this describes ("" for the default run).
    run: str = ""
    # Buffers (batch norm's running statistics), in the model's order.
    buffers: tuple[TensorSpec, ...] = ()
    # The losses a batch may name, with the targets each needs.
    losses: tuple[LossInfo, ...] = ()
    # Bytes of datasets the server can take now (0: none, or no datasets).
    dataset_bytes_available: int = 0
    # An adapter run's base model and the SHA-256 of its tensors ("" for a full model).
    base_model: str = ""
    base_model_digest: str = ""


@dataclass(frozen=True)
class LossInfo:
    """A loss the model accepts: its name, the targets it needs, the options it takes."""

    name: str
    target: TensorSpec
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OutputsResult:
    """ComputeOutputs' answer: the outputs of a training-mode forward pass kept under `handle`."""

    handle: str
    outputs: torch.Tensor
    model_version: int
    expires_in_seconds: float
    batch_size: int
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class GradientResult:
    """ComputeGradients' answer: the batch's loss and size, what is accumulated now, the
    version the loss was computed at, and the batch's own gradients when asked for."""

    loss: float
    batch_size: int
    accumulated_batches: int
    accumulated_samples: int
    model_version: int
    # This batch's own gradients by parameter name; empty unless asked for.
    gradients: Mapping[str, torch.Tensor] = field(default_factory=dict)
    # Server side: the answer was replayed for a repeated request_id (metrics only).
    replayed: bool = False
    # A token batch's per-token log-probabilities of its targets [B, T] (token losses only).
    logprobs: torch.Tensor | None = None


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """ApplyUpdate's answer: the new version, the batches and samples applied, and the
    gradient norm (before clipping)."""

    model_version: int
    applied_batches: int
    applied_samples: int
    # Total L2 norm of the gradients after the reduction, before any clipping.
    gradient_norm: float
    replayed: bool = False
    # True when the update's max_grad_norm scaled the gradients down.
    clipped: bool = False


@dataclass(frozen=True)
class EvaluationResult:
    """Evaluate's answer: the loss (with targets) and the predictions, under no_grad in
    eval mode."""

    # None when the request had no targets.
    loss: float | None
    batch_size: int
    model_version: int
    predictions: torch.Tensor | None
    # A token model's log p(target) per token [B, T], when asked (server side: EvaluateResponse
    # carries them in its own field).
    logprobs: torch.Tensor | None = None


@dataclass(frozen=True)
class DiscardResult:
    """DiscardGradients' answer: how many accumulated batches were dropped."""

    discarded_batches: int
    model_version: int


@dataclass(frozen=True, slots=True)
class SetResult:
    """SetParameters' (and UploadParameters') answer: the new version."""

    model_version: int
    replayed: bool = False


@dataclass(frozen=True)
class TrainStep:
    """Batches to accumulate, then optionally an update (one step of the Train stream)."""

    batches: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    apply_update: bool = False
    learning_rate: float = 0.0
    reduction: Reduction = Reduction.SUM
    expected_version: int | None = None
    # This step's update only: optimizer hyperparameters by name ("momentum", "beta1", ...)
    # overriding the run's, and the total gradient norm to clip to (None: no clipping).
    hyperparameters: Mapping[str, float] = field(default_factory=dict)
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        # Sorted by name, so that equal steps compare and fingerprint alike.
        if self.hyperparameters:
            ordered = dict(sorted(self.hyperparameters.items()))
            object.__setattr__(self, "hyperparameters", ordered)

    # Per batch, its own loss (None: the run's); empty: every batch uses the run's.
    batch_losses: tuple[BatchLoss | None, ...] = ()
    # Batches named by dataset samples, after `batches` (servers resolve them into `batches`;
    # request-id fingerprints leave the field out when empty, as before it existed).
    dataset_batches: tuple[DatasetBatch, ...] = field(
        default=(), metadata={FINGERPRINT_OMITTED_AT_DEFAULT: True}
    )
    # Server side, per batch of `batches`: the dataset samples it was gathered from (None: sent
    # inline); empty when every batch was inline. A request id's fingerprint takes these in
    # place of the gathered tensors: naming the same samples is the same payload, and hashing
    # a 200 KB gathered batch cost a tenth of an MLP step.
    named_as: tuple[DatasetBatch | None, ...] = field(
        default=(), metadata={FINGERPRINT_STANDS_IN_FOR: "batches"}
    )
    # The seed of the random ops (dropout) of this step's forward passes: batch j draws from
    # torch.manual_seed(seed + j) (docs/randomness.md); None: the server's own generator.
    seed: int | None = field(default=None, metadata={FINGERPRINT_OMITTED_AT_DEFAULT: True})

    @classmethod
    def of(
        cls,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        learning_rate: float | None = None,
        reduction: str | Reduction = Reduction.SUM,
        expected_version: int | None = None,
        *,
        hyperparameters: Mapping[str, float] | None = None,
        max_grad_norm: float | None = None,
        seed: int | None = None,
    ) -> TrainStep:
        """A step that updates when learning_rate is given (the client's shorthand)."""
        return cls(
            batches=tuple((inputs, targets) for inputs, targets in batches),
            apply_update=learning_rate is not None,
            learning_rate=learning_rate or 0.0,
            reduction=Reduction.parse(reduction),
            expected_version=expected_version,
            hyperparameters=dict(hyperparameters or {}),
            max_grad_norm=max_grad_norm,
            seed=seed,
        )


@dataclass(frozen=True)
class DatasetBatch:
    """A batch named by samples of a dataset uploaded to the run: `indices` in that order, or
    when they are empty the contiguous samples [start, start + count)."""

    dataset: str
    indices: tuple[int, ...] = ()
    start: int = 0
    count: int = 0


@dataclass(frozen=True)
class DatasetSummary:
    """One dataset a run holds (UploadDataset's answer, ListDatasets)."""

    name: str
    samples: int
    inputs: TensorSpec
    targets: TensorSpec
    bytes: int
    digest: str
    # UploadDataset only: the run held this content already; the upload replaced another.
    unchanged: bool = False
    replaced: bool = False


@dataclass(frozen=True)
class DeclaredTensor:
    """A tensor an upload declares before its bytes: the wire dtype (a gradserve.v1.DataType
    value, checked where the model is known) and the full shape, both as sent."""

    dtype: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DatasetUploadHeader:
    """The first UploadDataset message without its bytes: which dataset, of what shape."""

    run: str
    name: str
    inputs: DeclaredTensor
    targets: DeclaredTensor
    replace: bool = False
    # The content's digest as the client computed it ("" when not sent).
    digest: str = ""


@dataclass(frozen=True, slots=True)
class StepResult:
    """One Train step's answer: its batches' losses, the version after it, and whether
    (and with how many batches) it applied an update."""

    losses: tuple[float, ...]
    model_version: int
    accumulated_batches: int
    applied: bool = False
    applied_batches: int = 0
    gradient_norm: float = 0.0
    clipped: bool = False


@dataclass(frozen=True, slots=True)
class TrainResult:
    """The answers of one Train request, one StepResult per step."""

    steps: tuple[StepResult, ...]
    replayed: bool = False
