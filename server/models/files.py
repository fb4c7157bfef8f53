"""JSON model descriptions (--model-file) -> the --model spec they stand for, and its loss.

{"model": "mlp", "sizes": [64, 128, 10], ...} becomes "mlp:64-128-10:..."; model_specs.py
parses the spec, so a file and a flag build exactly the same model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gradserve.errors import InvalidArgumentError

_FILE_KEYS = {
    "linear": {"model", "loss"},
    "mlp": {"model", "loss", "sizes", "activation", "dropout", "batch_norm"},
    "cnn": {"model", "loss", "input", "outputs", "channels", "activation", "dropout", "batch_norm"},
}


def spec_from_file(path: Path) -> tuple[str, str | None]:
    """(spec, loss) from a JSON file such as
    {"model": "mlp", "sizes": [64, 128, 10], "activation": "relu", "dropout": 0.1,
     "batch_norm": false, "loss": "cross_entropy"}
    or {"model": "cnn", "input": [1, 8, 8], "outputs": 10, "channels": [8, 16]},
    or {"model": "NAME", "options": {...}} for a registered factory."""
    where = f"model_file {path}"
    try:
        document = json.loads(path.read_text())
    except OSError as error:
        raise InvalidArgumentError(f"{where}: {error.strerror}", field="model_file") from None
    except json.JSONDecodeError as error:
        raise InvalidArgumentError(f"{where}: not JSON: {error}", field="model_file") from None
    if not isinstance(document, dict) or not isinstance(document.get("model"), str):
        raise InvalidArgumentError(
            f'{where}: expected an object with a "model" name', field="model_file"
        )
    name = document["model"]
    allowed = _FILE_KEYS.get(name, {"model", "loss", "options"})
    unknown = sorted(set(document) - allowed)
    if unknown:
        raise InvalidArgumentError(
            f"{where}: unknown keys for {name}: {', '.join(unknown)}", field="model_file"
        )
    loss = document.get("loss")
    if loss is not None and not isinstance(loss, str):
        raise InvalidArgumentError(f'{where}: "loss" must be a string', field="model_file")
    try:
        parts = [name, *_file_parts(name, document)]
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(f"{where}: {error}", field="model_file") from None
    return ":".join(parts), loss


def _joined(value: Any, separator: str, key: str) -> str:
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise TypeError(f'"{key}" must be a list of integers')
    return separator.join(map(str, value))


def _file_parts(name: str, document: dict[str, Any]) -> list[str]:
    if name == "linear":
        return []
    if name not in _FILE_KEYS:
        options = document.get("options", {})
        if not isinstance(options, dict):
            raise TypeError('"options" must be an object')
        return [f"{key}={value}" for key, value in options.items()]
    if name == "mlp":
        parts = [_joined(document.get("sizes"), "-", "sizes")]
    else:
        outputs = document.get("outputs")
        if not isinstance(outputs, int):
            raise TypeError('"outputs" must be an integer')
        parts = [f"{_joined(document.get('input'), 'x', 'input')}-{outputs}"]
        if "channels" in document:
            parts.append("channels=" + _joined(document["channels"], "-", "channels"))
    if "activation" in document:
        parts.append(str(document["activation"]))
    if "dropout" in document:
        parts.append(f"dropout={document['dropout']}")
    if document.get("batch_norm"):
        parts.append("batchnorm")
    return parts
