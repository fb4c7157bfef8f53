"""save_weights_for_sampler and the sampling client's `sample`, over the run's sampling engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TIMEOUT
from tinker import types
from tinker_helpers import (
    datum,
    sdk_garbage,  # noqa: F401 - an autouse fixture
    sequences,
    service,
    start,
    weights_for,
)

from gradserve.v1 import gradserve_pb2 as pb

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning"),
]
PROMPT = [3, 14, 15, 9, 26]


def _grpc_greedy(stub, run: str, max_tokens: int) -> tuple[int, list[int]]:  # type: ignore[no-untyped-def]
    request = pb.SampleRequest(
        run=run, prompt_tokens=PROMPT, num_samples=1, max_tokens=max_tokens, temperature=0.0
    )
    tokens, version = [], -1
    for answer in stub.Sample(request, timeout=TIMEOUT):
        version = answer.model_version
        tokens += list(answer.tokens)
    return version, tokens


def test_greedy_samples_are_the_grpc_samples_of_the_same_run_and_version(
    make_server, make_stub, tmp_path: Path
) -> None:
    running, url = start(make_server, tmp_path)
    stub = make_stub(running)
    api = service(url)
    client = api.create_lora_training_client(base_model="tiny", rank=8, seed=3).result()
    run = client.model_id.replace(":", "-")
    batch = sequences(6, 2)
    for _ in range(2):  # the adapter is no longer zero: sampling sees the run's own weights
        client.forward_backward(
            [datum(t, weights=weights_for(t, 0)) for t in batch], "cross_entropy"
        )
        client.optim_step(types.AdamParams(learning_rate=0.05)).result()
    params = types.SamplingParams(max_tokens=6, temperature=0.0)
    prompt = types.ModelInput.from_ints(PROMPT)

    unnamed = client.save_weights_and_get_sampling_client().result()
    ours = unnamed.sample(prompt, num_samples=2, sampling_params=params).result()
    version, theirs = _grpc_greedy(stub, run, 6)
    assert version == 2
    assert [list(s.tokens) for s in ours.sequences] == [theirs, theirs]
    assert all(s.stop_reason == "length" for s in ours.sequences)

    path = client.save_weights_for_sampler("v2").result().path
    assert path == f"tinker://{client.model_id}/sampler_weights/v2"
    named = api.create_sampling_client(model_path=path).result()
    assert list(named.sample(prompt, 1, params).result().sequences[0].tokens) == theirs

    # One step later the saved weights are gone from the run: refused, naming both versions.
    client.forward_backward([datum(batch[0], weights=weights_for(batch[0], 0))], "cross_entropy")
    client.optim_step(types.AdamParams(learning_rate=0.05)).result()
    with pytest.raises(Exception, match="version 2"):
        named.sample(prompt, 1, params).result(timeout=30)


def test_what_sampling_does_not_serve_is_refused_naming_it(make_server, tmp_path: Path) -> None:
    _, url = start(make_server, tmp_path)
    api = service(url)
    client = api.create_lora_training_client(base_model="tiny", rank=4, seed=3).result()
    sampler = client.save_weights_and_get_sampling_client().result()
    prompt = types.ModelInput.from_ints(PROMPT)
    with pytest.raises(Exception, match="stop strings"):
        sampler.sample(prompt, 1, types.SamplingParams(max_tokens=2, stop="\n")).result(timeout=30)
    with pytest.raises(Exception, match="base model alone"):
        api.create_sampling_client(base_model="tiny").result(timeout=30)
