"""One run's life: built from its spec, loaded, used, checkpointed, unloaded, deleted.

A Run holds its ServedRun (and through it its ParameterStore) while loaded. Calls use it
inside `Run.using()`, which counts them, so an idle unload never drops a store that a call
is still working on. RunBuilder makes runs the way create_server made the one model before
runs existed: the operator's model settings (files, factories, device) with the run's spec,
its own metrics children, checkpointer and ServedRun.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gradserve.errors import FailedPreconditionError, GradserveError, InvalidArgumentError
from gradserve.names import is_name

from ..checkpoints.durability import GroupCommit
from ..checkpoints.files import Checkpointer, list_checkpoints
from ..config import ModelConfig, ServerConfig
from ..coordination.cross_run_batches import CrossRunBatches
from ..coordination.served_run import ServedRun
from ..metrics import ServerMetrics
from ..models.adapter_models import BaseRegistry, adapter_bytes, adapter_model
from ..models.optimizers import build_optimizer, state_slots
from ..models.specs import build_configured, measure_configured, resolve_device
from ..store.parameter_store import ParameterStore
from .folders import RunSpec, newest_version, remove_folder, saved_runs, write_run_file
from .names import retired_name
from .principals import ANONYMOUS

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_NAME", "Run", "RunBuilder", "RunSpec"]

DEFAULT_NAME = ""


class Run:
    """One incarnation of a run: `incarnation` names the creation (its folder under
    <checkpoint-dir>/runs/), so a run created again under the same name is another Run with
    another folder, and nothing of the first reaches it."""

    def __init__(
        self,
        name: str,
        owner: str,
        spec: RunSpec,
        load: Callable[[Run], tuple[ServedRun, Checkpointer | None]] | None,
        incarnation: str = "",
    ) -> None:
        self.name = name
        self.owner = owner
        self.spec = spec
        self.incarnation = incarnation
        self._load = load
        self.served: ServedRun | None = None
        self.checkpointer: Checkpointer | None = None
        self.lock = threading.Lock()
        self.active = 0
        self.last_used = time.monotonic()
        # What ListRuns and the gauges show while the run is unloaded.
        self._version = 0
        self.parameter_bytes = 0
        # An adapter run's optimizer state, counted against the budget beside its adapter
        # (set when it loads; 0 for a full run, whose budget counts its parameters only).
        self.optimizer_bytes = 0
        # Bytes held against the budget while the model is being built or loaded (measured
        # from the spec first: the registry reserves them before anything is allocated).
        self.reserved_bytes = 0
        self.model_spec = spec.model
        self.optimizer_description = spec.optimizer

    @classmethod
    def placeholder(cls, name: str, owner: str) -> Run:
        return cls(name, owner, RunSpec(model=""), None)

    @property
    def retired(self) -> bool:
        """A deleted run whose checkpoints were kept (named NAME@TAG, server/runs/names.py)."""
        return "@" in self.name

    @property
    def label(self) -> str:
        """Its metrics label: the name, or OWNER/NAME for a named principal's run (names are
        per principal, so two principals' `shared` are two series)."""
        return self.name if self.owner in ("", ANONYMOUS.name) else f"{self.owner}/{self.name}"

    # The state the run's gauges read at each scrape.
    @property
    def version(self) -> int:
        served = self.served
        return served.store.version if served is not None else self._version

    @property
    def accumulated_batches(self) -> int:
        served = self.served
        return served.store.accumulated_batches if served is not None else 0

    @property
    def budgeted_bytes(self) -> int:
        """What the run holds against --max-run-parameter-bytes now."""
        if self.served is not None:
            return self.parameter_bytes + self.optimizer_bytes
        return self.reserved_bytes

    def attach(self, served: ServedRun, checkpointer: Checkpointer | None) -> None:
        store = served.store
        # Bytes before the run counts as loaded: the budget never sees it with a stale size.
        self.parameter_bytes = store.parameter_bytes()
        self.served, self.checkpointer = served, checkpointer
        self.reserved_bytes = 0
        info = store.info()
        self.model_spec, self.optimizer_description = info.model_spec, info.optimizer

    @contextmanager
    def using(self, before_load: Callable[[], None]) -> Iterator[ServedRun]:
        """The loaded ServedRun for the length of one call (loading the run first if it was
        unloaded; `before_load` checks the budget)."""
        with self.lock:
            if self.served is None:
                if self._load is None:
                    raise FailedPreconditionError(
                        f"run: {self.name!r} is being created", field="run"
                    )
                before_load()
                try:
                    self.attach(*self._load(self))
                finally:
                    self.reserved_bytes = 0
                logger.info("loaded run %s at version %d", self.name, self.version)
            self.active += 1
            served = self.served
        assert served is not None
        try:
            yield served
        finally:
            with self.lock:
                self.active -= 1
                self.last_used = time.monotonic()

    def unload_if_idle(self, deadline: float) -> None:
        """Checkpoint and drop the model when no call has used it since `deadline`."""
        with self.lock:
            if self.served is None or self.active or self.last_used >= deadline:
                return
            if self.served.store.output_handles.in_use():
                # A ComputeOutputs handle is a promise for its lifetime: BackwardOutputs
                # needs the forward pass it names, which an unload would drop.
                return
            self._version = self.version
            if self.checkpointer is not None:
                try:
                    self.checkpointer.save()
                except GradserveError as error:
                    # Kept loaded: its state is only in memory (the checkpointer counts and
                    # logs the failure); the next round tries again.
                    logger.warning("run %s stays loaded: %s", self.name, error)
                    return
                self.checkpointer.close()
            self.served.release()
            self.served = self.checkpointer = None
        logger.info("unloaded idle run %s at version %d", self.name, self._version)

    def close(self) -> bool:
        """Stop and save; False when the final checkpoint could not be written."""
        with self.lock:
            try:
                self._close_checkpointer()
            except GradserveError as error:
                logger.error("run %s: no final checkpoint: %s", self.name or "(default)", error)
                return False
            return True

    def discard(self) -> None:
        """Forget the model without saving (the run is being deleted)."""
        with self.lock:
            if self.served is not None:
                self.served.release()
            if self.checkpointer is not None:
                self.checkpointer.close()
            self.served = self.checkpointer = None

    def _close_checkpointer(self) -> None:
        served = self.served
        if served is not None and served.durability is not None:
            served.durability.close()
        if self.checkpointer is not None:
            self.checkpointer.close()
            saved = self.checkpointer.save_final()
            logger.info("run %s: checkpoint %s", self.name or "(default)", saved.path.name)


class RunBuilder:
    def __init__(
        self,
        config: ServerConfig,
        metrics: ServerMetrics,
        store_factory: Callable[..., ParameterStore] = ParameterStore,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._store_factory = store_factory
        root = config.checkpoints.directory
        self.root = Path(root) if root else None
        # Cross-run batches per base (docs/batching.md), made when a base's runs load.
        self.batches = CrossRunBatches(config.batching, metrics.batches)
        # Loaded once, shared by every adapter run on them (never written).
        self.bases = BaseRegistry.load(
            config.model.base_models,
            resolve_device(config.model.device),
            config.model.model_factories,
        )

    def directory(self, run: Run) -> Path | None:
        """The run's own folder: --checkpoint-dir for the default run, else its incarnation's
        (server/runs/folders.py); None without --checkpoint-dir."""
        if self.root is None:
            return None
        return self.root if run.name == DEFAULT_NAME else self.root / "runs" / run.incarnation

    def model_config(self, spec: RunSpec) -> ModelConfig:
        base = self.config.model
        model, model_file = spec.model, None
        if model.startswith("file:"):
            model_file = self._model_file(model.removeprefix("file:"))
        return dataclasses.replace(
            base,
            spec=model,
            loss=spec.loss,
            optimizer=spec.optimizer,
            seed=spec.seed,
            model_file=str(model_file) if model_file else None,
        )

    def _model_file(self, name: str) -> Path:
        folder = self.config.runs.model_dir
        if folder is None or not is_name(name):
            raise InvalidArgumentError(
                f"model: file:{name[:80]} names no model file the operator made available "
                "(--model-dir)",
                field="model",
            )
        path = Path(folder) / f"{name}.json"
        if not path.is_file():
            raise InvalidArgumentError(f"model: no model file {name!r}", field="model")
        return path

    def measure(self, name: str, spec: RunSpec) -> int:
        """Bytes of the parameters and buffers the run's model will hold, known without
        allocating them (server/models/specs.py)."""
        if spec.base_model and spec.lora is not None:
            # From the base's module shapes (the base is loaded once and shared): the adapter
            # and its optimizer's state, before any tensor exists.
            adapter = adapter_bytes(self.bases.get(spec.base_model), spec.lora)
            return adapter + self.adapter_optimizer_bytes(spec, adapter)
        return measure_configured(self.model_config(spec) if name else self.config.model).bytes

    @staticmethod
    def adapter_optimizer_bytes(spec: RunSpec, adapter: int) -> int:
        """Bytes of an adapter run's optimizer state once it has stepped."""
        return adapter * state_slots(spec.optimizer)

    def build(self, name: str, owner: str, spec: RunSpec, *, restore: bool = True) -> Run:
        """A loaded run, a new incarnation (the default run's is the checkpoint directory
        itself; its newest checkpoint is restored when `restore` and there is one)."""
        incarnation = uuid.uuid4().hex if name != DEFAULT_NAME else ""
        run = Run(name, owner, spec, lambda run: self._load(run, restore=True), incarnation)
        run.attach(*self._load(run, restore=restore))
        return run

    def _load(self, run: Run, *, restore: bool) -> tuple[ServedRun, Checkpointer | None]:
        config = self.model_config(run.spec) if run.name else self.config.model
        base = self.bases.get(run.spec.base_model) if run.spec.base_model else None
        if base is not None and run.spec.lora is not None:
            model = adapter_model(base, run.spec.lora)
            adapter = sum(p.numel() * p.element_size() for p in model.module.parameters())
            run.optimizer_bytes = self.adapter_optimizer_bytes(run.spec, adapter)
        else:
            model = build_configured(config)
        named = dict(model.module.named_parameters())
        optimizer = build_optimizer(config.optimizer, list(named.values()), list(named))
        limits = self.config.limits
        store = self._store_factory(
            model,
            optimizer,
            request_id_window=limits.request_id_window,
            request_id_window_bytes=limits.request_id_window_bytes,
        )
        if base is not None and run.spec.lora is not None and base.vocab_size is not None:
            # Its ComputeGradients may share a forward with other runs' on the base.
            member = self.batches.member(base.name, base.module, base.vocab_size, run.owner)
            store.shared_compute = member
        checkpointer = None
        directory = self.directory(run)
        if directory is not None:
            checkpoints = dataclasses.replace(self.config.checkpoints, directory=str(directory))
            checkpointer = Checkpointer(store, checkpoints, self.metrics)
            if restore:
                checkpointer.restore_latest()
            checkpointer.start()
        metrics = self.metrics.for_run(run.label, run)
        served = ServedRun(store, metrics, self.config.limits, self.config.coordination)
        served.checkpointer = checkpointer
        if self.config.checkpoints.durability == "sync":
            if checkpointer is None:
                raise FailedPreconditionError(
                    "--durability sync needs --checkpoint-dir", field="durability"
                )
            # Changes are answered once a checkpoint holding them is on disk.
            served.durability = GroupCommit(checkpointer)
        return served, checkpointer

    def persist(self, run: Run) -> None:
        directory = self.directory(run)
        if directory is not None:
            write_run_file(directory, run.name, run.owner, run.spec)

    def saved_runs(self) -> list[Run]:
        """The runs whose folders are in the checkpoint directory, unloaded."""
        if self.root is None:
            return []
        runs = []
        for saved in saved_runs(self.root):
            run = Run(
                saved.name,
                saved.owner,
                saved.spec,
                lambda r: self._load(r, restore=True),
                saved.incarnation,
            )
            run._version = saved.version
            self.metrics.for_run(run.label, run)
            runs.append(run)
        return runs

    def remove(self, run: Run, *, delete_checkpoints: bool) -> Run | int:
        """Delete a run's folder with its checkpoints (how many), or keep them: then the
        incarnation stays its owner's as NAME@TAG (the Run returned, unloaded), a name no
        client can create, so no later run of the name sees them."""
        directory = self.directory(run)
        if directory is None or not directory.is_dir():
            return 0
        if delete_checkpoints or not list_checkpoints(directory):
            return remove_folder(directory)
        write_run_file(directory, run.name, run.owner, run.spec, deleted=True)
        kept = Run(
            retired_name(run.name, run.incarnation),
            run.owner,
            run.spec,
            lambda r: self._load(r, restore=True),
            run.incarnation,
        )
        kept._version = newest_version(directory)
        return kept
