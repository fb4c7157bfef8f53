"""Adapter runs' models through the ParameterStore, without gRPC: bitwise the local peft loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from llm_bases import VOCAB, peft_adapter_tensors, peft_model, tiny_llama

from gradserve.errors import InvalidArgumentError
from gradserve.server.models.adapter_models import BaseRegistry, TokenModel, adapter_model
from gradserve.server.models.bases import from_spec, load_pretrained, tensor_digest
from gradserve.server.models.lora import ALL_LINEAR, LoraConfig
from gradserve.server.models.optimizers import build_optimizer
from gradserve.server.store.parameter_store import ParameterStore

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)
TARGETS = ("q_proj", "v_proj")


def _store(model: object) -> ParameterStore:
    parameters = list(model.module.parameters())  # type: ignore[attr-defined]
    return ParameterStore(model, build_optimizer("adamw:weight_decay=0.01", parameters))  # type: ignore[arg-type]


def _parameters(store: ParameterStore) -> dict[str, torch.Tensor]:
    return dict(store.read_parameters([], lambda name, value: (name, value.clone()))[1])


def test_a_store_over_an_adapter_trains_bitwise_as_the_local_peft_loop(tmp_path: Path) -> None:
    folder = tiny_llama(tmp_path / "base")
    base = load_pretrained("tiny", folder)
    model = adapter_model(base, LoraConfig(4, 8, TARGETS, seed=3))
    assert isinstance(model, TokenModel) and model.num_classes == VOCAB
    assert model.spec == (
        f"lora:tiny:base_sha256={base.digest}:rank=4:alpha=8:targets=q_proj+v_proj:dropout=0:seed=3"
    )
    store = _store(model)
    local = peft_model(folder, 4, 8, list(TARGETS), seed=3).train()
    optimizer = torch.optim.AdamW(
        [p for p in local.parameters() if p.requires_grad], lr=0.01, weight_decay=0.01
    )
    generator = torch.Generator().manual_seed(4)
    for _ in range(20):
        tokens = torch.randint(0, VOCAB, (2, 9), generator=generator)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        result = store.compute_gradients(inputs, targets)
        store.apply_update(0.01)
        logprobs = torch.log_softmax(local(input_ids=inputs).logits, -1)
        loss = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert result.loss == loss.item()
    ours = _parameters(store)
    theirs = peft_adapter_tensors(local)
    assert list(ours) == [
        f"base_model.model.{name.replace('.lora_A', '.lora_A.weight').replace('.lora_B', '.lora_B.weight')}"
        for name in theirs
    ]
    for (_, mine), other in zip(ours.items(), theirs.values(), strict=True):
        assert torch.equal(mine, other)
    assert tensor_digest(base.module) == base.digest


@pytest.mark.parametrize(
    ("inputs", "targets", "field"),
    [
        (torch.full((2, 4), VOCAB), torch.zeros(2, 4, dtype=torch.int64), "inputs.data"),
        (torch.zeros(2, 4, dtype=torch.int64), torch.full((2, 4), -1), "targets.data"),
        (
            torch.zeros(2, 4, dtype=torch.int64),
            torch.zeros(2, 5, dtype=torch.int64),
            "targets.shape",
        ),
        (torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.int64), "inputs.dtype"),
    ],
)
def test_token_batches_out_of_the_vocabulary_are_refused_and_change_nothing(
    tmp_path: Path, inputs: torch.Tensor, targets: torch.Tensor, field: str
) -> None:
    base = load_pretrained("tiny", tiny_llama(tmp_path / "base"))
    store = _store(adapter_model(base, LoraConfig(2, 2, TARGETS)))
    before = _parameters(store)
    with pytest.raises(InvalidArgumentError) as caught:
        store.compute_gradients(inputs, targets)
    assert caught.value.field == field
    after = _parameters(store)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert store.snapshot()[1:] == (0, 0)


def test_a_registry_spec_base_carries_an_adapter_with_its_own_loss() -> None:
    base = from_spec("mlp", "mlp:4-8-3")
    model = adapter_model(base, LoraConfig(2, 4, ALL_LINEAR, seed=1))
    assert model.loss.name == "cross_entropy" and model.input.sample_shape == (4,)
    store = _store(model)
    names = list(_parameters(store))
    assert names == [
        "base_model.model.0.lora_A.weight",
        "base_model.model.0.lora_B.weight",
        "base_model.model.2.lora_A.weight",
        "base_model.model.2.lora_B.weight",
    ]
    inputs = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    result = store.compute_gradients(inputs, torch.tensor([0, 1, 2, 0, 1]))
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(
            model.module(inputs), torch.tensor([0, 1, 2, 0, 1])
        )
    assert result.loss == expected.item()


def test_the_base_registry_names_its_bases(tmp_path: Path) -> None:
    folder = tiny_llama(tmp_path / "base")
    registry = BaseRegistry.load([f"tiny={folder}", "mlp=mlp:4-8-3"])
    assert registry.names() == ["mlp", "tiny"]
    assert registry.get("tiny").vocab_size == VOCAB
    with pytest.raises(InvalidArgumentError, match="known: mlp, tiny") as caught:
        registry.get("other")
    assert caught.value.field == "base_model"
    with pytest.raises(InvalidArgumentError, match="named twice"):
        BaseRegistry.load(["a=mlp:2-2", "a=mlp:2-3"])
    with pytest.raises(InvalidArgumentError, match="no --base-model"):
        BaseRegistry({}).get("tiny")
