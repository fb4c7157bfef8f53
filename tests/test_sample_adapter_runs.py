"""Sample from an adapter run (issue 25's LoRA runs over one shared base): bitwise the local loop."""

from __future__ import annotations

from pathlib import Path

import llm_bases
import pytest
import torch
from helpers import apply, compute
from test_sampling_engine import PROMPT, local_sampling_loop

from gradserve.client.gradient_client import GradientClient
from gradserve.sampling_types import SamplingParams, collect
from gradserve.server.models import bases, lora
from gradserve.server.models.sampling import sample
from gradserve.v1 import gradserve_pb2 as pb

# peft 0.21.2 reads transformers 5.23's deprecated alias (the library pair's warning).
pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)
TARGETS = ("q_proj", "v_proj")


def test_an_adapter_run_samples_bitwise_its_local_loop(
    make_server, make_stub, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    folder = llm_bases.tiny_llama(tmp_path / "base")
    server = make_server(base_models=(f"tiny={folder}",))
    stub = make_stub(server)
    spec = pb.LoraSpec(rank=4, alpha=8, target_modules=list(TARGETS))
    request = pb.CreateRunRequest(run="a", base_model="tiny", lora=spec, optimizer="adam", seed=3)
    stub.CreateRun(request, timeout=30)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):  # lora_B starts at zero: train it away from the base
        tokens = torch.randint(0, llm_bases.VOCAB, (2, 9), generator=generator)
        compute(stub, tokens[:, :-1], tokens[:, 1:], run="a")
        apply(stub, 0.05, run="a")
    params = SamplingParams(num_samples=3, max_tokens=10, temperature=0.8, seed=4)
    greedy = SamplingParams(num_samples=2, max_tokens=10, temperature=0.0)
    with GradientClient(server.address, run="a") as client:
        version, values = client.get_parameters()
        remote = client.sample(PROMPT, params)
        remote_greedy = client.sample(PROMPT, greedy)

    base = bases.load_pretrained("local", folder).module
    config = lora.LoraConfig(rank=4, alpha=8.0, target_modules=TARGETS, seed=3)
    tensors = {
        name: (
            values[f"base_model.model.{name}.lora_A.weight"],
            values[f"base_model.model.{name}.lora_B.weight"],
        )
        for name, _, _ in lora.resolve_targets(base, config)
    }
    adapter = lora.LoraAdapter(base, config, tensors)
    with adapter.applied():
        tokens, logprobs = local_sampling_loop(base, PROMPT, params)
    assert remote.model_version == version == 3
    assert [sample.tokens for sample in remote.samples] == tokens.tolist()
    assert [sample.logprobs for sample in remote.samples] == logprobs.tolist()
    local_greedy = collect(sample(base, PROMPT, greedy, context=adapter.applied), 2)
    assert [s.tokens for s in remote_greedy.samples] == [s.tokens for s in local_greedy.samples]
    plain = collect(sample(base, PROMPT, params), 3)
    assert [s.tokens for s in plain.samples] != tokens.tolist()
