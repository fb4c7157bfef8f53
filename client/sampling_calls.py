"""GradientClient's Sample calls: a generator of each step's tokens, and one that waits for all.

Sample is a server-streaming read: it is sent once, without retries (a repeat would sample
again), under one deadline for the whole stream; leaving the generator early cancels the call,
which stops the server's sampling within one token (docs/sampling.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from gradserve import serde_sampling
from gradserve.sampling_types import SampleResult, SampleStreamItem, SamplingParams, collect

from .call_channel import CallChannel


class SamplingCalls:
    """Sample from the channel's run, over one CallChannel."""

    def __init__(self, channel: CallChannel) -> None:
        self._channel = channel

    def sample_stream(
        self, prompt_tokens: Sequence[int], params: SamplingParams, *, checkpoint: str = ""
    ) -> Iterator[SampleStreamItem]:
        """(model version, event) pairs as the server produces them: the prompt's
        log-probabilities first when asked, then one SampledStep per decoding step. The
        client's timeout bounds the whole stream. `checkpoint`: sample the weights of the
        run's checkpoint of that name (the run is left as it is); "": its current weights."""
        request = serde_sampling.sample_request_to_proto(
            self._channel.run, list(prompt_tokens), params, checkpoint
        )
        first = True
        for response in self._channel.responses(self._channel.stub.Sample, request):
            for event in serde_sampling.sample_events_from_proto(response, first):
                yield response.model_version, event
            first = False

    def sample(
        self, prompt_tokens: Sequence[int], params: SamplingParams, *, checkpoint: str = ""
    ) -> SampleResult:
        """Every sample, whole: tokens, log-probabilities, stop reasons, the version drawn from."""
        items = list(self.sample_stream(prompt_tokens, params, checkpoint=checkpoint))
        version = items[-1][0] if items else 0
        return collect((event for _, event in items), params.num_samples, version)
