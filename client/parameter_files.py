"""Parameters in a file: safetensors, written by --save and `gradserve export`, read by
--init-from. Any safetensors reader loads them (no gradserve, no pickle)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .data import DataError

# The file name `gradserve export --out DIR` writes, as the Hugging Face ecosystem names a
# model's weights (transformers, diffusers and peft load DIR/model.safetensors).
EXPORT_FILE_NAME = "model.safetensors"


def write_parameters(
    path: Path, parameters: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write the tensors (made contiguous; safetensors stores row-major bytes) to `path`,
    replacing it whole: a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    tensors = {name: value.detach().contiguous() for name, value in parameters.items()}
    save_file(tensors, str(partial), metadata=dict(metadata or {}))
    partial.replace(path)


def read_parameters(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file at `path`; DataError naming the file when it is
    none."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise DataError(f"{path}: not a safetensors file ({error})") from None
