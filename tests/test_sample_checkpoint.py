"""Sample from a named checkpoint of the run: bitwise the local loop on the checkpoint's
weights, answered with its version, the run left as it was; another principal's checkpoint
is NOT_FOUND like a missing one. Real servers on port 0."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sampling_factories import llama_config
from test_sampling_engine import PROMPT, local_sampling_loop
from transformers import AutoModelForCausalLM

from gradserve.client.gradient_client import GradientClient
from gradserve.client.security import bearer_metadata
from gradserve.errors import NotFoundError
from gradserve.sampling_types import SamplingParams
from tests.conftest import ServerFactory

FACTORY = ("tinylm=sampling_factories:tiny_llama",)
PARAMS = SamplingParams(num_samples=3, max_tokens=10, temperature=0.8, top_k=30, seed=4)
ALICE, BOB = "alice-token-3b9e", "bob-token-71d0"


def model_with(values: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_config(llama_config()).eval()
    model.load_state_dict(values, strict=False)
    return model


def shifted(values: dict[str, torch.Tensor], by: float) -> dict[str, torch.Tensor]:
    return {name: value + by for name, value in values.items()}


def test_a_named_checkpoint_is_sampled_bitwise_and_the_run_is_left_as_it_was(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = make_server(model="tinylm", model_factories=FACTORY, checkpoint_dir=str(tmp_path))
    with GradientClient(server.address) as client:
        _, start = client.get_parameters()
        client.set_parameters(shifted(start, 0.01))
        _, saved_values = client.get_parameters()
        saved = client.save_checkpoint("one")
        client.set_parameters(shifted(start, -0.02))
        before = client.state_digest()
        current = client.sample(PROMPT, PARAMS)

        from_checkpoint = client.sample(PROMPT, PARAMS, checkpoint="one")

        assert saved.model_version == from_checkpoint.model_version == 1
        assert current.model_version == 2
        tokens, logprobs = local_sampling_loop(model_with(saved_values), PROMPT, PARAMS)
        assert [s.tokens for s in from_checkpoint.samples] == tokens.tolist()
        assert [s.logprobs for s in from_checkpoint.samples] == logprobs.tolist()
        assert [s.tokens for s in from_checkpoint.samples] != [s.tokens for s in current.samples]
        # The run: same version, same parameters, optimizer and counts (its digest).
        assert client.state_digest() == before
        assert client.sample(PROMPT, PARAMS) == current


def test_a_checkpoint_the_run_lacks_is_not_found_naming_the_field(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = make_server(model="tinylm", model_factories=FACTORY, checkpoint_dir=str(tmp_path))
    with GradientClient(server.address) as client:
        with pytest.raises(NotFoundError) as missing:
            client.sample(PROMPT, PARAMS, checkpoint="nope")
        assert missing.value.field == "checkpoint"
    without_folder = make_server(model="tinylm", model_factories=FACTORY)
    with GradientClient(without_folder.address) as client:
        with pytest.raises(NotFoundError) as missing:
            client.sample(PROMPT, PARAMS, checkpoint="one")
        assert missing.value.field == "checkpoint"


def test_another_principals_checkpoint_is_not_found(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {ALICE}\nbob {BOB}\n")
    server = make_server(
        model="tinylm",
        model_factories=FACTORY,
        checkpoint_dir=str(tmp_path / "checkpoints"),
        auth_tokens_file=str(tokens),
    )
    alice = GradientClient(server.address, metadata=tuple(bearer_metadata(ALICE)))
    bob = GradientClient(server.address, metadata=tuple(bearer_metadata(BOB)))
    with alice, bob:
        alice.create_run("mine", model="tinylm", seed=1)
        alice.for_run("mine").save_checkpoint("secret")
        assert alice.for_run("mine").sample(PROMPT, PARAMS, checkpoint="secret").samples
        # Bob's "mine" is his own (names are per principal) and holds no such checkpoint;
        # his default run's folder does not either.
        bob.create_run("mine", model="tinylm", seed=1)
        for run in ("mine", ""):
            with pytest.raises(NotFoundError) as missing:
                bob.for_run(run).sample(PROMPT, PARAMS, checkpoint="secret")
            assert missing.value.field == "checkpoint"
