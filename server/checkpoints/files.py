"""Where checkpoints are written and read: safetensors for tensors, a JSON manifest for the rest.

A checkpoint is a folder `checkpoint-<sequence>-v<version>/` (a named one:
`checkpoint-<sequence>-<name>-v<version>/`, checkpoint_names.py) holding `tensors.safetensors`
(parameters, accumulated .grad, optimizer state tensors, gradients kept in the request-id window)
and `manifest.json` (format version, model version, accumulated counts, model and optimizer
spec, the optimizer's non-tensor state, the request-id window, and the sha256 of the tensor
file). Both are written into a hidden temporary folder, fsync'd, and the folder is renamed into
place and its parent fsync'd: a crash leaves either the whole checkpoint or none. The newest
`keep` periodic ones are kept; named ones stay until DeleteCheckpoint. A checkpoint that does not read back (bad checksum, truncated, unparsable) is
skipped with a warning and the one before it is used. Nothing unpickles: tensors go
through safetensors, everything else through JSON (checkpoint_encoding.py holds that part).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from gradserve.errors import AlreadyExistsError, FailedPreconditionError, GradserveError

from ..config import CheckpointConfig
from ..metrics import ServerMetrics
from ..store.parameter_store import ParameterStore
from ..store.store_state import StoreState
from .checks import ModelLayout, check_same_model, check_state
from .directory import (
    check_usable,
    remove_leftovers,
    save_failed,
)
from .encoding import (
    TENSORS,
    CheckpointError,
    decode_state,
    encode_state,
)
from .names import (
    MANIFEST,
    Folder,
    check_checkpoint_name,
    find,
    folder_name,
    folders,
    parse_folder,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    sequence: int
    model_version: int
    accumulated_batches: int
    # Its name (a periodic one's is its folder name) and state digest ("" before digests).
    name: str = ""
    digest: str = ""


# -- files -----------------------------------------------------------------------------


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(sequence, path) of the checkpoint folders in `directory`, oldest first."""
    return [(folder.sequence, folder.path) for folder in folders(directory)]


def write_checkpoint(
    directory: Path,
    state: StoreState,
    *,
    model_spec: str,
    optimizer: str,
    keep: int,
    name: str = "",
) -> CheckpointInfo:
    """`name`: a named checkpoint (never pruned); "": a periodic one."""
    data, manifest = encode_state(state, model_spec=model_spec, optimizer=optimizer, name=name)
    directory.mkdir(parents=True, exist_ok=True)
    existing = folders(directory)
    sequence = existing[-1].sequence + 1 if existing else 1
    final = directory / folder_name(sequence, state.version, name)
    temporary = directory / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"  # TEMPORARY_PREFIX
    temporary.mkdir()
    try:
        _write_durably(temporary / TENSORS, data)
        _write_durably(temporary / MANIFEST, json.dumps(manifest, indent=1).encode())
        _fsync_directory(temporary)
        temporary.rename(final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _fsync_directory(directory)
    periodic = [folder for folder in folders(directory) if not folder.given_name]
    for old in periodic[:-keep] if keep > 0 else []:
        shutil.rmtree(old.path, ignore_errors=True)
    return CheckpointInfo(
        final,
        sequence,
        state.version,
        state.accumulated_batches,
        name or final.name,
        manifest["state_digest"],
    )


def read_checkpoint(
    path: Path, layout: ModelLayout | None = None
) -> tuple[StoreState, dict[str, Any]]:
    """The state in one checkpoint folder; CheckpointError (or OSError) when it is unusable:
    unreadable, a checksum that differs, or (with `layout`) content that does not fit."""
    try:
        manifest = json.loads((path / MANIFEST).read_bytes())
        if not isinstance(manifest, dict):
            raise CheckpointError(f"{MANIFEST} is not a JSON object")
        state = decode_state((path / TENSORS).read_bytes(), manifest)
    except (KeyError, TypeError, ValueError, IndexError, SafetensorError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{type(error).__name__}: {error}") from None
    folder = parse_folder(path)
    if folder is not None and folder.version != state.version:
        raise CheckpointError(f"model_version {state.version}, the folder's name says otherwise")
    if layout is not None:
        check_same_model(str(path), manifest, layout)
        check_state(state, layout)
    return state, manifest


def read_for_load(path: Path, layout: ModelLayout, field: str) -> StoreState:
    """A checkpoint to load at run time (LoadCheckpoint, a fork): one that does not read back
    or does not fit the model is FAILED_PRECONDITION naming `field`, never skipped."""
    try:
        state, _ = read_checkpoint(path, layout)
    except (CheckpointError, OSError) as error:
        raise FailedPreconditionError(
            f"{field}: checkpoint {path.name} is unusable: {error}",
            field=field,
            reason="CHECKPOINT_UNUSABLE",
        ) from None
    except FailedPreconditionError as error:
        raise FailedPreconditionError(f"{field}: {error.message}", field=field) from None
    return state


def read_latest(
    directory: Path, layout: ModelLayout | None = None
) -> tuple[StoreState, dict[str, Any], Path] | None:
    """The newest checkpoint that reads back (and fits `layout`), skipping (and logging, one
    line each) the broken ones."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            state, manifest = read_checkpoint(path, layout)
        except (CheckpointError, OSError) as error:
            logger.warning("skipping checkpoint %s: %s", path.name, error)
            continue
        return state, manifest, path
    return None


# -- the server's checkpointer -----------------------------------------------------------


class Checkpointer:
    """Saves a store's state to a directory: on demand, every N updates, every T seconds.

    A background thread watches the store's version (a plain int read, every 10 ms when
    saving per update) so every update path, unary or streaming, is covered without hooks.
    A failing save (full disk, directory gone) is counted, logged once per streak of failures
    and once when saves work again, and the thread backs off exponentially up to MAX_BACKOFF.
    """

    MAX_BACKOFF = 5.0

    def __init__(
        self,
        store: ParameterStore,
        config: CheckpointConfig,
        metrics: ServerMetrics | None = None,
    ) -> None:
        if config.directory is None:
            raise ValueError("Checkpointer: the config has no directory")
        self.store = store
        self.directory = Path(config.directory)
        self.every_updates = config.every_updates or None
        self.every_seconds = config.every_seconds or None
        self.keep = max(1, config.keep)
        self.last: CheckpointInfo | None = None
        self._save_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_saved_at = time.monotonic()
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self.failures_in_a_row = 0
        # Fixed for the store's life; read once, since save_state may run under its lock.
        info = store.info()
        self._model_spec, self._optimizer = info.model_spec, info.optimizer

    def restore_latest(self) -> CheckpointInfo | None:
        """Load the newest good checkpoint into the store; None when there is none. First the
        directory must prove usable (FailedPreconditionError: the server exits 2)."""
        check_usable(self.directory)
        remove_leftovers(self.directory)
        found = read_latest(self.directory, ModelLayout.of(self.store))
        if found is None:
            logger.info("no checkpoint in %s: starting fresh", self.directory)
            return None
        state, manifest, path = found
        self.store.restore_state(state)
        folder = parse_folder(path)
        self.last = CheckpointInfo(
            path,
            folder.sequence if folder else 0,
            state.version,
            state.accumulated_batches,
            folder.name if folder else path.name,
            str(manifest.get("state_digest", "")),
        )
        logger.info(
            "restored checkpoint %s: model version %d, %d accumulated batches",
            path.name,
            state.version,
            state.accumulated_batches,
        )
        return self.last

    def save(self, name: str = "") -> CheckpointInfo:
        """Write one checkpoint now (`name`: a named one, never pruned; ALREADY_EXISTS when
        the run has a checkpoint of that name). A failure raises RESOURCE_EXHAUSTED (disk
        full) or UNAVAILABLE with the OS reason, counted in gradserve_checkpoint_failures_total."""
        if name:
            check_checkpoint_name(name)
        # Copied before the save lock, never inside it: a Train request holding the store's
        # lock writes its cadence checkpoints under the save lock (save_state).
        return self.save_state(self.store.export_state(), name)

    def save_state(self, state: StoreState, name: str = "") -> CheckpointInfo:
        """Write `state` (save's copy, or the store's at a cadence version in the middle of a
        request, store.update_cadence). An unnamed state older than the last save is not
        written: two saves racing never leave the older one as the newest checkpoint."""
        with self._save_lock:
            if name and any(folder.name == name for folder in folders(self.directory)):
                raise AlreadyExistsError(f"name: the run has a checkpoint {name!r}", field="name")
            if not name and self.last is not None and state.version < self.last.model_version:
                return self.last
            try:
                saved = write_checkpoint(
                    self.directory,
                    state,
                    model_spec=self._model_spec,
                    optimizer=self._optimizer,
                    keep=self.keep,
                    name=name,
                )
            except OSError as error:
                raise self._failed(error) from None
            if self.failures_in_a_row:
                logger.warning(
                    "checkpoints to %s work again after %d failed saves",
                    self.directory,
                    self.failures_in_a_row,
                )
                self.failures_in_a_row = 0
            self.last = saved
            self._last_saved_at = time.monotonic()
            logger.debug("saved checkpoint %s", saved.path.name)
            return saved

    def save_final(self) -> CheckpointInfo:
        """The checkpoint at shutdown: the last one when it already holds this state (a
        SIGTERM right after a periodic save writes no second copy of the same version)."""
        with self._save_lock:
            last = self.last
            if (
                last is not None
                and last.model_version == self.store.version
                and last.accumulated_batches == 0 == self.store.accumulated_batches
                and last.path.is_dir()
            ):
                return last
        return self.save()

    def _save_at_cadence(self, state: StoreState) -> None:
        """A failed save is counted and logged (save_state) and tried again by the thread;
        the request whose update reached the cadence goes on (async durability)."""
        with contextlib.suppress(GradserveError):
            self.save_state(state)

    def find(self, name: str) -> Folder:
        return find(self.directory, name)

    def delete(self, name: str) -> None:
        """Remove one checkpoint (NOT_FOUND when the run has none of that name)."""
        with self._save_lock:
            folder = self.find(name)
            shutil.rmtree(folder.path)
            _fsync_directory(self.directory)

    def _failed(self, error: OSError) -> GradserveError:
        status = save_failed(self.directory, error)
        self.metrics.checkpoint_failures.inc()
        self.failures_in_a_row += 1
        if self.failures_in_a_row == 1:
            # One line per streak: a save retried every 10 ms must not flood the log.
            logger.error(
                "%s; further failures are counted in gradserve_checkpoint_failures_total, "
                "not logged, until a save works again",
                status.message,
            )
        return status

    def start(self) -> None:
        if self.every_updates:
            # Updates inside one request (a Train stream's 100 steps) count one by one.
            self.store.update_cadence = (self.every_updates, self._save_at_cadence)
        if self._thread is None and (self.every_updates or self.every_seconds):
            self._thread = threading.Thread(
                target=self._run, name="gradserve-checkpoints", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        self.store.update_cadence = None
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _due(self) -> bool:
        saved_version = self.last.model_version if self.last else None
        version = self.store.version
        if self.every_updates and (
            saved_version is None or version - saved_version >= self.every_updates
        ):
            return saved_version != version
        if self.every_seconds and time.monotonic() - self._last_saved_at >= self.every_seconds:
            # Time-based saves only when something may have changed since the last one.
            last = self.last
            return last is None or (version, self.store.accumulated_batches) != (
                last.model_version,
                last.accumulated_batches,
            )
        return False

    def _run(self) -> None:
        interval = 0.01 if self.every_updates else min(1.0, self.every_seconds or 1.0)
        delay = interval
        while not self._stopping.wait(delay):
            if not self._due():
                continue
            try:
                self.save()
                delay = interval
            except GradserveError:
                delay = min(self.MAX_BACKOFF, max(2 * delay, 0.1))
