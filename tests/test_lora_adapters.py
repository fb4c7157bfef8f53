"""LoRA adapters over one shared frozen base against peft itself: init, logits, 20 AdamW steps."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from llm_bases import (
    VOCAB,
    peft_adapter_tensors,
    peft_model,
    tiny_gpt2,
    tiny_llama,
    token_cross_entropy,
)

from gradserve.errors import InvalidArgumentError
from gradserve.server.models.bases import Base, load_pretrained, tensor_digest
from gradserve.server.models.lora import ALL_LINEAR, LoraAdapter, LoraConfig
from gradserve.server.models.token_losses import (
    TokenBatch,
    causal_lm_loss,
    check_options,
    check_token_batch,
)

LLAMA_TARGETS = ("q_proj", "v_proj", "down_proj")

# peft 0.21.2 reads transformers 5.23's deprecated alias when it wraps a model (a library pair
# warning, not ours): the local reference only.
pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)


def _batches(count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        tokens = torch.randint(0, VOCAB, (3, 11), generator=generator)
        weights = (torch.rand(3, 11, generator=generator) > 0.2).float()
        batches.append((tokens[:, :-1], tokens[:, 1:], weights[:, 1:]))
    return batches


def _adapter_tensors(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    tensors = {}
    for name in adapter.module_names:
        tensors[f"{name}.lora_A"] = adapter.lora_a[name]
        tensors[f"{name}.lora_B"] = adapter.lora_b[name]
    return tensors


def _assert_same_tensors(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(theirs)
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name


def _train_ours(
    base: Base, adapter: LoraAdapter, batches: list[tuple[torch.Tensor, ...]]
) -> list[float]:
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=0.01, weight_decay=0.01)
    losses = []
    for inputs, targets, weights in batches:
        with adapter.applied():
            logits = base.module(inputs).logits
        loss = token_cross_entropy(logits, targets, weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _train_peft(model: torch.nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> list[float]:
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=0.01, weight_decay=0.01)
    losses = []
    for inputs, targets, weights in batches:
        loss = token_cross_entropy(model(input_ids=inputs).logits, targets, weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    ("make", "targets"),
    [
        (tiny_llama, LLAMA_TARGETS),
        (tiny_llama, ALL_LINEAR),
        (tiny_gpt2, ("c_attn", "c_fc")),
        (tiny_gpt2, ALL_LINEAR),
    ],
)
def test_init_and_logits_are_bitwise_peft(
    tmp_path: Path, make: object, targets: tuple[str, ...] | str
) -> None:
    folder = make(tmp_path / "base")  # type: ignore[operator]
    base = load_pretrained("tiny", folder)
    adapter = LoraAdapter(base.module, LoraConfig(rank=4, alpha=8, target_modules=targets, seed=5))
    local = peft_model(folder, 4, 8, list(targets) if targets != ALL_LINEAR else targets, seed=5)
    _assert_same_tensors(_adapter_tensors(adapter), peft_adapter_tensors(local))
    assert "lm_head" not in adapter.module_names
    # lora_B is zero at init: make it not, so the logits test the adapter's arithmetic too.
    with torch.no_grad():
        for name in adapter.module_names:
            filler = torch.randn(adapter.lora_b[name].shape)
            adapter.lora_b[name].copy_(filler)
            local.base_model.model.get_submodule(name).lora_B["default"].weight.copy_(filler)
    tokens = _batches(1, 2)[0][0]
    with torch.no_grad(), adapter.applied():
        ours = base.module(tokens).logits
    with torch.no_grad():
        assert torch.equal(ours, local(input_ids=tokens).logits)
        assert not torch.equal(ours, base.module(tokens).logits)  # outside `applied`: the base


def test_twenty_adamw_steps_are_bitwise_the_local_peft_loop(tmp_path: Path) -> None:
    folder = tiny_llama(tmp_path / "base")
    base = load_pretrained("tiny", folder)
    digest = base.digest
    adapter = LoraAdapter(base.module, LoraConfig(rank=8, alpha=16, target_modules=LLAMA_TARGETS))
    local = peft_model(folder, 8, 16, list(LLAMA_TARGETS), seed=0)
    batches = _batches(2, 3) * 10  # two batches, ten times each: the loss can fall
    ours, theirs = _train_ours(base, adapter, batches), _train_peft(local, batches)
    assert ours == theirs
    assert ours[-2] < ours[0]
    assert ours[-1] < ours[1]
    _assert_same_tensors(_adapter_tensors(adapter), peft_adapter_tensors(local))
    assert tensor_digest(base.module) == digest  # the base was never written
    assert all(p.grad is None for p in base.module.parameters())


def _rl_batches(count: int, seed: int) -> list[TokenBatch]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(2):
        tokens = torch.randint(0, VOCAB, (3, 11), generator=generator)
        # Near a random model's log(1/61) ~ -4.1, as a sampler's would be.
        sampler = -4.1 + 0.3 * torch.randn(3, 10, generator=generator)
        advantages = torch.randn(3, 10, generator=generator)
        batches.append(TokenBatch(tokens[:, :-1], tokens[:, 1:], None, None, sampler, advantages))
    return batches * (count // 2)


def _local_rl_loss(
    name: str, logits: torch.Tensor, batch: TokenBatch, low: float, high: float
) -> torch.Tensor:
    # Tinker's documented expressions, written out.
    assert batch.logprobs is not None and batch.advantages is not None
    logprobs = torch.log_softmax(logits, -1).gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    ratio = torch.exp(logprobs - batch.logprobs)
    if name == "importance_sampling":
        return -(ratio * batch.advantages).sum()
    clipped = torch.clamp(ratio, low, high)
    return -torch.min(ratio * batch.advantages, clipped * batch.advantages).sum()


@pytest.mark.parametrize("loss_name", ["importance_sampling", "ppo"])
def test_twenty_steps_of_rl_losses_are_bitwise_the_local_peft_loop(
    tmp_path: Path, loss_name: str
) -> None:
    folder = tiny_llama(tmp_path / "base")
    base = load_pretrained("tiny", folder)
    adapter = LoraAdapter(base.module, LoraConfig(4, 8, ALL_LINEAR, seed=2))
    local = peft_model(folder, 4, 8, ALL_LINEAR, seed=2).train()
    given = {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1} if loss_name == "ppo" else {}
    options = check_options(loss_name, given)
    ours_optimizer = torch.optim.AdamW(adapter.parameters(), lr=0.02)
    local_optimizer = torch.optim.AdamW([p for p in local.parameters() if p.requires_grad], lr=0.02)
    for batch in _rl_batches(20, 8):
        check_token_batch(batch, loss_name, VOCAB)
        with adapter.applied():
            logits = base.module(batch.inputs).logits
        ours, _ = causal_lm_loss(logits, batch, loss_name, options)
        theirs = _local_rl_loss(loss_name, local(input_ids=batch.inputs).logits, batch, 0.9, 1.1)
        assert torch.equal(ours, theirs)
        for optimizer, loss in ((ours_optimizer, ours), (local_optimizer, theirs)):
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    _assert_same_tensors(_adapter_tensors(adapter), peft_adapter_tensors(local))


def test_dropout_draws_as_peft_does(tmp_path: Path) -> None:
    folder = tiny_llama(tmp_path / "base")
    base = load_pretrained("tiny", folder)
    config = LoraConfig(rank=4, alpha=4, target_modules=ALL_LINEAR, dropout=0.3, seed=1)
    adapter = LoraAdapter(base.module, config)
    local = peft_model(folder, 4, 4, ALL_LINEAR, seed=1, dropout=0.3)
    batches = _batches(4, 4)
    torch.manual_seed(9)
    ours = _train_ours(base, adapter, batches)
    torch.manual_seed(9)
    assert ours == _train_peft(local, batches)


def test_two_adapters_on_one_base_each_train_as_their_own_peft_loop(tmp_path: Path) -> None:
    folder = tiny_llama(tmp_path / "base")
    base = load_pretrained("tiny", folder)
    first = LoraAdapter(base.module, LoraConfig(4, 8, LLAMA_TARGETS, seed=1))
    second = LoraAdapter(base.module, LoraConfig(2, 2, ("k_proj", "up_proj"), seed=2))
    first_batches, second_batches = _batches(10, 5), _batches(10, 6)
    # Interleaved on the one base, step by step.
    ours: dict[int, list[float]] = {1: [], 2: []}
    for index in range(10):
        ours[1] += _train_ours_once(base, first, first_batches[index])
        ours[2] += _train_ours_once(base, second, second_batches[index])
    local_first = peft_model(folder, 4, 8, list(LLAMA_TARGETS), seed=1)
    local_second = peft_model(folder, 2, 2, ["k_proj", "up_proj"], seed=2)
    assert ours[1] == _train_peft(local_first, first_batches)
    assert ours[2] == _train_peft(local_second, second_batches)
    _assert_same_tensors(_adapter_tensors(first), peft_adapter_tensors(local_first))
    _assert_same_tensors(_adapter_tensors(second), peft_adapter_tensors(local_second))


_OPTIMIZERS: dict[int, torch.optim.Optimizer] = {}


def _train_ours_once(
    base: Base, adapter: LoraAdapter, batch: tuple[torch.Tensor, ...]
) -> list[float]:
    optimizer = _OPTIMIZERS.setdefault(
        id(adapter), torch.optim.AdamW(adapter.parameters(), lr=0.01, weight_decay=0.01)
    )
    inputs, targets, weights = batch
    with adapter.applied():
        loss = token_cross_entropy(base.module(inputs).logits, targets, weights)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return [loss.item()]


def test_the_adapter_module_holds_only_the_adapter_under_peft_s_names(tmp_path: Path) -> None:
    folder = tiny_llama(tmp_path / "base")
    base = load_pretrained("tiny", folder)
    adapter = LoraAdapter(base.module, LoraConfig(4, 8, LLAMA_TARGETS))
    local = peft_model(folder, 4, 8, list(LLAMA_TARGETS), seed=0)
    peft_keys = [
        name.replace(".default", "") for name, p in local.named_parameters() if p.requires_grad
    ]
    assert list(adapter.state_dict()) == peft_keys
    assert [p for _, p in adapter.named_parameters()] == list(adapter.parameters())
    assert adapter.nbytes() == sum(4 * p.numel() for p in adapter.parameters())
    tokens = _batches(1, 1)[0][0]
    with torch.no_grad():
        for tensor in adapter.lora_b.values():
            tensor.normal_()
        with adapter.applied():
            expected = base.module(tokens).logits
        assert torch.equal(adapter(tokens), expected)
        twin = copy.deepcopy(adapter)
        assert twin.base is base.module  # the base is shared, never copied
        assert torch.equal(twin(tokens), expected)
        for tensor in twin.lora_b.values():
            tensor.zero_()
        assert torch.equal(twin(tokens), base.module(tokens).logits)
        assert torch.equal(adapter(tokens), expected)  # its own tensors
        twin.load_state_dict(adapter.state_dict())
        assert torch.equal(twin(tokens), expected)


def test_an_adapter_adds_nothing_to_another_base(tmp_path: Path) -> None:
    one = load_pretrained("one", tiny_llama(tmp_path / "one", seed=0))
    other = load_pretrained("other", tiny_llama(tmp_path / "other", seed=1))
    adapter = LoraAdapter(one.module, LoraConfig(2, 4, LLAMA_TARGETS))
    with torch.no_grad():
        for tensor in adapter.lora_b.values():
            tensor.fill_(1.0)
    tokens = _batches(1, 7)[0][0]
    with torch.no_grad():
        plain = other.module(tokens).logits
        with adapter.applied():
            assert torch.equal(other.module(tokens).logits, plain)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"rank": 0, "alpha": 1}, "lora.rank"),
        ({"rank": 4, "alpha": 0}, "lora.alpha"),
        ({"rank": 4, "alpha": float("nan")}, "lora.alpha"),
        ({"rank": 4, "alpha": 1, "dropout": 1.0}, "lora.dropout"),
        ({"rank": 4, "alpha": 1, "target_modules": ()}, "lora.target_modules"),
        ({"rank": 4, "alpha": 1, "target_modules": "q_proj"}, "lora.target_modules"),
    ],
)
def test_bad_configs_name_the_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        LoraConfig(**fields)  # type: ignore[arg-type]
    assert caught.value.field == field


@pytest.mark.parametrize("targets", [("no_such",), ("q_proj", "no_such"), ("embed_tokens",)])
def test_targets_that_are_not_linear_layers_of_the_base_are_refused(
    tmp_path: Path, targets: tuple[str, ...]
) -> None:
    base = load_pretrained("tiny", tiny_llama(tmp_path / "base"))
    with pytest.raises(InvalidArgumentError) as caught:
        LoraAdapter(base.module, LoraConfig(2, 2, targets))
    assert caught.value.field == "lora.target_modules"
