"""Sample's messages <-> the plain sampling types (gradserve.sampling_types), both directions."""

from __future__ import annotations

from gradserve.sampling_types import PromptLogprobs, SampledStep, SamplingParams, StopReason
from gradserve.v1 import gradserve_pb2 as pb

_REASONS = {
    StopReason.STOP_TOKEN: pb.STOP_REASON_STOP_TOKEN,
    StopReason.MAX_TOKENS: pb.STOP_REASON_MAX_TOKENS,
    StopReason.CANCELLED: pb.STOP_REASON_CANCELLED,
}
_FROM_PROTO = {value: reason for reason, value in _REASONS.items()}


def sample_request_to_proto(
    run: str, prompt_tokens: list[int], params: SamplingParams, checkpoint: str = ""
) -> pb.SampleRequest:
    """`checkpoint`: a checkpoint of the run by name, whose weights are sampled; "" the run's."""
    return pb.SampleRequest(
        run=run,
        checkpoint=checkpoint,
        prompt_tokens=prompt_tokens,
        num_samples=params.num_samples,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        stop_token_ids=list(params.stop_token_ids),
        seed=params.seed,
        prompt_logprobs=params.prompt_logprobs,
    )


def sample_request_from_proto(request: pb.SampleRequest) -> tuple[list[int], SamplingParams]:
    """(prompt tokens, params); top_p 0 means off, as 1 does. Values are checked by the server's
    limits (server/models/sampling_limits.py), not here."""
    params = SamplingParams(
        num_samples=request.num_samples,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_k=request.top_k,
        top_p=request.top_p or 1.0,
        stop_token_ids=tuple(request.stop_token_ids),
        seed=request.seed,
        prompt_logprobs=request.prompt_logprobs,
    )
    return list(request.prompt_tokens), params


def sample_event_to_proto(
    event: PromptLogprobs | SampledStep, model_version: int
) -> pb.SampleResponse:
    if isinstance(event, PromptLogprobs):
        return pb.SampleResponse(model_version=model_version, prompt_logprobs=event.logprobs)
    return pb.SampleResponse(
        model_version=model_version,
        step=event.step,
        samples=event.samples,
        tokens=event.tokens,
        logprobs=event.logprobs,
        finished=[pb.SampleStop(sample=i, reason=_REASONS[r]) for i, r in event.finished],
    )


def sample_events_from_proto(
    response: pb.SampleResponse, first: bool
) -> list[PromptLogprobs | SampledStep]:
    """One response's events: the prompt's log-probabilities (first response, when asked), then
    its step, if it carries one."""
    events: list[PromptLogprobs | SampledStep] = []
    if first and response.prompt_logprobs:
        events.append(PromptLogprobs(tuple(response.prompt_logprobs)))
    if response.samples or response.finished:
        events.append(
            SampledStep(
                step=response.step,
                samples=tuple(response.samples),
                tokens=tuple(response.tokens),
                logprobs=tuple(response.logprobs),
                finished=tuple((s.sample, _FROM_PROTO[s.reason]) for s in response.finished),
            )
        )
    return events
