"""The Sample RPC's handler: decode, check and admit, stream the run's sampling, encode.

Limits and admission are server-wide (server/models/sampling_limits.py): a request over one is
refused before the weights are copied or a forward runs. The call's cancellation (the client
went away or cancelled, or stream admission ended an idle stream) stops the engine within one
token. Stream admission (stream_admission.py) counts Sample as a stream, so long generations
hold stream threads, never the threads of short calls and health.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from gradserve import serde_sampling
from gradserve.v1 import gradserve_pb2 as pb

from ..config import SamplingLimits
from ..models.sampling_limits import SamplingAdmission
from .runs import RunAccess


class SamplingRpcs:
    def __init__(self, access: RunAccess, limits: SamplingLimits) -> None:
        self._access = access
        self._limits = limits
        self._admission = SamplingAdmission(limits)

    def Sample(
        self, request: pb.SampleRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SampleResponse]:
        prompt, params = serde_sampling.sample_request_from_proto(request)
        with self._access.use(request.run, context) as served:
            needed = served.check_sample(prompt, params, self._limits, request.checkpoint)
            with self._admission.admitted(needed):
                version, events = served.sample(
                    prompt,
                    params,
                    cancelled=lambda: not context.is_active(),
                    checkpoint=request.checkpoint,
                )
                for event in events:
                    yield serde_sampling.sample_event_to_proto(event, version)
