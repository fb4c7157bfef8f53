"""LoRA adapters over a shared frozen base: PEFT's arithmetic, one run's tensors, no base copy.

The base lives once in memory (bases.py). `attach(base)` puts one forward hook on each of its
linear layers (nn.Linear, transformers' Conv1D); a hook adds the adapter that is active in the
calling thread (`with adapter.applied(): base(...)`), else nothing. The active adapter is a
ContextVar, so concurrent runs on one base never see each other's tensors. Initialisation,
scaling and forward are PEFT's (peft/tuners/lora/layer.py, 0.21.2), to the bit:
  per target, in named_modules order, from torch.manual_seed(seed):
    lora_A = nn.Linear(in, r, bias=False); lora_B = nn.Linear(r, out, bias=False)
    kaiming_uniform_(lora_A.weight, a=sqrt(5)); zeros_(lora_B.weight)
  forward: out = base(x) + lora_B(lora_A(dropout(x))) * (alpha / r)
Why not peft itself: docs/adapters.md.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional

from gradserve.errors import InvalidArgumentError

ALL_LINEAR = "all-linear"
FIELD = "lora"
# Bound on what one adapter may ask for before anything is allocated.
MAX_RANK = 1024


class ActiveAdapters(Protocol):
    """What a hook asks of the active adapter: one LoraAdapter, or a cross-run batch's
    adapters over row segments (server/models/batched_lora.py)."""

    base_id: int

    def added(self, name: str, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor | None:
        """The layer `name`'s output with the adapter(s) added, None to leave it as it is."""
        ...


_ACTIVE: ContextVar[ActiveAdapters | None] = ContextVar("gradserve_active_lora", default=None)
# Set on a base whose linear layers carry the hook (a base is attached once).
_ATTACHED_ATTRIBUTE = "_gradserve_lora_hooks"


@dataclass(frozen=True)
class LoraConfig:
    """One run's adapter: rank, alpha, target modules (names or ALL_LINEAR), dropout, seed."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...] | str = ALL_LINEAR
    dropout: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= MAX_RANK:
            raise InvalidArgumentError(
                f"lora.rank: {self.rank} is not in [1, {MAX_RANK}]", field="lora.rank"
            )
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise InvalidArgumentError(
                f"lora.alpha: {self.alpha} must be finite and > 0", field="lora.alpha"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidArgumentError(
                f"lora.dropout: {self.dropout} is not in [0, 1)", field="lora.dropout"
            )
        targets = self.target_modules
        if isinstance(targets, str) and targets != ALL_LINEAR:
            raise InvalidArgumentError(
                f"lora.target_modules: {targets!r}: give module names or {ALL_LINEAR!r}",
                field="lora.target_modules",
            )
        if not isinstance(targets, str) and (not targets or any(not t for t in targets)):
            raise InvalidArgumentError(
                "lora.target_modules: empty (give module names or 'all-linear')",
                field="lora.target_modules",
            )

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


@functools.cache
def _conv1d_class() -> type[nn.Module] | None:
    """transformers' Conv1D (GPT-2's projections: weight [in, out]) when the extra is there."""
    try:
        from transformers.pytorch_utils import Conv1D  # noqa: PLC0415 (optional extra)
    except ImportError:
        return None
    return Conv1D  # type: ignore[no-any-return]


def linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a layer LoRA can adapt, else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    conv1d = _conv1d_class()
    if conv1d is not None and isinstance(module, conv1d):
        rows, columns = module.get_parameter("weight").shape  # [in, out]: nn.Linear's transposed
        return int(rows), int(columns)
    return None


def _output_layer(base: nn.Module) -> nn.Module | None:
    getter = getattr(base, "get_output_embeddings", None)
    return getter() if callable(getter) else None


def resolve_targets(base: nn.Module, config: LoraConfig) -> list[tuple[str, int, int]]:
    """(module name, in, out) of each targeted layer, in named_modules order, as PEFT picks
    them: a name matches a module whose full name is it or ends with '.' + it; ALL_LINEAR is
    every linear layer but a language model's output layer."""
    output_layer = _output_layer(base)
    chosen: list[tuple[str, int, int]] = []
    matched: set[str] = set()
    for name, module in base.named_modules():
        if not name:
            continue
        if isinstance(config.target_modules, str):
            hit = module is not output_layer and linear_shape(module) is not None
        else:
            hits = [t for t in config.target_modules if name == t or name.endswith("." + t)]
            matched.update(hits)
            hit = bool(hits)
        if not hit:
            continue
        shape = linear_shape(module)
        if shape is None:
            raise InvalidArgumentError(
                f"lora.target_modules: {name} is a {type(module).__name__}, not a linear layer",
                field="lora.target_modules",
            )
        chosen.append((name, *shape))
    missing = (
        []
        if isinstance(config.target_modules, str)
        else sorted(set(config.target_modules) - matched)
    )
    if missing or not chosen:
        raise InvalidArgumentError(
            f"lora.target_modules: no linear layer of the base matches {missing or 'any'}",
            field="lora.target_modules",
        )
    return chosen


class LoraAdapter(nn.Module):
    """One run's adapter: lora_A [r, in] and lora_B [out, r] per targeted module of one base.

    An nn.Module whose parameters and state are the adapter's only, under PEFT's names
    (`base_model.model.<module>.lora_A.weight`), so the machinery of full runs (optimizers,
    checkpoints, digests, forks) carries adapter runs unchanged. The base is referenced, never
    a submodule: not in parameters() or state_dict(), not moved by .to(), shared by deepcopy.
    forward(inputs) is the base's forward with this adapter applied."""

    base: nn.Module

    def __init__(
        self,
        base: nn.Module,
        config: LoraConfig,
        tensors: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        # Plain attributes, outside the module tree: while an adapter lives, id(base) is its base's.
        object.__setattr__(self, "base", base)
        self.base_id = id(base)
        self.causal_lm = callable(getattr(base, "get_output_embeddings", None))
        targets = resolve_targets(base, config)
        if tensors is None:
            tensors = _initial_tensors(targets, config)
        for name, in_features, out_features in targets:
            a, b = tensors[name]
            if a.shape != (config.rank, in_features) or b.shape != (out_features, config.rank):
                raise InvalidArgumentError(
                    f"lora: {name} needs lora_A [{config.rank}, {in_features}] and lora_B "
                    f"[{out_features}, {config.rank}], got {list(a.shape)} and {list(b.shape)}",
                    field="lora",
                )
        device = _device_of(base)
        self.lora_a: dict[str, nn.Parameter] = {}
        self.lora_b: dict[str, nn.Parameter] = {}
        self.base_model = nn.Module()
        self.base_model.model = nn.Module()
        for name, _, _ in targets:
            a, b = tensors[name]
            leaf = _container(self.base_model.model, name)
            # float32 whatever the base's dtype: peft's autocast_adapter_dtype does the same.
            for kind, tensor, table in (("lora_A", a, self.lora_a), ("lora_B", b, self.lora_b)):
                holder = nn.Module()
                holder.weight = nn.Parameter(tensor.detach().to(device, torch.float32).clone())
                leaf.add_module(kind, holder)
                table[name] = holder.weight
        attach(base)

    def __deepcopy__(self, memo: dict[int, Any]) -> LoraAdapter:
        """A copy with its own tensors over the same base (a base is never copied)."""
        memo[id(self.base)] = self.base
        duplicate = self.__class__.__new__(self.__class__)
        memo[id(self)] = duplicate
        for key, value in self.__dict__.items():
            object.__setattr__(duplicate, key, copy.deepcopy(value, memo))
        return duplicate

    @property
    def module_names(self) -> list[str]:
        return list(self.lora_a)

    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def forward(
        self, inputs: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The base's output with this adapter: a causal LM's logits [B, T, V]."""
        with self.applied():
            if not self.causal_lm:
                return self.base(inputs)  # type: ignore[no-any-return]
            return self.base(input_ids=inputs, attention_mask=attention_mask).logits  # type: ignore[no-any-return]

    def applied(self) -> contextlib.AbstractContextManager[None]:
        """Within it, forwards of the base in this thread (and its context) add this adapter."""
        return activated(self)

    def added(self, name: str, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor | None:
        """The hook's answer: this adapter's delta where it targets `name`."""
        return self.delta(name, inputs, outputs) if name in self.lora_a else None

    def delta(self, name: str, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """PEFT's lora.Linear.forward after the base layer, for one module."""
        a = self.lora_a[name]
        x = inputs if inputs.dtype == a.dtype else inputs.to(a.dtype)
        if self.config.dropout > 0:
            x = functional.dropout(x, self.config.dropout, self.training)
        added = outputs + functional.linear(functional.linear(x, a), self.lora_b[name]) * (
            self.config.scaling
        )
        return added.to(outputs.dtype)


@contextlib.contextmanager
def activated(active: ActiveAdapters) -> Iterator[None]:
    """Within it, forwards of its base in this thread (and its context) add `active`."""
    token = _ACTIVE.set(active)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _container(root: nn.Module, path: str) -> nn.Module:
    """The module at `path` under root, made of empty modules where missing."""
    node = root
    for part in path.split("."):
        child = node._modules.get(part)
        if child is None:
            child = nn.Module()
            node.add_module(part, child)
        node = child
    return node


def _device_of(base: nn.Module) -> torch.device:
    first = next(base.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _initial_tensors(
    targets: Sequence[tuple[str, int, int]], config: LoraConfig
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """PEFT's draws, in its order, from the seed (on CPU, as peft creates them, then moved);
    the process's own generator is left as it was."""
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for name, in_features, out_features in targets:
            # The two constructors draw their own default init first, as peft's do.
            lora_a = nn.Linear(in_features, config.rank, bias=False)
            lora_b = nn.Linear(config.rank, out_features, bias=False)
            nn.init.kaiming_uniform_(lora_a.weight, a=math.sqrt(5))
            nn.init.zeros_(lora_b.weight)
            tensors[name] = (lora_a.weight.data, lora_b.weight.data)
    return tensors


def _hook(base_id: int, name: str) -> Any:
    def add_active_adapter(
        module: nn.Module, args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        active = _ACTIVE.get()
        # An adapter active while another base runs (same module names) adds nothing there.
        if active is None or active.base_id != base_id:
            return None
        return active.added(name, args[0], output)

    return add_active_adapter


def attach(base: nn.Module) -> None:
    """Put the adapter hook on every linear layer of the base, once per base."""
    if getattr(base, _ATTACHED_ATTRIBUTE, False):
        return
    for name, module in base.named_modules():
        if name and linear_shape(module) is not None:
            module.register_forward_hook(_hook(id(base), name))
    # A plain attribute: nn.Module.__setattr__ keeps it out of the state (and the digest).
    object.__setattr__(base, _ATTACHED_ATTRIBUTE, True)
