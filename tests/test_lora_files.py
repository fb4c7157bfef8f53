"""LoRA adapters in PEFT's layout: export loads in peft with the same logits; import of peft's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from llm_bases import VOCAB, load_local, peft_model, tiny_gpt2, tiny_llama
from peft import PeftModel
from safetensors.torch import load_file, save_file

from gradserve.errors import InvalidArgumentError
from gradserve.server.models.bases import load_pretrained
from gradserve.server.models.lora import ALL_LINEAR, LoraAdapter, LoraConfig
from gradserve.server.models.lora_files import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_peft,
    save_peft,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)


def _tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(seed))


def _randomise(adapter: LoraAdapter) -> None:
    """Nonzero lora_B (zero at init), so the logits depend on every tensor."""
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for tensor in adapter.parameters():
            tensor.copy_(torch.randn(tensor.shape, generator=generator))


@pytest.mark.parametrize(
    ("make", "targets"), [(tiny_llama, ("q_proj", "o_proj")), (tiny_gpt2, ALL_LINEAR)]
)
def test_an_exported_adapter_loads_in_peft_with_the_same_logits(
    tmp_path: Path, make: object, targets: tuple[str, ...] | str
) -> None:
    folder = make(tmp_path / "base")  # type: ignore[operator]
    base = load_pretrained("tiny", folder)
    adapter = LoraAdapter(base.module, LoraConfig(4, 8, targets, seed=3))
    _randomise(adapter)
    save_peft(adapter, tmp_path / "adapter", "tiny")
    tensors = load_file(str(tmp_path / "adapter" / WEIGHTS_FILE))
    for name in adapter.module_names:
        a = tensors[f"base_model.model.{name}.lora_A.weight"]
        b = tensors[f"base_model.model.{name}.lora_B.weight"]
        assert torch.equal(a, adapter.lora_a[name]) and a.shape[0] == 4
        assert torch.equal(b, adapter.lora_b[name]) and b.shape[1] == 4
    assert len(tensors) == 2 * len(adapter.module_names)
    loaded = PeftModel.from_pretrained(load_local(folder), str(tmp_path / "adapter"))
    with torch.no_grad(), adapter.applied():
        ours = base.module(_tokens()).logits
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=_tokens()).logits, ours)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_a_users_peft_adapter_imports_with_peft_s_logits(tmp_path: Path, make: object) -> None:
    folder = make(tmp_path / "base")  # type: ignore[operator]
    users = peft_model(folder, 3, 5, ALL_LINEAR, seed=4).eval()
    generator = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for parameter in users.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    users.save_pretrained(str(tmp_path / "users"))
    base = load_pretrained("tiny", folder)
    adapter = load_peft(base.module, tmp_path / "users")
    assert adapter.config.rank == 3 and adapter.config.alpha == 5
    with torch.no_grad(), adapter.applied():
        ours = base.module(_tokens(1)).logits
    with torch.no_grad():
        assert torch.equal(ours, users(input_ids=_tokens(1)).logits)


def _exported(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    base = load_pretrained("tiny", tiny_llama(tmp_path / "base"))
    save_peft(LoraAdapter(base.module, LoraConfig(2, 2, ("q_proj",))), tmp_path / "adapter", "t")
    return base.module, tmp_path / "adapter"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"use_dora": True}, "adapter.config.use_dora"),
        ({"use_rslora": True}, "adapter.config.use_rslora"),
        ({"bias": "all"}, "adapter.config.bias"),
        ({"peft_type": "IA3"}, "adapter.config.peft_type"),
        ({"rank_pattern": {"q_proj": 4}}, "adapter.config.rank_pattern"),
        ({"modules_to_save": ["lm_head"]}, "adapter.config.modules_to_save"),
        ({"r": "2"}, "adapter.config.r"),
        ({"lora_alpha": None}, "adapter.config.lora_alpha"),
        ({"r": 3}, "lora"),  # the tensors are rank 2
    ],
)
def test_configs_gradserve_does_not_compute_are_refused(
    tmp_path: Path, change: dict[str, object], field: str
) -> None:
    base, folder = _exported(tmp_path)
    document = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**document, **change}))
    with pytest.raises(InvalidArgumentError) as caught:
        load_peft(base, folder)
    assert caught.value.field == field


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: {k: v for k, v in t.items() if "lora_B" not in k},  # A without B
        lambda t: {k.replace("q_proj", "no_such"): v for k, v in t.items()},
        lambda t: {k.replace("q_proj", "embed_tokens"): v for k, v in t.items()},
        lambda t: {**t, "base_model.model.lm_head.weight": torch.zeros(2)},
        lambda t: {k: v.to(torch.int64) for k, v in t.items()},
        lambda t: {},
    ],
)
def test_tensors_not_in_peft_s_lora_layout_are_refused(tmp_path: Path, edit: object) -> None:
    base, folder = _exported(tmp_path)
    tensors = load_file(str(folder / WEIGHTS_FILE))
    save_file(edit(tensors), str(folder / WEIGHTS_FILE))  # type: ignore[operator]
    with pytest.raises(InvalidArgumentError) as caught:
        load_peft(base, folder)
    assert caught.value.field == "adapter.tensors"


def test_a_folder_without_the_files_or_with_bad_json_is_refused(tmp_path: Path) -> None:
    base, folder = _exported(tmp_path)
    (folder / CONFIG_FILE).write_text("{not json")
    with pytest.raises(InvalidArgumentError, match="not JSON"):
        load_peft(base, folder)
    (folder / CONFIG_FILE).write_text("[]")
    with pytest.raises(InvalidArgumentError, match="not a JSON object"):
        load_peft(base, folder)
    (folder / CONFIG_FILE).unlink()
    with pytest.raises(InvalidArgumentError, match=CONFIG_FILE) as caught:
        load_peft(base, folder)
    assert caught.value.field == "adapter"
