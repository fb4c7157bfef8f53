"""The checkpoint directory's health: checked at start, leftovers of a kill removed, and an
OSError from a save turned into a status the client can act on.

We run as root in containers, so permission bits prove nothing: the start check writes,
fsyncs and removes a probe file, which fails for real on a full or read-only filesystem, a
path under a regular file, or a directory that is a regular file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import uuid
from pathlib import Path

from gradserve.errors import (
    FailedPreconditionError,
    GradserveError,
    ResourceExhaustedError,
    UnavailableError,
)

logger = logging.getLogger("gradserve.server.checkpoints.files")

TEMPORARY_PREFIX = ".tmp-checkpoint-"
# errno values that mean "no room": the caller should free space, not just retry.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def describe(error: OSError) -> str:
    """The OS reason in one line: "[Errno 28] No space left on device: '/ckpt/x'"."""
    return str(error) if error.strerror else f"{type(error).__name__}: {error}"


def check_usable(directory: Path) -> None:
    """Create `directory` if missing and prove it takes a durable write; FailedPrecondition
    (the server exits 2 with this one line) when it does not."""
    probe = directory / f".probe-{uuid.uuid4().hex[:8]}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not directory.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(directory))
        with probe.open("wb") as handle:
            handle.write(b"gradserve checkpoint directory probe\n")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as error:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        raise FailedPreconditionError(
            f"--checkpoint-dir {directory}: unusable ({describe(error)})", field="checkpoint_dir"
        ) from None


def remove_leftovers(directory: Path) -> None:
    """Remove `.tmp-checkpoint-*` folders a kill left half-written (never renamed in place)."""
    for entry in directory.iterdir():
        if entry.name.startswith(TEMPORARY_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            logger.info("removed %s, a checkpoint a kill left unfinished", entry.name)


def save_failed(directory: Path, error: OSError) -> GradserveError:
    """The status a failed save answers with: RESOURCE_EXHAUSTED when the disk is full,
    UNAVAILABLE otherwise (a missing or replaced directory may come back), with the reason."""
    message = f"checkpoint to {directory} failed: {describe(error)}"
    if error.errno in _NO_SPACE:
        return ResourceExhaustedError(message, field="checkpoint_dir")
    return UnavailableError(message, field="checkpoint_dir")
