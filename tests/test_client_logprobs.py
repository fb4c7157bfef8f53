"""GradientClient.compute_gradients(return_logprobs=True): the targets' per-token
log-probabilities on the result, equal to PyTorch's on the same adapter run's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from llm_bases import VOCAB, peft_model, tiny_llama

from gradserve.client.gradient_client import GradientClient
from gradserve.run_types import LoraRequest

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)
TARGETS = ["q_proj", "v_proj"]


def test_compute_gradients_answers_the_targets_logprobs_when_asked(
    make_server, tmp_path: Path
) -> None:
    folder = tiny_llama(tmp_path / "base")
    running = make_server(base_models=(f"tiny={folder}",))
    generator = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, VOCAB, (2, 9), generator=generator)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    with GradientClient(running.address, run="adapter") as client:
        lora = LoraRequest(rank=4, alpha=8, target_modules=tuple(TARGETS))
        client.create_run("adapter", base_model="tiny", lora=lora, seed=3)
        plain = client.compute_gradients(inputs, targets)
        asked = client.compute_gradients(inputs, targets, return_logprobs=True)
    assert plain.logprobs is None  # only when asked: the answer stays small
    local = peft_model(folder, 4, 8, TARGETS, seed=3)
    with torch.no_grad():
        logits = local(input_ids=inputs).logits
    theirs = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert asked.logprobs is not None
    assert asked.logprobs.dtype == torch.float32 and asked.logprobs.shape == (2, 8)
    torch.testing.assert_close(asked.logprobs, theirs)
    assert asked.loss == pytest.approx(-theirs.sum().item(), rel=1e-5)
