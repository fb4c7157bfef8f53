"""Run folders on disk: one per incarnation, <checkpoint-dir>/runs/<incarnation>/, holding its
run.json (name, owner, spec, deleted or not) beside its checkpoints.

The folder is named by the creation, never by the run's name: a run deleted and created again
under its name, by its owner or by another principal, gets a new folder, so no checkpoint of
the first is listed, loaded or restored into the second. Folders from before incarnations
(runs/NAME/ with a run.json naming NAME) are read in place as their run's incarnation; one
without run.json (the checkpoints of a run deleted back then) belongs to no run and is left
alone (docs/checkpoints.md says how to hand it back to its owner).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gradserve.errors import InvalidArgumentError
from gradserve.names import is_name

from ..checkpoints.files import list_checkpoints
from ..models.lora import LoraConfig
from .names import retired_name

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"


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


@dataclass(frozen=True)
class SavedRun:
    """A run found at start: its incarnation (folder), name (NAME@TAG when deleted), owner,
    spec and the version of its newest checkpoint."""

    incarnation: str
    name: str
    owner: str
    spec: RunSpec
    version: int


def write_run_file(
    folder: Path, name: str, owner: str, spec: RunSpec, *, deleted: bool = False
) -> None:
    """run.json, replaced atomically (a kill leaves the old one or the new one)."""
    folder.mkdir(parents=True, exist_ok=True)
    document = {"run": name, "owner": owner, "incarnation": folder.name, **asdict(spec)}
    if deleted:
        document["deleted"] = True
    temporary = folder / f".{RUN_FILE}.tmp"
    with temporary.open("w") as handle:
        handle.write(json.dumps(document, indent=1))
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(folder / RUN_FILE)


def saved_runs(root: Path) -> list[SavedRun]:
    """Every run whose folder is under root/runs/, live or deleted with its checkpoints kept;
    a second folder claiming an owner's name is skipped with a warning."""
    runs_root = root / "runs"
    if not runs_root.is_dir():
        return []
    found: dict[tuple[str, str], SavedRun] = {}
    for folder in sorted(runs_root.iterdir()):
        document = _read_run_file(folder / RUN_FILE)
        if document is None:
            continue
        name = document["run"]
        if document.get("deleted") is True:
            name = retired_name(name, folder.name)
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
        version = newest_version(folder)
        key = (document["owner"], name)
        if key in found:
            logger.warning(
                "skipping run folder %s: folder %s holds that run already",
                folder.name,
                found[key].incarnation,
            )
            continue
        found[key] = SavedRun(folder.name, name, document["owner"], spec, version)
    return list(found.values())


def newest_version(folder: Path) -> int:
    """The version of the newest checkpoint in an incarnation's folder (0 when none)."""
    checkpoints = list_checkpoints(folder)
    return int(checkpoints[-1][1].name.rpartition("-v")[2]) if checkpoints else 0


def remove_folder(folder: Path) -> int:
    """Delete an incarnation's folder with its checkpoints; how many checkpoints it held."""
    if not folder.is_dir():
        return 0
    count = len(list_checkpoints(folder))
    shutil.rmtree(folder, ignore_errors=True)
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
        and isinstance(document.get("run"), str)
        and is_name(document["run"])
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
