"""The stream transport: a plan's steps packed into Train requests, several in flight.

Requests hold up to `steps_per_request` steps (and REQUEST_BYTES of batches) and span epochs,
except where the caller pauses at the end of each epoch; up to `window` requests are in
flight; a request whose steps each name one batch of the dataset on the server, with one
learning rate, goes as one DatasetPass (client/dataset_passes.py). The server runs the unary
calls' arithmetic, so the parameters are bitwise the unary transport's, with one round trip
per request instead of two per step. With an EXACT plan every
step carries its expected_version; a broken stream is OutOfStep and the loop resumes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator

from gradserve.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
    VersionConflictError,
)
from gradserve.pass_types import DatasetPass
from gradserve.types import TrainStep

from .dataset_passes import as_pass, one_batch_size
from .gradient_client import GradientClient
from .plan import PlannedStep, StepPlan, Versioning
from .transport import OutOfStep, StepDone, TrainingDiverged
from .transport_unary import UnaryTransport

logger = logging.getLogger(__name__)

# A request stops growing at this many bytes of batches, well under the 64 MiB message limit.
REQUEST_BYTES = 8 * 1024 * 1024
# The same for batches named by dataset samples: a few bytes each on the wire, but the server
# gathers them all before the request runs, and takes at most --max-message-bytes of them.
NAMED_REQUEST_BYTES = 32 * 1024 * 1024


class StreamTransport:
    def __init__(
        self,
        client: GradientClient,
        steps_per_request: int,
        window: int,
        named_request_bytes: int = NAMED_REQUEST_BYTES,
        dataset_passes: bool = True,
    ) -> None:
        """`dataset_passes`: send a request whose steps can be one DatasetPass as one
        (client/dataset_passes.py)."""
        self.client = client
        self.dataset_passes = dataset_passes
        self.steps_per_request = steps_per_request
        self.window = window
        self.named_request_bytes = named_request_bytes
        # Set once the server refused a stream for want of capacity: unary calls from then on.
        self._unary: UnaryTransport | None = None

    def run(
        self, plan: StepPlan, first_step: int, start_version: int, *, pause_at_epoch_end: bool
    ) -> Iterator[StepDone]:
        if self._unary is not None:
            yield from self._unary.run(
                plan, first_step, start_version, pause_at_epoch_end=pause_at_epoch_end
            )
            return
        streamed = False
        next_step = first_step
        try:
            for done in self._stream(plan, first_step, start_version, pause_at_epoch_end):
                streamed = True
                next_step = done.step.number + 1
                yield done
        except InvalidArgumentError as error:
            # A server that predates dataset passes ignores the field and finds a request
            # without steps, refused before any of it ran (and the stream ended there): the
            # rest of the run goes as steps.
            if not (self.dataset_passes and error.field == "steps" and "no steps" in error.message):
                raise
            logger.warning("the server takes no dataset passes (%s); sending steps", error.message)
            self.dataset_passes = False
            yield from self.run(
                plan, next_step, start_version, pause_at_epoch_end=pause_at_epoch_end
            )
        except ResourceExhaustedError as error:
            # The server had all its --max-streams open and refused this one before reading
            # a request: nothing ran, so the same steps go over the unary calls instead.
            if error.field != "max_streams" or streamed:
                raise
            logger.warning("%s; this run goes on over unary calls", error.message)
            self._unary = UnaryTransport(self.client)
            yield from self._unary.run(
                plan, first_step, start_version, pause_at_epoch_end=pause_at_epoch_end
            )
        except FailedPreconditionError as error:
            raise TrainingDiverged(f"training diverged: {error}") from None
        except (UnavailableError, VersionConflictError) as error:
            if plan.versioning is not Versioning.EXACT:
                raise
            raise OutOfStep(f"the stream broke: {error}") from error

    def _stream(
        self, plan: StepPlan, first_step: int, start_version: int, pause_at_epoch_end: bool
    ) -> Iterator[StepDone]:
        sent: deque[tuple[PlannedStep, ...]] = deque()
        # Released once the caller has taken an epoch's last step and asked for more.
        epoch_taken = threading.Semaphore(0)
        finished = threading.Event()

        def request(group: list[PlannedStep]) -> list[TrainStep] | DatasetPass:
            sent.append(tuple(group))
            if self.dataset_passes:
                descriptor = as_pass(group, plan.expected_version(group[0], start_version))
                if descriptor is not None:
                    return descriptor
            return [s.train_step(plan.expected_version(s, start_version)) for s in group]

        def requests() -> Iterator[list[TrainStep] | DatasetPass]:
            group: list[PlannedStep] = []
            size = 0
            for step in plan.steps(first_step):
                group.append(step)
                size += step.payload_bytes
                pause = pause_at_epoch_end and step.closes_epoch
                limit = self.named_request_bytes if step.named else REQUEST_BYTES
                # A smaller batch (an epoch's last) ends a pass: the request ends with it.
                short = self.dataset_passes and _shorter(step, group[0])
                if len(group) == self.steps_per_request or size >= limit or pause or short:
                    yield request(group)
                    group, size = [], 0
                    # Bounded waits: stop feeding once the consumer is gone.
                    while pause and not epoch_taken.acquire(timeout=0.1):
                        if finished.is_set():
                            return
            if group:
                yield request(group)

        request_started = time.perf_counter()
        try:
            for results in self.client.train_stream(requests(), window=self.window):
                steps = sent.popleft()
                share = (time.perf_counter() - request_started) / len(results)
                request_started = time.perf_counter()
                for step, result in zip(steps, results, strict=True):
                    yield StepDone(step, result.losses, result.model_version, share)
                if pause_at_epoch_end and steps[-1].closes_epoch:
                    epoch_taken.release()
        finally:
            finished.set()


def _shorter(step: PlannedStep, first: PlannedStep) -> bool:
    """Whether `step` names fewer samples on the server than the first of its request."""
    size, first_size = one_batch_size(step), one_batch_size(first)
    return size is not None and first_size is not None and size < first_size
