"""Training runs: every client's own model, optimizer, version, accumulator and checkpoints.

A Run is what one server process used to be: a ParameterStore (with its own lock and
request-id window), its ServedRun (what every RPC of the run calls), and its checkpoint folder. The RunRegistry holds them by
name. The default run ("") is built at start from the server's flags, exactly as before runs
existed; clients create others (CreateRun) from models in the operator's registry — the spec
grammar, registered factories, `file:NAME` for NAME.json in --model-dir — never from code.

Ownership: a run belongs to the principal that created it (server/runs/principals.py); any other
principal gets NOT_FOUND for it, as if it did not exist, unless it is an admin. Limits:
--max-runs, a byte budget over the parameters of loaded runs, and an idle policy that
checkpoints and unloads a run, then loads it back on its next call (server/runs/lifecycle.py).

Checkpoint folders: the default run's is --checkpoint-dir itself (as before runs); run NAME's
is <checkpoint-dir>/runs/NAME/, beside its run.json (owner and spec), so runs come back at
start.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gradserve.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
    ResourceExhaustedError,
)
from gradserve.types import RunDetails, RunSummary

from ..checkpoints.names import summaries
from ..coordination.served_run import ServedRun
from ..models.adapter_models import BaseRegistry
from .lifecycle import Run, RunBuilder, RunSpec
from .names import DEFAULT_RUN, check_run_name
from .principals import Principal

# Create requests remembered for retries (request_id -> run name).
CREATE_WINDOW = 1024


class RunRegistry:
    """Runs by name, safe to call from many threads. Loading a run (building its model,
    reading its checkpoint) happens under that run's own lock: two runs never wait for each
    other, and the registry's lock is held only for dictionary work."""

    def __init__(self, builder: RunBuilder) -> None:
        self._builder = builder
        self.config = builder.config.runs
        self._lock = threading.Lock()
        self._runs: dict[str, Run] = {}
        self._created: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._stopping = threading.Event()
        self._idle_thread: threading.Thread | None = None

    # -- start and stop ------------------------------------------------------------------

    def start(self, default: Run) -> None:
        """Register the default run and every run found in the checkpoint directory (left
        unloaded: each loads on its first call)."""
        self._runs[DEFAULT_RUN] = default
        self._builder.metrics.runs.set_function(lambda: len(self._runs))
        for run in self._builder.saved_runs():
            self._runs[run.name] = run
        if self.config.idle_seconds is not None and self._idle_thread is None:
            self._idle_thread = threading.Thread(
                target=self._unload_idle, name="gradserve-idle-runs", daemon=True
            )
            self._idle_thread.start()

    def close(self) -> bool:
        """Stop the idle watcher; save and stop every loaded run's checkpointer. False when
        a final checkpoint could not be written."""
        self._stopping.set()
        if self._idle_thread is not None:
            self._idle_thread.join()
        with self._lock:
            runs = list(self._runs.values())
        return all([run.close() for run in runs])

    # -- lookup --------------------------------------------------------------------------

    @contextmanager
    def use(self, name: str, principal: Principal) -> Iterator[ServedRun]:
        """The run's ServedRun for the length of one call (a stream's whole life), the run
        loaded first if it was unloaded: a run in use is never unloaded."""
        run = self._visible(name, principal)
        with run.using(lambda: self._reserve(run.parameter_bytes, exclude=run)) as served:
            yield served

    def run(self, name: str, principal: Principal) -> Run:
        return self._visible(name, principal)

    @property
    def bases(self) -> BaseRegistry:
        """The operator's bases (--base-model), for adapter runs."""
        return self._builder.bases

    def checkpoint_directory(self, name: str, principal: Principal) -> Path | None:
        """Where the checkpoints of a run the principal may read live (NOT_FOUND for a run
        it may not see); None without --checkpoint-dir. The run need not be loaded."""
        self._visible(name, principal)
        return self._builder.directory(name)

    def _visible(self, name: str, principal: Principal) -> Run:
        run = self._runs.get(name)
        if run is None or not self._may_use(run, principal):
            if name != DEFAULT_RUN:
                check_run_name(name)
            raise NotFoundError(f"run: no run {name!r}", field="run")
        return run

    def _may_use(self, run: Run, principal: Principal) -> bool:
        if principal.admin:
            return True
        if run.name == DEFAULT_RUN:
            return self.config.default_run_access == "all"
        return run.owner == principal.name

    def list(self, principal: Principal) -> list[RunSummary]:
        with self._lock:
            runs = sorted(self._runs.values(), key=lambda run: run.name)
        return [_summary(run, self.bases) for run in runs if self._may_use(run, principal)]

    def details(self, run: Run, datasets: int, dataset_bytes: int) -> RunDetails:
        """GetRun's answer for a run the caller may see (`run` from run()), without loading
        it: its checkpoints are counted on disk."""
        directory = self._builder.directory(run.name)
        checkpoints = len(summaries(directory)) if directory is not None else 0
        return RunDetails(
            _summary(run, self.bases),
            owner=run.owner,
            base_model=run.spec.base_model,
            checkpoints=checkpoints,
            datasets=datasets,
            dataset_bytes=dataset_bytes,
            loss=run.spec.loss or "",
        )

    # -- create and delete ---------------------------------------------------------------

    def create(
        self,
        name: str,
        spec: RunSpec,
        principal: Principal,
        *,
        request_id: str = "",
        fork: Callable[[Run], None] | None = None,
    ) -> Run:
        """Build and register a run; `fork` loads the state it starts from into it (a
        refused fork registers nothing)."""
        if request_id:
            with self._lock:
                earlier = self._created.get(request_id)
            if earlier is not None and earlier[1] == principal.name:
                return self._visible(earlier[0], principal)
        if name:
            check_run_name(name)
        else:
            name = f"run-{uuid.uuid4().hex[:12]}"
        with self._lock:
            if name in self._runs:
                raise AlreadyExistsError(f"run: {name!r} exists", field="run")
            if len(self._runs) >= self.config.max_runs:
                raise ResourceExhaustedError(
                    f"max_runs: this server holds at most {self.config.max_runs} runs",
                    field="max_runs",
                )
            placeholder = Run.placeholder(name, principal.name)
            self._runs[name] = placeholder  # the name is taken while the model is built
        try:
            # A new run starts from its spec, not from checkpoints a deleted run of the same
            # name left in its folder (DeleteRun without delete_checkpoints keeps them).
            run = self._builder.build(name, principal.name, spec, restore=False)
            self._reserve(run.parameter_bytes, exclude=placeholder)
            if fork is not None:
                fork(run)
            self._builder.persist(run)
        except BaseException:
            with self._lock:
                self._runs.pop(name, None)
            raise
        with self._lock:
            self._runs[name] = run
            if request_id:
                self._created[request_id] = (name, principal.name)
                while len(self._created) > CREATE_WINDOW:
                    self._created.popitem(last=False)
        return run

    def delete(self, name: str, principal: Principal, *, delete_checkpoints: bool) -> int:
        run = self._visible(name, principal)
        if name == DEFAULT_RUN:
            raise FailedPreconditionError("run: the default run cannot be deleted", field="run")
        with self._lock:
            self._runs.pop(name, None)
        run.discard()
        self._builder.metrics.forget_run(name)
        return self._builder.remove(run, delete_checkpoints=delete_checkpoints)

    # -- limits and idle runs --------------------------------------------------------------

    def _reserve(self, parameter_bytes: int, *, exclude: Run) -> None:
        with self._lock:
            loaded = sum(
                run.parameter_bytes
                for run in self._runs.values()
                if run is not exclude and run.served is not None
            )
        budget = self.config.max_parameter_bytes
        if loaded + parameter_bytes > budget:
            raise ResourceExhaustedError(
                f"max_run_parameter_bytes: {parameter_bytes} more bytes of parameters would "
                f"pass the budget of {budget} ({loaded} loaded)",
                field="max_run_parameter_bytes",
            )

    def _unload_idle(self) -> None:
        assert self.config.idle_seconds is not None
        interval = min(1.0, self.config.idle_seconds / 4)
        while not self._stopping.wait(interval):
            deadline = time.monotonic() - self.config.idle_seconds
            with self._lock:
                idle = [
                    run
                    for run in self._runs.values()
                    if run.name != DEFAULT_RUN and run.served is not None
                    and run.last_used < deadline
                ]  # fmt: skip
            for run in idle:
                run.unload_if_idle(deadline)


def _summary(run: Run, bases: BaseRegistry) -> RunSummary:
    return RunSummary(
        run.name,
        run.model_spec,
        run.optimizer_description,
        run.version,
        run.served is not None,
        run.parameter_bytes,
        run.spec.base_model,
        bases.digest_of(run.spec.base_model),
    )
