"""The run's data, fitted to the server's model: the training set (held, or a CSV streamed
from disk), the validation split, and the initial parameters to set first."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradserve.types import ModelInfo

from . import datasets
from .config import TrainConfig
from .csv_stream import CsvStream, open_for_model, should_stream
from .data import DataError, Dataset, read_csv, seed_data


def training_sets(
    config: TrainConfig, info: ModelInfo
) -> tuple[Dataset | CsvStream, Dataset | None, dict[str, torch.Tensor]]:
    """(training set, validation set, initial parameters) for this run."""
    if config.data.csv is not None and should_stream(config.data.csv, config.data.stream_csv):
        # Read from disk a batch at a time (open_for_model refuses what needs it held).
        return open_for_model(config, info), None, {}
    dataset, initial = load_data(config, info)
    train_set, validation_set = split(dataset, config.data.validation_split, config.data.seed)
    if config.data.dataset is not None:
        train_set, validation_set = datasets.standardize(train_set, validation_set)
    return train_set, validation_set, initial


def load_data(config: TrainConfig, info: ModelInfo) -> tuple[Dataset, dict[str, torch.Tensor]]:
    """The dataset, cast and shaped for the server's model, and the initial parameters to set."""
    initial: dict[str, torch.Tensor] = {}
    if config.data.dataset is not None:
        dataset = datasets.fit_to_model(
            datasets.load(config.data.dataset),
            info.input.shape,
            info.target.dtype,
            info.target.shape,
        )
    elif config.data.csv is None:
        seed = seed_data(config.data.seed, config.data.samples)
        dataset = seed.dataset
        auto_seed = (
            config.data.init == "auto" and info.model == "linear" and not config.parallel.shared
        )
        if config.data.init == "seed" or auto_seed:
            initial = {"w": seed.initial_w, "b": seed.initial_b}
    else:
        # Every value is checked against the model's dtypes here, naming its row and column:
        # finite in float64 is not enough for a float32 model, class indices must be >= 0.
        _, features, target = read_csv(
            config.data.csv,
            config.data.features,
            config.data.target,
            input_dtype=info.input.dtype,
            target_dtype=info.target.dtype,
        )
        if not info.target.dtype.is_floating_point:
            targets = target.to(info.target.dtype)
        else:
            targets = target.to(info.target.dtype).reshape(-1, 1)
        dataset = Dataset(features.to(info.input.dtype), targets)
        if config.data.init == "seed":
            raise DataError("data: --init seed is for the synthetic seed data only")
    check_shapes(dataset, info)
    return dataset, initial


def check_shapes(dataset: Dataset, info: ModelInfo) -> None:
    def fmt(shape: Sequence[int]) -> str:
        return "[" + ", ".join("N" if d == -1 else str(d) for d in shape) + "]"

    if tuple(dataset.inputs.shape[1:]) != info.input.shape[1:]:
        raise DataError(
            f"data: inputs have shape {fmt([-1, *dataset.inputs.shape[1:]])}, but the server's "
            f"model {info.model_spec} takes {fmt(info.input.shape)}"
        )
    if tuple(dataset.targets.shape[1:]) != info.target.shape[1:]:
        raise DataError(
            f"data: targets have shape {fmt([-1, *dataset.targets.shape[1:]])}, but the server's "
            f"model {info.model_spec} (loss {info.loss}) takes {fmt(info.target.shape)}"
        )


def split(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    if fraction <= 0:
        return dataset, None
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 1))
    held_out = max(1, int(len(dataset) * fraction))
    return dataset.subset(order[held_out:]), dataset.subset(order[:held_out])
