"""The store's calls that are not training steps: evaluation, reading and writing parameters
and buffers, model info, and the autograd graph of one batch.

Owned by ParameterStore (parameter_store.py), which delegates these calls to it; it reads and
writes the store's LiveState (live_state.py), and every method takes the store's lock for what
it reads or changes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from gradserve.graph_types import GraphDescription
from gradserve.types import (
    DiscardResult,
    EvaluationResult,
    ModelInfo,
    SetResult,
    TensorSpec,
)

from ..models.graph import effective_max_nodes
from ..models.graph_trace import trace_graph
from ..models.losses import available
from ..models.token_losses import target_logprobs
from ..tracing import traced
from .live_state import LiveState
from .parameter_access import check_names, check_values
from .request_ids import check_request_id

T = TypeVar("T")


class ModelAccess:
    """Reads, writes and descriptions of one store's LiveState. `drop_gradients` is the
    store's (under data parallelism it reaches every rank): SetParameters drops them."""

    def __init__(self, state: LiveState, drop_gradients: Callable[[], None]) -> None:
        self._state = state
        self._drop_gradients = drop_gradients

    def discard_gradients(self) -> DiscardResult:
        state = self._state
        with state.lock:
            discarded = state.accumulated_batches
            self._drop_gradients()
            return DiscardResult(discarded_batches=discarded, model_version=state.version)

    def parameter_bytes(self) -> int:
        """Bytes of the model's parameters and buffers (what a run costs in memory)."""
        module = self._state.model.module
        tensors = [*module.parameters(), *module.buffers()]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)

    def copy_for_sampling(self) -> tuple[int, torch.nn.Module]:
        """(version, a copy of the module) taken under the lock: a sampling call reads only its
        copy, so training goes on meanwhile and every token comes from that one version. An
        adapter run's copy is its adapter (lora.py's deepcopy shares the frozen base)."""
        with self._state.lock:
            return self._state.version, copy.deepcopy(self._state.model.module)

    @traced("gradserve.evaluate")
    def evaluate(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        *,
        return_predictions: bool = False,
        return_logprobs: bool = False,
    ) -> EvaluationResult:
        """`return_logprobs`: the targets' per-token log-probabilities of a token model,
        computed where the logits are (on a GPU only [B, T] floats come back, not [B, T, V])."""
        batch_size = self._state.model.check_batch(inputs, targets)
        inputs = inputs.to(self._state.device)
        targets = None if targets is None else targets.to(self._state.device)
        with self._state.lock, torch.no_grad():
            self._state.model.module.eval()
            predictions = self._state.model.module(inputs)
            loss = None
            if targets is not None:
                loss = self._state.model.loss.function(predictions, targets).item()
            logprobs = None
            if return_logprobs and targets is not None:
                logprobs = target_logprobs(predictions, targets).cpu()
            return EvaluationResult(
                loss,
                batch_size,
                self._state.version,
                predictions.cpu() if return_predictions else None,
                logprobs,
            )

    def read_parameters(
        self,
        names: Sequence[str],
        reader: Callable[[str, torch.Tensor], T],
        *,
        max_bytes: int | None = None,
        include_buffers: bool = False,
    ) -> tuple[int, list[T]]:
        """Call reader(name, value) for the named parameters or buffers (when names is empty:
        every parameter, then with `include_buffers` every buffer) under the lock, so a reader
        sees one version without copying; return (version, results). Names are checked, and
        with `max_bytes` the encoded size too, before anything is read."""
        default = self._state.tensors if include_buffers else self._state.named
        selected = check_names(self._state.tensors, names, max_bytes, default=list(default))
        with self._state.lock:
            return self._state.version, [
                reader(name, self._state.tensors[name].detach().cpu()) for name in selected
            ]

    @traced("gradserve.set_parameters")
    def set_parameters(
        self,
        values: Sequence[tuple[str, torch.Tensor]],
        *,
        expected_version: int | None = None,
        request_id: str = "",
        values_digest: str | None = None,
    ) -> SetResult:
        """`values_digest`: what stands for the values in the request-id check when the caller
        has it already (an upload's, taken as its chunks arrived: hashing 134 MB again here,
        under the lock, took 120 ms); by default the values themselves are hashed."""
        check_request_id(request_id)
        check_values(self._state.tensors, values)

        def run() -> SetResult:
            self._state.check_version(expected_version)
            with torch.no_grad():
                for name, value in values:
                    self._state.tensors[name].copy_(value)
            self._drop_gradients()
            self._state.version += 1
            return SetResult(model_version=self._state.version)

        with self._state.lock:
            return self._state.request_ids.remembered(
                "set_parameters",
                request_id,
                run,
                tuple(values) if values_digest is None else values_digest,
                expected_version,
            )

    def info(self) -> ModelInfo:
        model = self._state.model
        with self._state.lock:
            state = self._state
            version, batches, samples = (
                state.version,
                state.accumulated_batches,
                state.accumulated_samples,
            )
        return ModelInfo(
            model=model.name,
            model_spec=model.spec,
            parameters=tuple(
                TensorSpec(name, p.dtype, tuple(p.shape)) for name, p in self._state.named.items()
            ),
            parameter_count=sum(parameter.numel() for parameter in self._state.parameters),
            buffers=tuple(
                TensorSpec(name, b.dtype, tuple(b.shape)) for name, b in self._state.buffers.items()
            ),
            input=TensorSpec("inputs", model.input.dtype, model.input.shape),
            target=TensorSpec("targets", model.target.dtype, model.target.shape),
            loss=model.loss.name,
            losses=available(model),
            optimizer=self._state.optimizer.description,
            model_version=version,
            accumulated_batches=batches,
            accumulated_samples=samples,
            base_model=model.base_model,
            base_model_digest=model.base_model_digest,
        )

    def gradients(self) -> dict[str, torch.Tensor | None]:
        """A copy of the accumulated gradients (for tests and checkpoints)."""
        with self._state.lock:
            return {
                name: None if p.grad is None else p.grad.detach().to("cpu", copy=True)
                for name, p in self._state.named.items()
            }

    def describe_graph(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        max_nodes: int = 0,
        return_gradients: bool = False,
    ) -> GraphDescription:
        """The autograd graph ComputeGradients would build for this batch, changing nothing."""
        cap = effective_max_nodes(max_nodes)
        batch_size = self._state.model.check_batch(inputs, targets)
        with self._state.lock:
            graph = trace_graph(
                self._state.model,
                self._state.named,
                self._state.parameters,
                inputs,
                targets,
                max_nodes=cap,
                return_gradients=return_gradients,
            )
            return GraphDescription(graph, batch_size, self._state.version, cap)
