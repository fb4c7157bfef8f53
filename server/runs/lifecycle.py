"""One run's life: built from its spec, loaded, used, checkpointed, unloaded, deleted.

A Run holds its ServedRun (and through it its ParameterStore) while loaded. Calls use it
inside `Run.using()`, which counts them, so an idle unload never drops a store that a call
is still working on. RunBuilder makes runs the way create_server made the one model before
runs existed: the operator's model settings (files, factories, device) with the run's spec,
its own metrics children, checkpointer and ServedRun.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradserve.errors import FailedPreconditionError, GradserveError, InvalidArgumentError

from ..checkpoints.durability import GroupCommit
from ..checkpoints.files import Checkpointer, list_checkpoints
from ..config import ModelConfig, ServerConfig
from ..coordination.served_run import ServedRun
from ..metrics import ServerMetrics
from ..models.adapter_models import BaseRegistry, adapter_model
from ..models.lora import LoraConfig
from ..models.optimizers import build_optimizer
from ..models.specs import build_configured, resolve_device
from ..store.parameter_store import ParameterStore

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
MODEL_FILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


@dataclass(frozen=True)
class RunSpec:
    """What a run is built from, as CreateRun names it."""

    model: str
    loss: str | None = None
    optimizer: str = "sgd"
    seed: int | None = 0
    # An adapter run: the base it trains a LoRA adapter over (--base-model), and the adapter.
    base_model: str = ""
    lora: LoraConfig | None = None


class Run:
    def __init__(
        self,
        name: str,
        owner: str,
        spec: RunSpec,
        load: Callable[[Run], tuple[ServedRun, Checkpointer | None]] | None,
    ) -> None:
        self.name = name
        self.owner = owner
        self.spec = spec
        self._load = load
        self.served: ServedRun | None = None
        self.checkpointer: Checkpointer | None = None
        self.lock = threading.Lock()
        self.active = 0
        self.last_used = time.monotonic()
        # What ListRuns and the gauges show while the run is unloaded.
        self._version = 0
        self.parameter_bytes = 0
        self.model_spec = spec.model
        self.optimizer_description = spec.optimizer

    @classmethod
    def placeholder(cls, name: str, owner: str) -> Run:
        return cls(name, owner, RunSpec(model=""), None)

    # The state the run's gauges read at each scrape.
    @property
    def version(self) -> int:
        served = self.served
        return served.store.version if served is not None else self._version

    @property
    def accumulated_batches(self) -> int:
        served = self.served
        return served.store.accumulated_batches if served is not None else 0

    def attach(self, served: ServedRun, checkpointer: Checkpointer | None) -> None:
        store = served.store
        self.served, self.checkpointer = served, checkpointer
        self.parameter_bytes = store.parameter_bytes()
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
                self.attach(*self._load(self))
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
            if self.served.durability is not None:
                self.served.durability.close()
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
            if self.served is not None and self.served.durability is not None:
                self.served.durability.close()
            if self.checkpointer is not None:
                self.checkpointer.close()
            self.served = self.checkpointer = None

    def _close_checkpointer(self) -> None:
        served = self.served
        if served is not None and served.durability is not None:
            served.durability.close()
        if self.checkpointer is not None:
            self.checkpointer.close()
            saved = self.checkpointer.save()
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
        # Loaded once, shared by every adapter run on them (never written).
        self.bases = BaseRegistry.load(
            config.model.base_models,
            resolve_device(config.model.device),
            config.model.model_factories,
        )

    def directory(self, name: str) -> Path | None:
        if self.root is None:
            return None
        return self.root if name == "" else self.root / "runs" / name

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
        if folder is None or not re.match(MODEL_FILE_NAME, name):
            raise InvalidArgumentError(
                f"model: file:{name[:80]} names no model file the operator made available "
                "(--model-dir)",
                field="model",
            )
        path = Path(folder) / f"{name}.json"
        if not path.is_file():
            raise InvalidArgumentError(f"model: no model file {name!r}", field="model")
        return path

    def build(self, name: str, owner: str, spec: RunSpec, *, restore: bool = True) -> Run:
        """A loaded run (its newest checkpoint restored when `restore` and there is one)."""
        run = Run(name, owner, spec, lambda run: self._load(run, restore=True))
        run.attach(*self._load(run, restore=restore))
        return run

    def _load(self, run: Run, *, restore: bool) -> tuple[ServedRun, Checkpointer | None]:
        config = self.model_config(run.spec) if run.name else self.config.model
        if run.spec.base_model and run.spec.lora is not None:
            model = adapter_model(self.bases.get(run.spec.base_model), run.spec.lora)
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
        checkpointer = None
        directory = self.directory(run.name)
        if directory is not None:
            checkpoints = dataclasses.replace(self.config.checkpoints, directory=str(directory))
            checkpointer = Checkpointer(store, checkpoints, self.metrics)
            if restore:
                checkpointer.restore_latest()
            checkpointer.start()
        metrics = self.metrics.for_run(run.name, run)
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
        directory = self.directory(run.name)
        if directory is None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        document = {"run": run.name, "owner": run.owner, **dataclasses.asdict(run.spec)}
        temporary = directory / f".{RUN_FILE}.tmp"
        temporary.write_text(json.dumps(document, indent=1))
        temporary.replace(directory / RUN_FILE)

    def saved_runs(self) -> list[Run]:
        """The runs whose folders are in the checkpoint directory, unloaded."""
        if self.root is None or not (self.root / "runs").is_dir():
            return []
        runs = []
        for folder in sorted((self.root / "runs").iterdir()):
            document = _read_run_file(folder / RUN_FILE)
            if document is None:
                continue
            try:
                lora = document.get("lora")
                lora = None if lora is None else _lora_from_document(lora)
            except (KeyError, TypeError, ValueError, InvalidArgumentError) as error:
                logger.warning(
                    "skipping run folder %s: its lora is not an adapter: %s", folder.name, error
                )
                continue
            spec = RunSpec(
                model=document["model"],
                loss=document.get("loss"),
                optimizer=document.get("optimizer", "sgd"),
                seed=document.get("seed"),
                base_model=document.get("base_model", ""),
                lora=lora,
            )
            run = Run(folder.name, document["owner"], spec, lambda r: self._load(r, restore=True))
            saved = list_checkpoints(folder)
            run._version = int(saved[-1][1].name.rpartition("-v")[2]) if saved else 0
            self.metrics.for_run(run.name, run)
            runs.append(run)
        return runs

    def remove(self, run: Run, *, delete_checkpoints: bool) -> int:
        directory = self.directory(run.name)
        if directory is None or not directory.is_dir():
            return 0
        if not delete_checkpoints:
            # The checkpoints stay; without run.json the folder is no run at the next start.
            (directory / RUN_FILE).unlink(missing_ok=True)
            return 0
        count = len(list_checkpoints(directory))
        shutil.rmtree(directory, ignore_errors=True)
        return count


def _read_run_file(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        if path.parent.is_dir() and path.exists():
            logger.warning("skipping run folder %s: %s", path.parent.name, error)
        return None
    if not (
        isinstance(document, dict)
        and isinstance(document.get("model"), str)
        and isinstance(document.get("owner"), str)
        and document.get("run") == path.parent.name
    ):
        logger.warning("skipping run folder %s: run.json is not a run", path.parent.name)
        return None
    return document


def _lora_from_document(document: dict[str, Any]) -> LoraConfig:
    """run.json's adapter (dataclasses.asdict wrote its target tuple as a JSON list)."""
    targets = document["target_modules"]
    return LoraConfig(
        rank=document["rank"],
        alpha=document["alpha"],
        target_modules=targets if isinstance(targets, str) else tuple(targets),
        dropout=document["dropout"],
        seed=document["seed"],
    )
