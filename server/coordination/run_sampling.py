"""Sample for one run (ServedRun.sample, docs/sampling.md): the checks before the work, and
the engine over a copy of the run's weights or of one of its checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from gradserve.errors import FailedPreconditionError
from gradserve.sampling_types import SamplingEvent, SamplingParams

from ..checkpoints.files import Checkpointer
from ..checkpoints.sampling_weights import weights_for_sampling
from ..config import SamplingLimits
from ..models.sampling import causal_lm_of, sample
from ..models.sampling_limits import check_request, shape_of
from ..store.parameter_store import ParameterStore


def request_bytes(
    store: ParameterStore,
    prompt: Sequence[int],
    params: SamplingParams,
    limits: SamplingLimits,
    checkpoint: str,
) -> int:
    """Refuse a request the run cannot serve or that is over a limit, naming the field; the
    bytes it holds while it runs (KV cache and the copy of the weights, twice for a named
    checkpoint: the copy and the checkpoint's tensors read into it)."""
    found = causal_lm_of(store.model.module)
    if found is None:
        raise FailedPreconditionError(
            f"run: its model {store.model.spec!r} is not a causal language model; "
            "Sample needs one (a transformers model or an adapter over one)",
            field="run",
        )
    model, _ = found
    element_bytes = next(model.parameters()).element_size()
    needed = check_request(prompt, params, shape_of(model.config, element_bytes), limits)
    return needed + store.parameter_bytes() * (2 if checkpoint else 1)


def sample_run(
    store: ParameterStore,
    checkpointer: Checkpointer | None,
    prompt: Sequence[int],
    params: SamplingParams,
    *,
    cancelled: Callable[[], bool],
    checkpoint: str,
) -> tuple[int, Iterator[SamplingEvent]]:
    """(the version sampled, the engine's events): the tokens all come from that version,
    whatever training does meanwhile."""
    version, module = weights_for_sampling(store, checkpointer, checkpoint)
    found = causal_lm_of(module)
    if found is None:  # request_bytes refused this model already
        raise FailedPreconditionError("run: not a causal language model", field="run")
    model, context = found
    return version, sample(model, prompt, params, context=context, cancelled=cancelled)
