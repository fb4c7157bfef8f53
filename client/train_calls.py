"""GradientClient's Train stream: groups of steps, or dataset passes, at most a window in flight.

Built over a CallChannel. The same arithmetic as the unary calls, with one round trip per
group instead of two per step; each request carries a fresh request_id.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence

from gradserve import serde
from gradserve.errors import GradserveError, UnavailableError
from gradserve.pass_types import DatasetPass, PassResult
from gradserve.serde_passes import dataset_pass_into_proto, pass_result_from_proto
from gradserve.types import StepResult, TrainStep
from gradserve.v1 import gradserve_pb2 as pb

from .call_channel import CallChannel
from .retry import new_request_id


class TrainCalls:
    """The Train stream of the channel's run."""

    def __init__(self, channel: CallChannel) -> None:
        self._channel = channel

    def train_stream(
        self,
        requests: Iterable[Sequence[TrainStep] | DatasetPass],
        *,
        window: int = 8,
        timeout: float | None = None,
    ) -> Iterator[list[StepResult]]:
        """Run groups of steps over one Train stream, at most `window` groups in flight.

        Yields each group's results in order. The same arithmetic as the unary calls, with one
        round trip per group instead of two per step. A group may be a DatasetPass (steps over
        an uploaded dataset named in one message, docs/datasets.md): its answer comes as the
        results of the equivalent steps. `timeout` bounds the whole stream (default: the
        client's timeout per group of the window, at least an hour)."""
        for response in self._responses(requests, window, timeout):
            if response.HasField("pass_result"):
                yield pass_result_from_proto(response.pass_result).step_results()
            else:
                yield [serde.step_result_from_proto(result) for result in response.steps]

    def train_pass(self, descriptor: DatasetPass, *, timeout: float | None = None) -> PassResult:
        """One dataset pass, its answer packed (per-step losses; norms when asked)."""
        # Read to the stream's end: leaving early would cancel it under the server.
        answers = list(self._responses([descriptor], 1, timeout or self._channel.timeout))
        if not answers:
            raise UnavailableError("Train: the stream ended without an answer")
        return pass_result_from_proto(answers[0].pass_result)

    def _responses(
        self,
        requests: Iterable[Sequence[TrainStep] | DatasetPass],
        window: int,
        timeout: float | None,
    ) -> Iterator[pb.TrainResponse]:
        slots = threading.Semaphore(window)
        finished = threading.Event()
        # gRPC reads `requests` on a thread of its own and turns what it raises into UNKNOWN
        # "Exception iterating requests!": keep the caller's error and raise it here instead.
        failures: list[Exception] = []

        def caught(
            steps_iterable: Iterable[Sequence[TrainStep] | DatasetPass],
        ) -> Iterator[Sequence[TrainStep] | DatasetPass]:
            try:
                yield from steps_iterable
            except Exception as error:  # the caller's own (bad data, say): half-close, re-raise
                failures.append(error)

        def gated() -> Iterator[pb.TrainRequest]:
            for steps in caught(requests):
                # Wait for a free slot; stop feeding once the consumer is gone.
                while not slots.acquire(timeout=0.1):
                    if finished.is_set():
                        return
                if finished.is_set():
                    return
                request = pb.TrainRequest(request_id=new_request_id(), run=self._channel.run)
                if isinstance(steps, DatasetPass):
                    dataset_pass_into_proto(steps, request.dataset_pass)
                else:
                    request.steps.extend(serde.train_step_to_proto(step) for step in steps)
                yield request

        responses = self._channel.responses(
            self._channel.stub.Train, gated(), timeout=timeout or max(3600.0, self._channel.timeout)
        )
        try:
            for response in responses:
                slots.release()
                yield response
        except GradserveError:
            if failures:
                raise failures[0] from None
            raise
        finally:
            finished.set()
            responses.close()
        if failures:
            raise failures[0]
