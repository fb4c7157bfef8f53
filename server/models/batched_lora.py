"""Cross-run batches on one base: many adapter runs' token batches in one forward and one backward.

Each member brings its adapter, its batch and its loss. Members whose sequences have the same
length (and the same kind of attention mask) are stacked along the batch dimension and go
through the base in one forward, the hooks adding each member's adapter to its own rows
(`SegmentedAdapters`: one gathered LoRA product per member and layer, PEFT's arithmetic of
lora.py on the member's row slice). Each member's loss is computed on its own rows, and one
backward of all the losses gives each member the gradients of its own adapter: adapters are
disjoint parameters, the base is frozen, and no op of a causal LM mixes rows, so the gradient
of one member's loss reaches no other member's parameters.

Why groups by length rather than one padded forward: measured on the tiny Llama (CPU), equal
lengths stacked are bitwise each member alone at K = 2..16, while right-padding to a common
length with a mask moves gradients by up to 4.6e-7 relative (the masked attention takes
another kernel than the unmasked causal one): a run's results would then depend on another
run's lengths. Callers check every member before (token_losses.py); a member whose loss is
not finite only gets its own non-finite gradients, which its store refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .lora import LoraAdapter, activated
from .model import LossFunction

Gradients = tuple[torch.Tensor | None, ...]


@dataclass(frozen=True)
class MemberBatch:
    """One run's part of a cross-run batch: its adapter over the shared base, the adapter's
    parameters in the run's order, a checked token batch on the base's device and its loss."""

    adapter: LoraAdapter
    parameters: Sequence[nn.Parameter]
    inputs: torch.Tensor
    targets: torch.Tensor
    attention_mask: torch.Tensor | None
    loss: LossFunction

    @property
    def group(self) -> tuple[int, torch.dtype | None]:
        """Members that share a forward: the same sequence length and kind of mask."""
        mask = self.attention_mask
        return int(self.inputs.shape[1]), None if mask is None else mask.dtype


class SegmentedAdapters:
    """The active adapters of a stacked forward: rows [start, end) are one member's."""

    def __init__(self, base_id: int, segments: Sequence[tuple[LoraAdapter, int, int]]) -> None:
        self.base_id = base_id
        self.segments = list(segments)
        self.sizes = [end - start for _, start, end in self.segments]

    def added(self, name: str, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor | None:
        if not any(name in adapter.lora_a for adapter, _, _ in self.segments):
            return None
        # One split rather than a slice per member: a slice's backward fills a zero tensor
        # of the whole batch per member (K^2 work; 40% of a K = 16 step), a split's is one cat.
        parts = []
        own_inputs = torch.split(inputs, self.sizes)
        own_outputs = torch.split(outputs, self.sizes)
        for (adapter, _, _), x, out in zip(self.segments, own_inputs, own_outputs, strict=True):
            # The same delta a member alone computes, on its own (contiguous) rows.
            own = adapter.added(name, x, out)
            parts.append(out if own is None else own)
        return torch.cat(parts)


def forward_groups(members: Sequence[MemberBatch]) -> list[list[int]]:
    """Indices of the members by shared forward, in the order their groups first appear."""
    groups: dict[tuple[int, torch.dtype | None], list[int]] = {}
    for index, member in enumerate(members):
        groups.setdefault(member.group, []).append(index)
    return list(groups.values())


def batched_gradients(
    base: nn.Module, members: Sequence[MemberBatch]
) -> tuple[list[float], list[Gradients], int]:
    """(each member's loss, each member's gradients aligned with its parameters, the number
    of forwards made). Nothing is added to any .grad: each run adds its own, checked."""
    losses: list[torch.Tensor | None] = [None] * len(members)
    groups = forward_groups(members)
    for group in groups:
        segments, rows = [], 0
        for index in group:
            member = members[index]
            if not member.adapter.training:  # as accumulation.batch_gradients does
                member.adapter.train()
            segments.append((member.adapter, rows, rows + int(member.inputs.shape[0])))
            rows += int(member.inputs.shape[0])
        inputs = torch.cat([members[i].inputs for i in group])
        masks = [members[i].attention_mask for i in group]
        mask = None if masks[0] is None else torch.cat([m for m in masks if m is not None])
        with activated(SegmentedAdapters(id(base), segments)):
            logits = base(input_ids=inputs, attention_mask=mask).logits
        own_logits = logits.split([end - start for _, start, end in segments])
        for index, logits_of_member in zip(group, own_logits, strict=True):
            losses[index] = members[index].loss(logits_of_member, members[index].targets)
    computed = [loss for loss in losses if loss is not None]
    parameters = [p for member in members for p in member.parameters]
    flat = torch.autograd.grad(computed, parameters, allow_unused=True)
    gradients: list[Gradients] = []
    offset = 0
    for member in members:
        count = len(member.parameters)
        gradients.append(tuple(flat[offset : offset + count]))
        offset += count
    values = [float(v) for v in torch.stack([loss.detach() for loss in computed]).tolist()]
    return values, gradients, len(groups)
