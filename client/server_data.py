"""--data-on-server: the training set uploaded once, its batches then named by samples.

auto (the default) uploads when the training set is held in memory (not a streamed CSV) and
its bytes fit what the server says it can take (GetModelInfo.dataset_bytes_available; a server
without datasets says 0), and otherwise sends batches inline; on fails with one line when it
cannot; off always sends them inline. The dataset's name comes from its content, so a trainer
that re-uploads after a server restart (datasets are in memory only) names the same data the
same way, and two trainers of one run with other data never collide. Validation batches stay
inline (Evaluate). When the trainer ends it deletes the dataset if it uploaded it (one that
another trainer had uploaded is left to that one), unless --keep-datasets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from gradserve.dataset_digest import dataset_digest
from gradserve.errors import GradserveError, ResourceExhaustedError
from gradserve.types import ModelInfo

from .csv_stream import CsvStream
from .data import DataError, Dataset
from .gradient_client import GradientClient

logger = logging.getLogger(__name__)

DATA_ON_SERVER = ("auto", "on", "off")


@dataclass
class ServerData:
    """The training set as a dataset of the client's run."""

    client: GradientClient
    name: str
    dataset: Dataset
    # Whether this trainer stored it (an upload that found it there already did not).
    uploaded: bool = False

    def upload(self) -> None:
        summary = self.client.upload_dataset(
            self.name, self.dataset.inputs, self.dataset.targets, replace=True
        )
        self.uploaded = self.uploaded or not summary.unchanged
        logger.info(
            "training data on the server as dataset %s (%d bytes%s)",
            self.name,
            summary.bytes,
            ", already there" if summary.unchanged else "",
        )

    def delete(self) -> None:
        """Delete the dataset when this trainer uploaded it; a failure is one warning (the
        training itself is done)."""
        if not self.uploaded:
            return
        try:
            self.client.delete_dataset(self.name)
        except GradserveError as error:
            logger.warning("could not delete dataset %s: %s", self.name, error)
            return
        logger.info("deleted dataset %s (--keep-datasets keeps it)", self.name)


def data_bytes(dataset: Dataset) -> int:
    return sum(t.numel() * t.element_size() for t in (dataset.inputs, dataset.targets))


def upload_training_set(
    client: GradientClient, mode: str, info: ModelInfo, train_set: Dataset | CsvStream
) -> ServerData | None:
    """The uploaded training set, or None when its batches go inline."""
    if mode == "off":
        return None
    if not isinstance(train_set, Dataset):
        reason = "the training data is streamed from disk (--stream-csv), not held"
    elif data_bytes(train_set) > info.dataset_bytes_available:
        reason = (
            f"the training data's {data_bytes(train_set)} bytes are more than the server can "
            f"take now ({info.dataset_bytes_available})"
        )
    else:
        name = "train-" + dataset_digest(train_set.inputs, train_set.targets)[:16]
        server_data = ServerData(client, name, train_set)
        try:
            server_data.upload()
            return server_data
        except ResourceExhaustedError as error:
            reason = f"the server refused the upload: {error}"
    if mode == "on":
        raise DataError(f"data: --data-on-server on, but {reason}")
    logger.info("batches go inline: %s", reason)
    return None


def add_data_on_server_flag(
    add: Callable[..., object], default: str, keep_default: bool = False
) -> None:
    """The trainer's --data-on-server and --keep-datasets (client/arguments.py calls this)."""
    add(
        "--data-on-server",
        choices=DATA_ON_SERVER,
        default=default,
        help="upload the training set once and name batches by samples: auto (when it is held "
        "and fits the server's dataset budget), on (or fail), off (batches inline)",
    )
    add(
        "--keep-datasets",
        action="store_true",
        default=keep_default,
        help="leave the uploaded training set on the server when training ends (default: "
        "delete it, as it counts against the server's dataset budget)",
    )
