"""Base models: loaded once from a local folder or a registry spec, frozen, digested."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from llm_bases import VOCAB, load_local, tiny_gpt2, tiny_llama
from torch import nn

from gradserve.errors import InvalidArgumentError
from gradserve.server.models.bases import (
    from_spec,
    load_base,
    load_pretrained,
    parse_base_flag,
    tensor_digest,
)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_a_folder_loads_frozen_and_computes_as_transformers_does(
    tmp_path: Path, make: object
) -> None:
    folder = make(tmp_path / "base")  # type: ignore[operator]
    base = load_pretrained("tiny", folder)
    assert base.vocab_size == VOCAB
    assert base.source == str(folder)
    assert not base.module.training
    assert all(not p.requires_grad for p in base.module.parameters())
    local = load_local(folder).eval()
    tokens = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(base.module(tokens).logits, local(tokens).logits)


def test_the_digest_names_the_tensors(tmp_path: Path) -> None:
    first = load_pretrained("a", tiny_llama(tmp_path / "a", seed=0))
    again = load_pretrained("b", tmp_path / "a")
    other = load_pretrained("c", tiny_llama(tmp_path / "c", seed=1))
    assert first.digest == again.digest
    assert first.digest != other.digest
    assert len(first.digest) == 64
    with torch.no_grad():
        next(first.module.parameters()).view(-1)[0] += 1.0
    assert tensor_digest(first.module) != again.digest


def test_the_digest_covers_names_dtypes_and_shapes() -> None:
    weights = torch.arange(6, dtype=torch.float32)
    flat = nn.Module()
    flat.register_buffer("w", weights.clone())
    square = nn.Module()
    square.register_buffer("w", weights.clone().reshape(2, 3))
    renamed = nn.Module()
    renamed.register_buffer("v", weights.clone())
    half = nn.Module()
    half.register_buffer("w", weights.clone().to(torch.bfloat16))
    digests = {tensor_digest(m) for m in (flat, square, renamed, half)}
    assert len(digests) == 4


def test_a_registry_spec_serves_as_a_base() -> None:
    base = from_spec("mlp", "mlp:4-8-2")
    assert base.vocab_size is None
    assert all(not p.requires_grad for p in base.module.parameters())
    assert base.digest == from_spec("again", "mlp:4-8-2").digest
    assert load_base("m=mlp:4-8-2").digest == base.digest


def test_load_base_reads_a_folder_entry(tmp_path: Path) -> None:
    folder = tiny_llama(tmp_path / "base")
    base = load_base(f"tiny={folder}")
    assert (base.name, base.vocab_size) == ("tiny", VOCAB)


@pytest.mark.parametrize("entry", ["tiny", "=dir", "tiny=", "a b=dir", "x/y=dir"])
def test_malformed_flags_name_the_field(entry: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        parse_base_flag(entry)
    assert caught.value.field == "base_model"


def test_a_folder_without_config_or_safetensors_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"config\.json") as caught:
        load_pretrained("none", tmp_path)
    assert caught.value.field == "base_model"
    folder = tiny_llama(tmp_path / "base")
    for weights in folder.glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))  # pickled weights are never read
    with pytest.raises(InvalidArgumentError, match="safetensors"):
        load_pretrained("pickled", folder)
