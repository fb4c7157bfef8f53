"""An on-policy importance_sampling step on an adapter run's own samples: the ratio is 1.

Sample's log-probabilities come from the cached decode; ComputeGradients and Evaluate run one
uncached forward of prompt + completion. docs/sampling.md states how far those may differ.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TIMEOUT, apply, compute, decoded
from llm_bases import VOCAB, tiny_llama
from test_sampling_engine import PROMPT

from gradserve.client.gradient_client import GradientClient
from gradserve.codec import tensor_to_proto
from gradserve.sampling_types import SamplingParams, StopReason
from gradserve.v1 import gradserve_pb2 as pb

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)
# docs/sampling.md: |logp_cached - logp_uncached| within 2e-5 measured; the tests assert 5e-5.
TOLERANCE = 5e-5


def test_an_on_policy_importance_sampling_step_has_ratio_one(
    make_server, make_stub, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    folder = tiny_llama(tmp_path / "base")
    server = make_server(base_models=(f"tiny={folder}",))
    stub = make_stub(server)
    spec = pb.LoraSpec(rank=4, alpha=8, target_modules=["q_proj", "v_proj"])
    request = pb.CreateRunRequest(run="a", base_model="tiny", lora=spec, optimizer="adam", seed=3)
    stub.CreateRun(request, timeout=TIMEOUT)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):  # lora_B starts at zero: train it away from the base
        tokens = torch.randint(0, VOCAB, (2, 9), generator=generator)
        compute(stub, tokens[:, :-1], tokens[:, 1:], run="a")
        apply(stub, 0.05, run="a")
    # Temperature 1, no filter: the sampling distribution is the model's own.
    params = SamplingParams(num_samples=6, max_tokens=16, seed=9, prompt_logprobs=True)
    with GradientClient(server.address, run="a") as client:
        sampled = client.sample(PROMPT, params)
    assert {s.stop_reason for s in sampled.samples} == {StopReason.MAX_TOKENS}
    assert sampled.prompt_logprobs is not None
    sequences = torch.tensor([PROMPT + s.tokens for s in sampled.samples])
    inputs, targets = sequences[:, :-1], sequences[:, 1:]
    # The sampler's log-probability of every target: the prompt's, then each sample's own.
    logprobs = torch.tensor(
        [list(sampled.prompt_logprobs) + s.logprobs for s in sampled.samples], dtype=torch.float32
    )
    advantages = torch.randn(targets.shape, generator=generator)
    advantages[:, : len(PROMPT) - 1] = 0.0  # the prompt is not the policy's to credit

    evaluated = stub.Evaluate(
        pb.EvaluateRequest(
            run="a",
            inputs=tensor_to_proto(inputs),
            targets=tensor_to_proto(targets),
            return_logprobs=True,
        ),
        timeout=TIMEOUT,
    )
    server_logprobs = decoded([evaluated.logprobs])[""]
    log_ratio = server_logprobs - logprobs
    assert evaluated.model_version == sampled.model_version == 3
    assert log_ratio.abs().max().item() < TOLERANCE

    step = compute(
        stub,
        inputs,
        targets,
        run="a",
        loss=pb.LossSpec(name="importance_sampling"),
        logprobs=tensor_to_proto(logprobs),
        advantages=tensor_to_proto(advantages),
    )
    ratio = torch.exp(log_ratio)
    # The server's loss is the formula over its own log-probabilities, bitwise (float32).
    assert step.loss == -(advantages * ratio).sum().item()
    # Ratio 1 within the tolerance: the loss is -sum(A) within sum|A| * (e^tol - 1).
    bound = advantages.abs().sum().item() * (torch.tensor(TOLERANCE).exp().item() - 1)
    assert abs(step.loss + advantages.sum().item()) <= bound
