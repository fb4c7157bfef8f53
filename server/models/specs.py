"""Model specs the operator gives the server (flag, JSON file, or a trusted factory) -> a Model.

Grammar of `--model`, options separated by ':' in any order after the shape:
  linear
  mlp:IN-H1-...-OUT[:relu|tanh|sigmoid|gelu][:dropout=P][:batchnorm]
  cnn:CxHxW-OUT[:relu|...][:channels=8-16][:dropout=P][:batchnorm]
  NAME[:key=value...]      a factory registered with --model-factory NAME=package.module:function

Factories are imported and called on the server only, from its own configuration: a client
never names code, it only sees the model the operator chose (GetModelInfo).

Size is known before memory is spent: `measure` builds a spec on torch's meta device (shapes,
no storage), so a run's bytes are reserved against the budget before its model exists, and
`build` refuses a spec past MAX_MODEL_ELEMENTS or MAX_LAYERS before allocating anything. A
factory must therefore build under `torch.device("meta")`, as plain nn.Module code does.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradserve.errors import InvalidArgumentError

from ..config import ModelConfig
from .files import spec_from_file
from .model import ACTIVATIONS, LOSSES, BatchSpec, LinearRegression, Loss, Model
from .networks import build_cnn, build_mlp

BUILT_IN = ("linear", "mlp", "cnn")
# Models whose outputs are class scores; their default loss is cross_entropy.
CLASSIFIERS = ("mlp", "cnn")
DEFAULT_MLP = "784-256-10"
DEFAULT_CNN_CHANNELS = (8, 16)
# The grammar's bounds: past them a spec is refused before anything is built. 2**34 elements
# is 64 GiB of float32, beyond any --max-run-parameter-bytes this server could honour; the
# layer bound keeps even the meta build of a spec short.
MAX_MODEL_ELEMENTS = 1 << 34
MAX_LAYERS = 64


def default_loss(model_name: str) -> str:
    """The one default-loss rule: cross_entropy for classifiers, mse for everything else."""
    return "cross_entropy" if model_name in CLASSIFIERS else "mse"


@dataclass(frozen=True)
class FactoryModel:
    """What a --model-factory function returns: the module, the shape of one sample, and the
    loss used when --loss (or CreateRun's loss) names none (None: mse)."""

    module: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_dtype: torch.dtype = torch.float32
    loss: str | None = None


@dataclass(frozen=True)
class _Options:
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = False
    channels: tuple[int, ...] = DEFAULT_CNN_CHANNELS
    extra: dict[str, str] = field(default_factory=dict)


def _bad(spec: str, problem: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"model spec {spec!r}: {problem}", field="model")


def _ints(text: str, separator: str, spec: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(separator)]
    except ValueError:
        raise _bad(spec, f"{what} must be integers joined by {separator!r}") from None
    if any(value < 1 or value > 1_000_000 for value in values):
        raise _bad(spec, f"{what} must each be in [1, 1000000]")
    if len(values) > MAX_LAYERS + 1:
        raise _bad(spec, f"{what}: at most {MAX_LAYERS + 1} values")
    return values


def _parse_options(spec: str, items: Sequence[str], allowed: Sequence[str]) -> _Options:
    values: dict[str, Any] = {}
    for item in items:
        key, has_value, value = item.partition("=")
        if not has_value and key in ACTIVATIONS:
            key, value = "activation", key
        elif not has_value and key in ("batchnorm", "batch_norm"):
            key, value = "batch_norm", "true"
        if key not in allowed:
            raise _bad(
                spec,
                f"unknown option {item!r}; options: {', '.join(allowed)} "
                f"(activations: {', '.join(ACTIVATIONS)})",
            )
        if key in values:
            raise _bad(spec, f"option {key!r} is given twice")
        values[key] = value
    options: dict[str, Any] = {}
    if "activation" in values:
        if values["activation"] not in ACTIVATIONS:
            raise _bad(spec, f"unknown activation {values['activation']!r}")
        options["activation"] = values["activation"]
    if "dropout" in values:
        try:
            options["dropout"] = float(values["dropout"])
        except ValueError:
            options["dropout"] = math.nan
        if not 0.0 <= options["dropout"] < 1.0:
            raise _bad(spec, f"dropout={values['dropout']} must be a number in [0, 1)")
    if "batch_norm" in values:
        if values["batch_norm"].lower() not in ("true", "false", "1", "0"):
            raise _bad(spec, f"batchnorm={values['batch_norm']} must be true or false")
        options["batch_norm"] = values["batch_norm"].lower() in ("true", "1")
    if "channels" in values:
        options["channels"] = tuple(_ints(values["channels"], "-", spec, "channels"))
    return _Options(**options)


def _canonical(name: str, shape: str, options: _Options, with_channels: bool) -> str:
    parts = [name, shape, options.activation]
    if with_channels:
        parts.append("channels=" + "-".join(map(str, options.channels)))
    if options.dropout:
        parts.append(f"dropout={options.dropout:g}")
    if options.batch_norm:
        parts.append("batchnorm")
    return ":".join(parts)


def _assemble(
    name: str,
    spec: str,
    module: nn.Module,
    loss: Loss,
    *,
    input_spec: BatchSpec,
    output_shape: tuple[int, ...],
) -> Model:
    if loss.class_targets:
        if len(output_shape) != 1:
            raise _bad(
                spec, f"loss {loss.name} needs one score per class, got {list(output_shape)}"
            )
        targets = BatchSpec(torch.int64, ())
        return Model(name, spec, module, loss, input_spec, targets, num_classes=output_shape[0])
    return Model(name, spec, module, loss, input_spec, BatchSpec(torch.float32, output_shape))


def _linear(spec: str, args: list[str], loss: Loss, seed: int | None) -> Model:
    if args:
        raise _bad(spec, "linear takes no arguments")
    if loss.class_targets:
        raise InvalidArgumentError(f"loss: {loss.name} needs a classifier", field="loss")
    if seed is not None:
        torch.manual_seed(seed)
    sample = BatchSpec(torch.float32, (1,))
    return Model("linear", "linear", LinearRegression(), loss, sample, sample)


def _mlp(spec: str, args: list[str], loss: Loss, seed: int | None) -> Model:
    sizes = _ints(args[0] if args else DEFAULT_MLP, "-", spec, "layer sizes")
    if len(sizes) < 2:
        raise _bad(spec, "need at least two layer sizes, like 64-128-10")
    options = _parse_options(spec, args[1:], ("activation", "dropout", "batch_norm"))
    if seed is not None:
        torch.manual_seed(seed)
    module = build_mlp(
        sizes,
        ACTIVATIONS[options.activation],
        dropout=options.dropout,
        batch_norm=options.batch_norm,
    )
    full = _canonical("mlp", "-".join(map(str, sizes)), options, with_channels=False)
    inputs = BatchSpec(torch.float32, (sizes[0],))
    return _assemble("mlp", full, module, loss, input_spec=inputs, output_shape=(sizes[-1],))


def _cnn(spec: str, args: list[str], loss: Loss, seed: int | None) -> Model:
    if not args:
        raise _bad(spec, "cnn needs an input shape and outputs, like cnn:1x8x8-10")
    image, dash, outputs_text = args[0].partition("-")
    dims = _ints(image, "x", spec, "the input shape CxHxW")
    if len(dims) != 3 or not dash:
        raise _bad(spec, "cnn needs CxHxW-OUTPUTS, like cnn:1x8x8-10")
    (outputs,) = _ints(outputs_text, "-", spec, "outputs")
    options = _parse_options(spec, args[1:], ("activation", "channels", "dropout", "batch_norm"))
    if seed is not None:
        torch.manual_seed(seed)
    channels, height, width = dims
    module = build_cnn(
        (channels, height, width),
        outputs,
        options.channels,
        ACTIVATIONS[options.activation],
        dropout=options.dropout,
        batch_norm=options.batch_norm,
    )
    full = _canonical("cnn", f"{image}-{outputs}", options, with_channels=True)
    inputs = BatchSpec(torch.float32, (channels, height, width))
    return _assemble("cnn", full, module, loss, input_spec=inputs, output_shape=(outputs,))


def load_factories(entries: Sequence[str]) -> dict[str, Callable[..., Any]]:
    """Import `NAME=package.module:function` entries (trusted server configuration)."""
    factories: dict[str, Callable[..., Any]] = {}
    for entry in entries:
        name, _, target = entry.partition("=")
        module_name, _, function_name = target.partition(":")
        if not name.isidentifier() or not module_name or not function_name:
            raise InvalidArgumentError(
                f"model_factory {entry!r}: expected NAME=package.module:function",
                field="model_factory",
            )
        if name in BUILT_IN or name in factories:
            raise InvalidArgumentError(
                f"model_factory {entry!r}: the name {name!r} is taken", field="model_factory"
            )
        # Console scripts put their own folder first on sys.path, not the current one: import
        # from the current folder as `python -m` does (the operator's own module).
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            function = getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as error:
            raise InvalidArgumentError(
                f"model_factory {entry!r}: cannot import it: {error}", field="model_factory"
            ) from None
        if not callable(function):
            raise InvalidArgumentError(
                f"model_factory {entry!r}: {function_name} is not callable", field="model_factory"
            )
        factories[name] = function
    return factories


def _factory(
    name: str,
    spec: str,
    args: list[str],
    function: Callable[..., Any],
    *,
    loss: Loss,
    seed: int | None,
    chosen_loss: bool = False,
) -> Model:
    options = {}
    for item in args:
        key, has_value, value = item.partition("=")
        if not has_value or not key:
            raise _bad(spec, f"factory options are key=value, got {item!r}")
        options[key] = value
    if seed is not None:
        torch.manual_seed(seed)
    try:
        built = function(**options)
    except (TypeError, ValueError) as error:
        raise _bad(spec, f"factory {name} refused the options: {error}") from None
    if not isinstance(built, FactoryModel) or not isinstance(built.module, nn.Module):
        raise _bad(spec, f"factory {name} must return gradserve.server.models.specs.FactoryModel")
    if built.loss is not None and not chosen_loss:
        loss = _known_loss(built.loss)
    inputs = BatchSpec(built.input_dtype, tuple(built.input_shape))
    return _assemble(
        name, spec, built.module, loss, input_spec=inputs, output_shape=tuple(built.output_shape)
    )


@dataclass(frozen=True)
class ModelSize:
    elements: int
    bytes: int


def measure(spec: str, loss_name: str | None = None, *, factories: Sequence[str] = ()) -> ModelSize:
    """Elements and bytes of the parameters and buffers of the model a spec names, without
    allocating them: built on the meta device (no seed: the global RNG is left alone)."""
    try:
        with torch.device("meta"):
            model = _build(spec, loss_name, None, factories=factories)
    except (RuntimeError, ValueError, OverflowError, NotImplementedError) as error:
        raise _bad(spec, f"cannot be sized before it is built: {error}") from None
    tensors = [*model.module.parameters(), *model.module.buffers()]
    return ModelSize(
        sum(tensor.numel() for tensor in tensors),
        sum(tensor.numel() * tensor.element_size() for tensor in tensors),
    )


def build(
    spec: str,
    loss_name: str | None = None,
    seed: int | None = 0,
    *,
    factories: Sequence[str] = (),
) -> Model:
    """Build the model a spec names; InvalidArgumentError naming the problem otherwise,
    before anything is allocated when the spec is past the grammar's bounds."""
    size = measure(spec, loss_name, factories=factories)
    if size.elements > MAX_MODEL_ELEMENTS:
        raise _bad(
            spec,
            f"{size.elements} parameter elements; a model spec describes at most "
            f"{MAX_MODEL_ELEMENTS}",
        )
    return _build(spec, loss_name, seed, factories=factories)


def _build(
    spec: str, loss_name: str | None, seed: int | None, *, factories: Sequence[str]
) -> Model:
    registered = load_factories(factories)
    name, *args = spec.split(":")
    if name not in BUILT_IN and name not in registered:
        known = ", ".join((*BUILT_IN, *registered))
        raise InvalidArgumentError(f"model: unknown model {name!r}; known: {known}", field="model")
    loss = _known_loss(loss_name or default_loss(name))
    if name == "linear":
        return _linear(spec, args, loss, seed)
    if name == "mlp":
        return _mlp(spec, args, loss, seed)
    if name == "cnn":
        return _cnn(spec, args, loss, seed)
    function = registered[name]
    return _factory(name, spec, args, function, loss=loss, seed=seed, chosen_loss=bool(loss_name))


def _known_loss(name: str) -> Loss:
    loss = LOSSES.get(name)
    if loss is None:
        raise InvalidArgumentError(
            f"loss: unknown loss {name!r}; known: {', '.join(LOSSES)}", field="loss"
        )
    return loss


# -- device -----------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """torch.device for `cpu` or `cuda[:N]`; a clear error when CUDA is asked for but absent."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidArgumentError(
            f"device: unknown device {name!r}; use cpu or cuda[:N]", field="device"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise InvalidArgumentError(
            f"device: {name!r} is not supported; use cpu or cuda[:N]", field="device"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgumentError(
                f"device: {name} was asked for, but this torch build sees no CUDA device "
                f"(torch {torch.__version__}, CUDA {torch.version.cuda or 'not built in'})",
                field="device",
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidArgumentError(
                f"device: {name}: only {torch.cuda.device_count()} CUDA device(s)", field="device"
            )
    return device


def _configured_spec(config: ModelConfig) -> tuple[str, str | None]:
    """A model file replaces the --model spec; its loss applies unless --loss is given."""
    spec, loss = config.spec, config.loss
    if config.model_file is not None:
        spec, file_loss = spec_from_file(Path(config.model_file))
        loss = loss or file_loss
    return spec, loss


def measure_configured(config: ModelConfig) -> ModelSize:
    """`measure` for the model a configuration names (nothing allocated)."""
    spec, loss = _configured_spec(config)
    return measure(spec, loss, factories=config.model_factories)


def build_configured(config: ModelConfig) -> Model:
    """The server's model from its configuration, on its device."""
    where = resolve_device(config.device)
    spec, loss = _configured_spec(config)
    built = build(spec, loss, config.seed, factories=config.model_factories)
    built.module.to(where)
    return built
