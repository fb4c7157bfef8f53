"""Adapter runs' models: a base's LoRA adapter served as a Model, over token batches for LMs.

An adapter run's module is its LoraAdapter: the adapter's tensors only, the base shared. For a
causal LM base its batches are token sequences (inputs and targets int64 [B, T], any T up to
the bound, ids in the vocabulary) and its loss is token cross-entropy summed over tokens
(token_losses.py); for a registry-spec base, the spec model's batches and loss. The run
machinery (stores, optimizers, checkpoints, forks, digests) then sees an ordinary Model whose
state is the adapter alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from gradserve.errors import InvalidArgumentError
from gradserve.token_types import TokenBatchLoss
from gradserve.types import BatchLoss, WeightedReduction

from .bases import Base, load_base
from .lora import LoraAdapter, LoraConfig, resolve_targets
from .model import BatchSpec, Loss, LossFunction, Model
from .token_losses import (
    MAX_LOGITS_BYTES,
    MAX_SEQUENCE_LENGTH,
    TokenBatch,
    check_options,
    check_reduction,
    check_token_batch,
    target_logprobs,
    token_loss,
)


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of -log p(target) over every token of the batch (token_losses' cross_entropy, weights 1)."""
    return -target_logprobs(logits, targets).sum()


TOKEN_CROSS_ENTROPY = Loss("cross_entropy", token_cross_entropy, class_targets=True)


@dataclass(frozen=True)
class TokenLossFunction:
    """A checked token batch's own loss as the store calls it, (logits, targets) -> loss;
    `attention_mask` is what model.forward_of gives the forward."""

    name: str
    batch: TokenBatch
    options: Mapping[str, float]
    reduction: WeightedReduction = WeightedReduction.SUM
    # The targets' log-probabilities of each call, detached: the answer's per-token logprobs
    # come from the forward that made the gradients, not from a second one.
    seen: list[torch.Tensor] = field(default_factory=list, compare=False)

    @property
    def attention_mask(self) -> torch.Tensor | None:
        return self.batch.attention_mask

    def last_logprobs(self) -> torch.Tensor | None:
        """The per-token log-probabilities [B, T] of the last call, on the CPU."""
        return self.seen[-1].cpu() if self.seen else None

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        def on(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(logits.device)

        batch = self.batch
        placed = TokenBatch(
            batch.inputs, targets, None, on(batch.weights), on(batch.logprobs), on(batch.advantages)
        )
        logprobs = target_logprobs(logits, targets)
        self.seen[:] = [logprobs.detach()]
        return token_loss(self.name, logprobs, placed, self.options, self.reduction)


@dataclass(frozen=True)
class TokenModel(Model):
    """A causal LM's adapter: batches of token ids [B, T]; num_classes is the vocabulary."""

    max_sequence_length: int = MAX_SEQUENCE_LENGTH
    max_logits_bytes: int = MAX_LOGITS_BYTES

    @property
    def tokens(self) -> bool:
        return True

    def check_batch(
        self, inputs: torch.Tensor, targets: torch.Tensor | None, *, values: bool = True
    ) -> int:
        batch = TokenBatch(inputs, inputs if targets is None else targets)
        check_token_batch(
            batch,
            "cross_entropy",
            self.num_classes or 0,
            max_sequence_length=self.max_sequence_length,
            max_logits_bytes=self.max_logits_bytes,
            values=values,
        )
        return int(inputs.shape[0])

    def batch_loss_function(
        self, inputs: torch.Tensor, targets: torch.Tensor, choice: BatchLoss
    ) -> tuple[int, LossFunction]:
        """A batch's own token loss (docs/adapters.md), every check before any forward: its
        size and the function of (logits, targets) the store calls instead of the run's."""
        name = "cross_entropy" if choice.loss is None else choice.loss.name
        options = check_options(name, {} if choice.loss is None else choice.loss.options)
        extra = choice if isinstance(choice, TokenBatchLoss) else TokenBatchLoss()
        batch = TokenBatch(
            inputs,
            targets,
            attention_mask=extra.attention_mask,
            weights=choice.sample_weights,
            logprobs=extra.logprobs,
            advantages=extra.advantages,
        )
        check_token_batch(
            batch,
            name,
            self.num_classes or 0,
            max_sequence_length=self.max_sequence_length,
            max_logits_bytes=self.max_logits_bytes,
            weights_field="sample_weights",
        )
        reduction = check_reduction(choice.weighted_reduction, batch)
        return int(inputs.shape[0]), TokenLossFunction(name, batch, options, reduction)

    def values_fit(self, inputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> bool:
        vocab = self.num_classes or 0
        for tensor in (*inputs, *targets):
            if tensor.numel() and (int(tensor.min()) < 0 or int(tensor.max()) >= vocab):
                return False
        return True


# An adapter's tensors are float32 whatever the base's dtype (lora.py, as peft's).
ADAPTER_ELEMENT_BYTES = 4


def adapter_bytes(base: Base, lora: LoraConfig) -> int:
    """Bytes of the adapter's lora_A [r, in] and lora_B [out, r] over every targeted module,
    from the base's module shapes alone: nothing is allocated to know it."""
    targets = resolve_targets(base.module, lora)
    return sum(lora.rank * (inputs + outputs) for _, inputs, outputs in targets) * (
        ADAPTER_ELEMENT_BYTES
    )


def lora_spec(base: Base, lora: LoraConfig) -> str:
    """The run's model spec as GetModelInfo shows it: the base by name and digest, and the
    adapter's settings. Checkpoints compare it whole, so a checkpoint made over another base
    (other tensors under the same name) is refused rather than loaded onto the wrong base."""
    targets = (
        lora.target_modules
        if isinstance(lora.target_modules, str)
        else "+".join(lora.target_modules)
    )
    return (
        f"lora:{base.name}:base_sha256={base.digest}:rank={lora.rank}:alpha={lora.alpha:g}:targets={targets}"
        f":dropout={lora.dropout:g}:seed={lora.seed}"
    )


def adapter_model(
    base: Base,
    lora: LoraConfig,
    tensors: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> Model:
    """A run's model: a new adapter (from lora.seed, or the given tensors) over `base`."""
    adapter = LoraAdapter(base.module, lora, tensors)
    spec = lora_spec(base, lora)
    if base.served is not None:
        return dataclasses.replace(
            base.served,
            name="lora",
            spec=spec,
            module=adapter,
            base_model=base.name,
            base_model_digest=base.digest,
        )
    if base.vocab_size is None:
        raise InvalidArgumentError(
            f"base_model {base.name}: not a servable base", field="base_model"
        )
    tokens = BatchSpec(torch.int64, (-1,))
    return TokenModel(
        name="lora",
        spec=spec,
        module=adapter,
        loss=TOKEN_CROSS_ENTROPY,
        input=tokens,
        target=tokens,
        num_classes=base.vocab_size,
        base_model=base.name,
        base_model_digest=base.digest,
    )


class BaseRegistry:
    """The operator's bases by name, each loaded once (`--base-model NAME=DIR|SPEC`)."""

    def __init__(self, bases: Mapping[str, Base]) -> None:
        self._bases = dict(bases)

    @classmethod
    def load(
        cls,
        entries: Sequence[str],
        device: torch.device | None = None,
        factories: Sequence[str] = (),
    ) -> BaseRegistry:
        bases: dict[str, Base] = {}
        for entry in entries:
            base = load_base(entry, device, factories)
            if base.name in bases:
                raise InvalidArgumentError(
                    f"base_model: {base.name!r} is named twice", field="base_model"
                )
            bases[base.name] = base
        return cls(bases)

    def names(self) -> list[str]:
        return sorted(self._bases)

    def digest_of(self, name: str) -> str:
        """The digest of a base by name; "" for "" (a full model) or an unknown name."""
        base = self._bases.get(name)
        return "" if base is None else base.digest

    def get(self, name: str) -> Base:
        base = self._bases.get(name)
        if base is None:
            known = ", ".join(self.names()) or "none (the server has no --base-model)"
            raise InvalidArgumentError(
                f"base_model: no base {name[:80]!r}; known: {known}", field="base_model"
            )
        return base
