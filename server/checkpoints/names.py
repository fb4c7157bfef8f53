"""Checkpoint folders and their names: periodic and named ones, found by name, listed.

Every checkpoint of a run is a folder in its directory, numbered by one sequence:
`checkpoint-<sequence>-v<version>` (periodic, on shutdown, or an unnamed SaveCheckpoint; its
name is the folder name; the newest --checkpoint-keep are kept) or
`checkpoint-<sequence>-<name>-v<version>` (a named SaveCheckpoint; never pruned). The version
comes last and is digits, so a folder parses one way whatever the name holds. Names follow
the run-name rule, and a name shaped like a periodic folder is refused: names stay unique.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from gradserve.errors import InvalidArgumentError, NotFoundError
from gradserve.names import NAME_PATTERN, RULE, is_name
from gradserve.run_types import CheckpointSummary

logger = logging.getLogger("gradserve.server.checkpoints.files")

MANIFEST = "manifest.json"
# Matched with fullmatch, ASCII only (gradserve/names.py says why).
FOLDER = re.compile(rf"checkpoint-([0-9]{{10}})(?:-({NAME_PATTERN}))?-v([0-9]+)", re.ASCII)
PERIODIC = re.compile(r"checkpoint-[0-9]{10}-v[0-9]+", re.ASCII)


@dataclass(frozen=True)
class Folder:
    path: Path
    sequence: int
    version: int
    # The given name of a named checkpoint; "" for a periodic one.
    given_name: str

    @property
    def name(self) -> str:
        return self.given_name or self.path.name


def check_checkpoint_name(name: str, field: str = "name", *, new: bool = True) -> None:
    """A name to save under (`new`), or to look a checkpoint up by (periodic names too)."""
    if not is_name(name) or (new and PERIODIC.fullmatch(name)):
        raise InvalidArgumentError(
            f"{field}: {name[:80]!r} is not a checkpoint name ({RULE}, and not shaped like a "
            "periodic checkpoint-<sequence>-v<version>)",
            field=field,
        )


def folder_name(sequence: int, version: int, name: str = "") -> str:
    middle = f"-{name}" if name else ""
    return f"checkpoint-{sequence:010d}{middle}-v{version}"


def parse_folder(path: Path) -> Folder | None:
    match = FOLDER.fullmatch(path.name)
    if match is None:
        return None
    return Folder(path, int(match.group(1)), int(match.group(3)), match.group(2) or "")


def folders(directory: Path) -> list[Folder]:
    """The checkpoint folders in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [parse_folder(entry) for entry in directory.iterdir() if entry.is_dir()]
    return sorted((f for f in found if f is not None), key=lambda f: f.sequence)


def find(directory: Path | None, name: str, field: str = "name") -> Folder:
    """The checkpoint called `name`; NOT_FOUND naming `field` when there is none."""
    for folder in folders(directory) if directory is not None else []:
        if folder.name == name:
            return folder
    raise NotFoundError(f"{field}: no checkpoint {name[:80]!r}", field=field)


def summaries(directory: Path) -> list[CheckpointSummary]:
    """What ListCheckpoints shows, from the manifests alone (tensors are not read); a folder
    whose manifest does not read is left out with one warning."""
    listed = []
    for folder in folders(directory):
        try:
            manifest = json.loads((folder.path / MANIFEST).read_bytes())
            summary = CheckpointSummary(
                folder.name,
                int(manifest["model_version"]),
                int(manifest["accumulated_batches"]),
                str(manifest.get("state_digest", "")),
                float(manifest.get("saved_at", 0.0)),
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("not listing checkpoint %s: %s", folder.path.name, error)
            continue
        listed.append(summary)
    return listed
