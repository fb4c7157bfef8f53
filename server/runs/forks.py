"""Forks: CreateRun with from_checkpoint, a new run started from a checkpoint of a run the
caller may read.

The fork is built from the source run's model, loss and optimizer (a request may leave them
empty; given, they must be the source's), then gets the checkpoint's parameters and buffers,
and its optimizer state when asked, at the checkpoint's version with nothing accumulated.
It is saved at once, so a restart brings the fork back as forked, not freshly drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gradserve.errors import InvalidArgumentError, NotFoundError
from gradserve.run_types import RunRequest

from ..checkpoints.checks import ModelLayout
from ..checkpoints.files import read_for_load
from ..checkpoints.names import check_checkpoint_name, find
from .lifecycle import Run, RunSpec
from .names import DEFAULT_RUN, check_run_name
from .principals import Principal
from .registry import RunRegistry

FIELD = "from_checkpoint"


def parse_reference(reference: str) -> tuple[str, str]:
    """ "RUN/NAME" -> (RUN, NAME); "/NAME" is the default run's."""
    run, slash, name = reference.partition("/")
    if not slash:
        raise InvalidArgumentError(
            f'{FIELD}: {reference[:80]!r} is not RUN/NAME ("/NAME" for the default run)',
            field=FIELD,
        )
    if run != DEFAULT_RUN:
        check_run_name(run, field=FIELD)
    check_checkpoint_name(name, field=FIELD, new=False)
    return run, name


def _must_match(field: str, given: str, allowed: tuple[str | None, ...]) -> None:
    if given and given not in allowed:
        raise InvalidArgumentError(
            f"{field}: {given[:80]!r}, but the checkpoint's run has {allowed[0]!r}; a fork "
            f"keeps its source's {field} (leave it empty)",
            field=field,
        )


def fork_plan(
    request: RunRequest, runs: RunRegistry, principal: Principal
) -> tuple[RunSpec, Callable[[Run], None]]:
    """The new run's spec and the hook that loads the checkpoint into it."""
    source_name, checkpoint = parse_reference(request.from_checkpoint)
    directory = runs.checkpoint_directory(source_name, principal)
    try:
        folder = find(directory, checkpoint, field=FIELD)
    except NotFoundError:
        raise NotFoundError(
            f"{FIELD}: run {source_name!r} has no checkpoint {checkpoint!r}", field=FIELD
        ) from None
    source = runs.run(source_name, principal).spec
    _must_match("model", request.model, (source.model,))
    _must_match("optimizer", request.optimizer, (source.optimizer,))
    _must_match("loss", request.loss, (source.loss, None if source.loss else request.loss))
    seed = request.seed if request.seed is not None else source.seed
    _must_match("base_model", request.base_model, (source.base_model,))
    if request.lora is not None:
        raise InvalidArgumentError(
            "lora: a fork keeps its source's adapter (leave it unset)", field="lora"
        )
    # An adapter run's fork keeps its base and adapter settings (the seed in them included:
    # the model spec the checkpoint is checked against names it); the checkpoint's tensors
    # replace the adapter's initial ones.
    spec = RunSpec(
        model=source.model,
        loss=source.loss,
        optimizer=source.optimizer,
        seed=seed,
        base_model=source.base_model,
        lora=source.lora,
    )
    return spec, _loader(folder.path, request.loss, request.with_optimizer_state)


def _loader(path: Path, loss: str, with_optimizer_state: bool) -> Callable[[Run], None]:
    def fork(run: Run) -> None:
        assert run.served is not None
        store = run.served.store
        if loss and store.info().loss != loss:
            # The source used its model's default loss; a given one must be that default.
            raise InvalidArgumentError(
                f"loss: {loss[:80]!r}, but the checkpoint's run uses {store.info().loss!r}",
                field="loss",
            )
        state = read_for_load(path, ModelLayout.of(store), FIELD)
        store.fork_state(state, with_optimizer_state=with_optimizer_state)
        if run.checkpointer is not None:
            run.checkpointer.save()

    return fork
