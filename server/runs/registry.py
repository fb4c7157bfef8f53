"""Training runs: every client's own model, optimizer, version, accumulator and checkpoints.

A Run is what one server process used to be: a ParameterStore (with its own lock and
request-id window), its ServedRun (what every RPC of the run calls), and its checkpoint
folder. The RunRegistry holds them by owner and name: run names are per principal, so alice's
`shared` and bob's `shared` are two runs, and no answer to one principal depends on another's
runs (docs/runs.md). The default run ("") is built at start from the server's flags, exactly
as before runs existed; clients create others (CreateRun) from models in the operator's
registry — the spec grammar, registered factories, `file:NAME` for NAME.json in --model-dir —
never from code.

Ownership: a run belongs to the principal that created it (server/runs/principals.py); any other
principal gets NOT_FOUND for it, as if it did not exist, unless it is an admin. Limits:
--max-runs, a byte budget over the parameters of loaded runs, and an idle policy that
checkpoints and unloads a run, then loads it back on its next call (server/runs/lifecycle.py).

Checkpoint folders: the default run's is --checkpoint-dir itself (as before runs); every other
run's is its incarnation's, <checkpoint-dir>/runs/<incarnation>/ (server/runs/folders.py), so a
run deleted and created again starts from nothing of the first. Deleted with its checkpoints
kept, a run stays its owner's as NAME@TAG (server/runs/names.py) until deleted with them.
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
from gradserve.run_types import RunDetails, RunSummary

from ..checkpoints.names import summaries
from ..coordination.served_run import ServedRun
from ..models.adapter_models import BaseRegistry
from .lifecycle import Run, RunBuilder, RunSpec
from .names import DEFAULT_RUN, check_run_name
from .principals import OWNER_METADATA, Principal

__all__ = ["DEFAULT_RUN", "RunRegistry", "check_run_name"]

# Create requests remembered for retries, per principal: (principal, request_id) -> run key.
CREATE_WINDOW = 1024
# A run's key: (owner, name); the default run's is ("", "").
RunKey = tuple[str, str]
DEFAULT_KEY: RunKey = ("", DEFAULT_RUN)


class RunRegistry:
    """Runs by owner and name, safe to call from many threads. Loading a run (building its
    model, reading its checkpoint) happens under that run's own lock: two runs never wait for
    each other, and the registry's lock is held only for dictionary work."""

    def __init__(self, builder: RunBuilder) -> None:
        self._builder = builder
        self.config = builder.config.runs
        self._lock = threading.Lock()
        self._runs: dict[RunKey, Run] = {}
        self._created: OrderedDict[tuple[str, str], RunKey] = OrderedDict()
        self._stopping = threading.Event()
        self._idle_thread: threading.Thread | None = None

    # -- start and stop ------------------------------------------------------------------

    def start(self, default: Run) -> None:
        """Register the default run and every run found in the checkpoint directory (left
        unloaded: each loads on its first call)."""
        self._runs[DEFAULT_KEY] = default
        self._builder.metrics.runs.set_function(lambda: len(self._runs))
        for run in self._builder.saved_runs():
            self._runs[(run.owner, run.name)] = run
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

        def reserve() -> None:
            # Measured from the spec, not from the size it had when loaded: a run found on
            # disk at start was never loaded here.
            self._reserve(run, self._builder.measure(run.name, run.spec))

        with run.using(reserve) as served:
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
        return self._builder.directory(self._visible(name, principal))

    def _visible(self, name: str, principal: Principal) -> Run:
        """The run `name` among the caller's (an admin's: among its gradserve-owner's, else
        its own, else the one principal's that has such a run); NOT_FOUND otherwise."""
        if name != DEFAULT_RUN:
            check_run_name(name)
        with self._lock:
            run = self._runs.get(DEFAULT_KEY if name == DEFAULT_RUN else (principal.runs_of, name))
            if run is None and principal.admin and not principal.acting_for:
                named = [r for (_, n), r in self._runs.items() if n == name]
                if len(named) > 1:
                    raise FailedPreconditionError(
                        f"run: {len(named)} principals have a run {name!r}; name its owner "
                        f"in {OWNER_METADATA} metadata",
                        field="run",
                    )
                run = named[0] if named else None
        if run is None or not self._may_use(run, principal):
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
            runs = sorted(self._runs.values(), key=lambda run: (run.name, run.owner))
        return [_summary(run, self.bases) for run in runs if self._may_use(run, principal)]

    def details(self, run: Run, datasets: int, dataset_bytes: int) -> RunDetails:
        """GetRun's answer for a run the caller may see (`run` from run()), without loading
        it: its checkpoints are counted on disk."""
        directory = self._builder.directory(run)
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
        """Build and register a run among the caller's; `fork` loads the state it starts from
        into it (a refused fork registers nothing)."""
        owner = principal.runs_of
        if request_id:
            with self._lock:
                earlier = self._created.get((principal.name, request_id))
                run = self._runs.get(earlier) if earlier is not None else None
            if earlier is not None:
                if run is None:
                    raise NotFoundError(f"run: no run {earlier[1]!r}", field="run")
                return run
        if name:
            check_run_name(name, new=True)
        else:
            name = f"run-{uuid.uuid4().hex[:12]}"
        key = (owner, name)
        with self._lock:
            if key in self._runs:
                raise AlreadyExistsError(f"run: {name!r} exists", field="run")
            live = sum(1 for run in self._runs.values() if not run.retired)
            if live >= self.config.max_runs:
                raise ResourceExhaustedError(
                    f"max_runs: this server holds at most {self.config.max_runs} runs",
                    field="max_runs",
                )
            placeholder = Run.placeholder(name, owner)
            self._runs[key] = placeholder  # the name is taken while the model is built
        built: Run | None = None
        try:
            # Reserved before the model exists: a refused spec allocates nothing, and
            # concurrent creates cannot pass the budget together.
            self._reserve(placeholder, self._builder.measure(name, spec))
            # A new incarnation: its own folder, so nothing a deleted run of the same name
            # left on disk reaches it.
            run = built = self._builder.build(name, owner, spec, restore=False)
            if fork is not None:
                fork(run)
            self._builder.persist(run)
        except BaseException:
            with self._lock:
                self._runs.pop(key, None)
            if built is not None:  # its checkpointer stops, and what it wrote goes with it
                built.discard()
                self._builder.metrics.forget_run(built.label)
                self._builder.remove(built, delete_checkpoints=True)
            raise
        with self._lock:
            self._runs[key] = run
            if request_id:
                self._created[(principal.name, request_id)] = key
                while len(self._created) > CREATE_WINDOW:
                    self._created.popitem(last=False)
        return run

    def delete(self, name: str, principal: Principal, *, delete_checkpoints: bool) -> int:
        """Remove a run; without delete_checkpoints its checkpoints stay its owner's as
        NAME@TAG (a deleted run's NAME@TAG goes only with delete_checkpoints)."""
        run = self._visible(name, principal)
        if name == DEFAULT_RUN:
            raise FailedPreconditionError("run: the default run cannot be deleted", field="run")
        if run.retired and not delete_checkpoints:
            raise FailedPreconditionError(
                f"run: {name!r} holds a deleted run's checkpoints; delete_checkpoints removes them",
                field="delete_checkpoints",
            )
        key = (run.owner, run.name)
        with self._lock:
            if self._runs.get(key) is not run:
                raise NotFoundError(f"run: no run {name!r}", field="run")
            del self._runs[key]
        run.discard()
        self._builder.metrics.forget_run(run.label)
        kept = self._builder.remove(run, delete_checkpoints=delete_checkpoints)
        if isinstance(kept, Run):
            with self._lock:
                self._runs[(kept.owner, kept.name)] = kept
            return 0
        return kept

    # -- limits and idle runs --------------------------------------------------------------

    def _reserve(self, run: Run, parameter_bytes: int) -> None:
        """Hold `parameter_bytes` for `run` (being built or loaded), or RESOURCE_EXHAUSTED:
        checked and taken under one lock, so no two reservations see the same room."""
        budget = self.config.max_parameter_bytes
        with self._lock:
            held = sum(other.budgeted_bytes for other in self._runs.values() if other is not run)
            if held + parameter_bytes > budget:
                raise ResourceExhaustedError(
                    f"max_run_parameter_bytes: {parameter_bytes} more bytes of parameters "
                    f"would pass the budget of {budget} ({held} held)",
                    field="max_run_parameter_bytes",
                )
            run.reserved_bytes = parameter_bytes

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
        run.owner,
    )
