"""`--device cuda` for bases and adapters: the base, the adapter, its AdamW state, the wire's
token tensors and sampling on the GPU, against the local peft loop on the same GPU. Runs only
where CUDA is (never in CI); every path it crosses is also tested on CPU elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TIMEOUT, apply, decoded
from llm_bases import peft_adapter_tensors, peft_model, tiny_llama
from test_lora_token_wire import TARGETS, _batches, _create, _fields, _local_loss, _logits

from gradserve.client.gradient_client import GradientClient
from gradserve.codec import tensor_to_proto
from gradserve.sampling_types import SamplingParams
from gradserve.v1 import gradserve_pb2 as pb

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]


def test_an_adapter_run_on_cuda_trains_evaluates_and_samples_as_peft_on_cuda(
    make_server, make_stub, tmp_path: Path
) -> None:
    folder = tiny_llama(tmp_path / "base")
    server = make_server(base_models=(f"tiny={folder}",), device="cuda")
    stub = make_stub(server)
    _create(stub, "adapter")
    batches = _batches("cross_entropy", 4, 6, masked=True)
    losses = []
    for batch in batches:
        request = pb.ComputeGradientsRequest(run="adapter", **_fields("cross_entropy", batch))  # type: ignore[arg-type]
        losses.append(stub.ComputeGradients(request, timeout=TIMEOUT).loss)
        apply(stub, 0.01, run="adapter")
    local = peft_model(folder, 4, 8, TARGETS, seed=3).cuda().train()
    optimizer = torch.optim.AdamW(
        [p for p in local.parameters() if p.requires_grad], lr=0.01, weight_decay=0.01
    )
    local_losses = []
    for batch in batches:
        on_gpu = {name: tensor.cuda() for name, tensor in batch.items()}
        value = _local_loss("cross_entropy", _logits(local, on_gpu), on_gpu)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        local_losses.append(value.item())
    assert losses == pytest.approx(local_losses, rel=1e-5)
    response = stub.GetParameters(pb.GetParametersRequest(run="adapter"), timeout=TIMEOUT)
    for ours, theirs in zip(
        decoded(response.parameters).values(), peft_adapter_tensors(local).values(), strict=True
    ):
        torch.testing.assert_close(ours, theirs.detach().cpu(), rtol=1e-4, atol=1e-6)
    # Per-token log-probabilities computed on the GPU; only [B, T] comes back.
    last = batches[-1]
    evaluated = stub.Evaluate(
        pb.EvaluateRequest(
            run="adapter",
            inputs=tensor_to_proto(last["inputs"]),
            targets=tensor_to_proto(last["targets"]),
            return_logprobs=True,
        ),
        timeout=TIMEOUT,
    )
    local.eval()
    with torch.no_grad():
        logits = local(input_ids=last["inputs"].cuda()).logits
    expected = torch.log_softmax(logits, -1).gather(-1, last["targets"].cuda()[..., None])
    torch.testing.assert_close(
        decoded([evaluated.logprobs])[""], expected[..., 0].cpu(), rtol=1e-4, atol=1e-5
    )
    # Sampling draws on the run's device, from the seed: the same answer twice.
    with GradientClient(server.address, run="adapter") as client:
        params = SamplingParams(num_samples=2, max_tokens=5, seed=7)
        first, again = (client.sample([2, 3, 4], params) for _ in range(2))
    assert first.samples == again.samples and len(first.samples) == 2
