"""Sample over a real server on port 0: bitwise the local engine's loops, streamed, one version."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sampling_factories import EOS, llama_config
from test_sampling_engine import PROMPT, local_sampling_loop
from transformers import AutoModelForCausalLM

from gradserve import serde_sampling
from gradserve.client.gradient_client import GradientClient
from gradserve.errors import FailedPreconditionError, InvalidArgumentError, ResourceExhaustedError
from gradserve.sampling_types import SampledStep, SamplingParams, StopReason
from gradserve.server.config import SamplingLimits
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc
from tests.conftest import ServerFactory

FACTORY = ("tinylm=sampling_factories:tiny_llama",)


@pytest.fixture
def client(make_server: ServerFactory) -> Iterator[GradientClient]:
    running = make_server(model="tinylm", model_factories=FACTORY)
    with GradientClient(running.address) as connected:
        yield connected


def local_copy(client: GradientClient) -> torch.nn.Module:
    """The run's weights in a model of the user's own."""
    model = AutoModelForCausalLM.from_config(llama_config()).eval()
    _, values = client.get_parameters()
    model.load_state_dict(values, strict=False)
    return model


def test_greedy_over_the_wire_is_bitwise_generate(client: GradientClient) -> None:
    local = local_copy(client)
    params = SamplingParams(num_samples=2, max_tokens=12, temperature=0.0, stop_token_ids=(EOS,))
    result = client.sample(PROMPT, params)
    prompt = torch.tensor([PROMPT] * 2)
    reference = local.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=12,
        output_logits=True,
        return_dict_in_generate=True,
        eos_token_id=EOS,
        pad_token_id=0,
    )
    expected = reference.sequences[:, len(PROMPT) :].tolist()
    assert [sample.tokens for sample in result.samples] == expected
    logprobs = [
        torch.log_softmax(logits.float(), -1)[0, token].item()
        for logits, token in zip(reference.logits, expected[0], strict=True)
    ]
    assert result.samples[0].logprobs == logprobs
    assert result.model_version == 0
    assert all(sample.stop_reason is not None for sample in result.samples)


def test_seeded_sampling_over_the_wire_is_bitwise_the_local_loop(client: GradientClient) -> None:
    local = local_copy(client)
    params = SamplingParams(
        num_samples=3, max_tokens=10, temperature=0.9, top_k=20, seed=11, prompt_logprobs=True
    )
    result = client.sample(PROMPT, params)
    tokens, logprobs = local_sampling_loop(local, PROMPT, params)
    assert [sample.tokens for sample in result.samples] == tokens.tolist()
    assert [sample.logprobs for sample in result.samples] == logprobs.tolist()
    assert {sample.stop_reason for sample in result.samples} == {StopReason.MAX_TOKENS}
    alone = torch.tensor([PROMPT])
    with torch.no_grad():
        prompt_logits = local(input_ids=alone).logits.float()
    exact = torch.log_softmax(prompt_logits[0, :-1], -1).gather(-1, alone[0, 1:, None])[:, 0]
    assert result.prompt_logprobs == tuple(exact.tolist())


def test_tokens_stream_step_by_step_from_the_version_the_call_started_on(
    client: GradientClient,
) -> None:
    params = SamplingParams(num_samples=2, max_tokens=8, seed=5)
    before = client.sample(PROMPT, params)
    stream = client.sample_stream(PROMPT, params)
    version, first = next(stream)
    assert isinstance(first, SampledStep) and first.step == 0
    # The run changes while the call is under way: the call keeps its version's weights.
    _, values = client.get_parameters()
    changed = client.set_parameters({name: value + 0.5 for name, value in values.items()})
    rest = [event for _, event in stream]
    assert version == 0 and changed == 1
    assert len(rest) == params.max_tokens - 1
    streamed = [[first.tokens[i]] for i in range(2)]
    for event in rest:
        assert isinstance(event, SampledStep)
        for index, token in zip(event.samples, event.tokens, strict=True):
            streamed[index].append(token)
    assert streamed == [sample.tokens for sample in before.samples]
    after = client.sample(PROMPT, params)
    assert after.model_version == 1
    assert [s.tokens for s in after.samples] != streamed


@pytest.mark.parametrize(
    ("params", "prompt", "error", "field"),
    [
        (
            SamplingParams(num_samples=1, max_tokens=2000),
            PROMPT,
            ResourceExhaustedError,
            "max_tokens",
        ),
        (SamplingParams(num_samples=1, max_tokens=60), PROMPT, InvalidArgumentError, "max_tokens"),
        (
            SamplingParams(num_samples=65, max_tokens=4),
            PROMPT,
            ResourceExhaustedError,
            "num_samples",
        ),
        (
            SamplingParams(num_samples=1, max_tokens=4),
            [3, 99],
            InvalidArgumentError,
            "prompt_tokens",
        ),
        (
            SamplingParams(num_samples=1, max_tokens=4, top_p=-1),
            PROMPT,
            InvalidArgumentError,
            "top_p",
        ),
    ],
)
def test_refusals_name_their_field_and_change_nothing(
    client: GradientClient,
    params: SamplingParams,
    prompt: list[int],
    error: type[Exception],
    field: str,
) -> None:
    with pytest.raises(error) as refused:
        client.sample(prompt, params)
    assert getattr(refused.value, "field", None) == field
    assert client.model_info().model_version == 0


def test_a_run_that_is_not_a_language_model_is_refused(make_server: ServerFactory) -> None:
    running = make_server()
    with (
        GradientClient(running.address) as plain,
        pytest.raises(FailedPreconditionError) as refused,
    ):
        plain.sample([1, 2], SamplingParams(num_samples=1, max_tokens=2))
    assert refused.value.field == "run"


def test_32_held_sample_streams_leave_health_and_short_calls_served(
    make_server: ServerFactory,
) -> None:
    """Streams left unread hold stream threads (stream_admission.py), and sampling admits
    at most SamplingLimits.max_concurrent of them (the others refused at once, naming why)."""
    running = make_server(model="tinylm", model_factories=FACTORY)
    channel = grpc.insecure_channel(running.address)
    stub = pb_grpc.GradientServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    request = serde_sampling.sample_request_to_proto(
        "", PROMPT, SamplingParams(num_samples=4, max_tokens=58)
    )
    calls = [stub.Sample(request, timeout=60) for _ in range(32)]
    try:
        started, refused = 0, []
        for call in calls:
            try:
                next(call)  # the first token: the call is under way, then left unread
                started += 1
            except grpc.RpcError as error:
                refused.append((error.code(), error.details()))
        # A call that finished its 58 tokens into the flow-control window frees its place, so
        # more than max_concurrent may start; none is refused for any other reason.
        assert started >= SamplingLimits().max_concurrent
        assert started + len(refused) == len(calls)
        assert {code for code, _ in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all("max_concurrent_samples" in (details or "") for _, details in refused)
        for _ in range(10):
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    finally:
        for call in calls:
            call.cancel()
        channel.close()


@pytest.mark.parametrize(
    ("flags", "prompt", "params", "field"),
    [
        ({"max_sample_prompt_tokens": 4}, PROMPT, SamplingParams(1, 2), "prompt_tokens"),
        ({"max_sample_tokens": 3}, PROMPT, SamplingParams(1, 4), "max_tokens"),
        ({"max_samples_per_request": 2}, PROMPT, SamplingParams(3, 2), "num_samples"),
        ({"max_sampling_memory_bytes": 1000}, PROMPT, SamplingParams(2, 4), "num_samples"),
    ],
)
def test_the_limits_a_server_is_started_with_refuse_naming_the_field(
    make_server: ServerFactory,
    flags: dict[str, int],
    prompt: list[int],
    params: SamplingParams,
    field: str,
) -> None:
    """The same request passes a default server (PROMPT has 5 tokens) and is refused by one
    started with the lower limit, naming the request's field and the flag to raise."""
    flag = "--" + next(iter(flags)).replace("_", "-")
    strict = make_server(model="tinylm", model_factories=FACTORY, **flags)
    with GradientClient(strict.address) as client:
        with pytest.raises(ResourceExhaustedError) as refused:
            client.sample(prompt, params)
        assert refused.value.field == field
        assert flag in str(refused.value)
        assert client.model_info().model_version == 0
    default = make_server(model="tinylm", model_factories=FACTORY)
    with GradientClient(default.address) as client:
        assert len(client.sample(prompt, params).samples) == params.num_samples
