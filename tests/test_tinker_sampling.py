"""save_weights_for_sampler and the sampling client's `sample`, over the run's sampling engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TIMEOUT
from sampling_factories import GATE
from test_sampling_engine import PROMPT as GATED_PROMPT
from tinker import types
from tinker_helpers import (
    datum,
    post,
    sdk_garbage,  # noqa: F401 - an autouse fixture
    sequences,
    service,
    start,
    weights_for,
)

from gradserve import serde_sampling
from gradserve.sampling_types import SamplingParams
from gradserve.v1 import gradserve_pb2 as pb

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning"),
]
PROMPT = [3, 14, 15, 9, 26]


def _grpc_greedy(stub, run: str, max_tokens: int, checkpoint: str = "") -> tuple[int, list[int]]:  # type: ignore[no-untyped-def]
    request = pb.SampleRequest(
        run=run, prompt_tokens=PROMPT, num_samples=1, max_tokens=max_tokens, temperature=0.0,
        checkpoint=checkpoint,
    )  # fmt: skip
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


def test_a_saved_sampler_is_a_snapshot_sampled_after_the_run_has_stepped(
    make_server, make_stub, tmp_path: Path
) -> None:
    running, url = start(make_server, tmp_path, checkpoint_dir=str(tmp_path / "checkpoints"))
    stub = make_stub(running)
    client = service(url).create_lora_training_client(base_model="tiny", rank=8, seed=3).result()
    run = client.model_id.replace(":", "-")
    batch = sequences(6, 2)

    def step() -> None:
        client.forward_backward(
            [datum(t, weights=weights_for(t, 0)) for t in batch], "cross_entropy"
        )
        client.optim_step(types.AdamParams(learning_rate=0.2)).result()

    step()
    named_path = client.save_weights_for_sampler("first").result().path
    unnamed = client.save_weights_and_get_sampling_client().result()
    names = [c.name for c in stub.ListCheckpoints(pb.ListCheckpointsRequest(run=run)).checkpoints]
    assert "sampler-first" in names  # the run's own checkpoint, named after the save
    (snapshot,) = [n for n in names if n.startswith("sampler-v1-")]
    for _ in range(2):
        step()
    named = service(url).create_sampling_client(model_path=named_path).result()
    params = types.SamplingParams(max_tokens=8, temperature=0.0)
    prompt = types.ModelInput.from_ints(PROMPT)
    ours = list(named.sample(prompt, 1, params).result().sequences[0].tokens)
    version, saved = _grpc_greedy(stub, run, 8, checkpoint="sampler-first")
    assert (version, ours) == (1, saved)
    assert list(unnamed.sample(prompt, 1, params).result().sequences[0].tokens) == saved
    assert _grpc_greedy(stub, run, 8, checkpoint=snapshot) == (1, saved)
    now, current = _grpc_greedy(stub, run, 8)
    assert now == 3 and current != saved  # the run's weights moved on; the sampler's did not


def test_unnamed_sampler_snapshots_are_pruned_to_the_runs_checkpoint_keep(
    make_server, make_stub, tmp_path: Path
) -> None:
    running, url = start(
        make_server, tmp_path, checkpoint_dir=str(tmp_path / "checkpoints"), checkpoint_keep=2
    )
    stub = make_stub(running)
    client = service(url).create_lora_training_client(base_model="tiny", rank=4, seed=3).result()
    run = client.model_id.replace(":", "-")
    samplers = [client.save_weights_and_get_sampling_client().result() for _ in range(3)]
    client.save_weights_for_sampler("kept").result()
    names = [c.name for c in stub.ListCheckpoints(pb.ListCheckpointsRequest(run=run)).checkpoints]
    assert len([n for n in names if n.startswith("sampler-v0-")]) == 2
    assert "sampler-kept" in names  # a named save is the user's to delete
    params = types.SamplingParams(max_tokens=2, temperature=0.0)
    prompt = types.ModelInput.from_ints(PROMPT)
    assert len(samplers[2].sample(prompt, 1, params).result().sequences[0].tokens) == 2
    with pytest.raises(Exception, match="checkpoint"):
        samplers[0].sample(prompt, 1, params).result(timeout=30)


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


def test_a_tinker_sample_and_a_grpc_sample_count_against_one_admission(
    make_server, make_stub, tmp_path: Path
) -> None:
    """--max-concurrent-samples 1: a gRPC Sample held inside the server (the gated model's
    forward) leaves no place for a Tinker sample, refused 429 (the SDK's retryable code)."""
    running, url = start(
        make_server, tmp_path, model="gatedlm", max_concurrent_samples=1,
        model_factories=("gatedlm=sampling_factories:gated_llama",),
    )  # fmt: skip
    stub = make_stub(running)
    client = service(url).create_lora_training_client(base_model="tiny", rank=4, seed=3).result()
    path = client.save_weights_for_sampler("held").result().path
    asample = {
        "model_path": path,
        "num_samples": 1,
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": PROMPT}]},
        "sampling_params": {"max_tokens": 2, "temperature": 0.0},
    }
    held_request = serde_sampling.sample_request_to_proto(
        "", GATED_PROMPT, SamplingParams(num_samples=1, max_tokens=2, seed=1)
    )
    GATE.set_open(False)
    try:
        held = stub.Sample(held_request, timeout=TIMEOUT)
        assert GATE.wait_until(lambda gate: gate.waiting == 1, TIMEOUT)
        status, answer = post(url, "/api/v1/asample", asample)
        assert status == 429, answer
        assert answer["field"] == "max_concurrent_samples"
    finally:
        GATE.set_open(True)
    assert len(list(held)) == 2
    # The gRPC call's place is free again: the same Tinker sample is admitted.
    sampler = service(url).create_sampling_client(model_path=path).result()
    prompt = types.ModelInput.from_ints(PROMPT)
    answer = sampler.sample(prompt, 1, types.SamplingParams(max_tokens=2, temperature=0.0))
    assert len(answer.result().sequences[0].tokens) == 2


def test_a_hostile_sampler_name_is_refused_and_writes_nothing(
    make_server, make_stub, tmp_path: Path
) -> None:
    # The name becomes a checkpoint's name (sampler-NAME) under the run's own folder: one that
    # climbs out, nests or overflows is refused by the one name grammar, and no file appears.
    checkpoints = tmp_path / "checkpoints"
    running, url = start(make_server, tmp_path, checkpoint_dir=str(checkpoints))
    stub = make_stub(running)
    client = service(url).create_lora_training_client(base_model="tiny", rank=4, seed=3).result()
    run = client.model_id.replace(":", "-")
    before = sorted(p for p in tmp_path.rglob("*") if "sdk" not in p.parts)
    for hostile in ("../../escape", "a/b", "x" * 300, "sneaky\x00name", "../sampler-x"):
        with pytest.raises(Exception, match="path"):  # the field the refusal names
            client.save_weights_for_sampler(hostile).result(timeout=30)
    assert not (tmp_path / "escape").exists() and not (checkpoints / "escape").exists()
    assert sorted(p for p in tmp_path.rglob("*") if "sdk" not in p.parts) == before
    assert list(stub.ListCheckpoints(pb.ListCheckpointsRequest(run=run)).checkpoints) == []
