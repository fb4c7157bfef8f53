"""After a server restart: is the state the run resumed at the checkpoint it came from?

The server's GetStateDigest at the resumed version must equal the digest its checkpoint at
that version was saved with (ListCheckpoints); a mismatch means the restored state is not what
was saved (a checkpoint of another run by this name, a bug), and the trainer stops rather
than train on. Servers that do not serve digests, keep no checkpoints, or have none at that
version pass with one log line.
"""

from __future__ import annotations

import logging

import grpc

from gradserve.errors import FailedPreconditionError, GradserveError

from .gradient_client import GradientClient
from .transport import ResumeError

logger = logging.getLogger(__name__)


def verify_resumed_digest(client: GradientClient) -> None:
    """ResumeError naming both digests when the run's state is not its checkpoint's."""
    try:
        current = client.state_digest()
        checkpoints = client.list_checkpoints()
    except GradserveError as error:
        if error.code is grpc.StatusCode.UNIMPLEMENTED:
            logger.info("resumed state not verified: the server serves no digests (UNIMPLEMENTED)")
            return
        if isinstance(error, FailedPreconditionError):  # no checkpoint directory
            logger.info("resumed state not verified: %s", error.message)
            return
        raise
    matching = [c for c in checkpoints if c.model_version == current.model_version and c.digest]
    if not matching:
        logger.info(
            "resumed state not verified: no checkpoint with a digest at version %d",
            current.model_version,
        )
        return
    checkpoint = matching[-1]
    if checkpoint.digest != current.digest:
        raise ResumeError(
            f"the server resumed at version {current.model_version} with state digest "
            f"{current.digest}, but its checkpoint {checkpoint.name} of that version has "
            f"digest {checkpoint.digest}: the restored state is not the one saved"
        )
    logger.info(
        "resumed state verified: version %d is checkpoint %s (digest %s)",
        current.model_version,
        checkpoint.name,
        current.digest[:16],
    )
