"""`--plot FILE.png`: a picture of the run: loss per batch, epoch means, validation loss and
accuracy. matplotlib is the optional `plot` extra; the Agg backend needs no display."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data import DataError

INSTALL_HINT = "pip install 'gradserve[plot]'"


@dataclass(frozen=True)
class PlotData:
    """The series drawn, as (x, y) points; x counts batches sent (epoch e ends at x = its
    last batch)."""

    batch_losses: list[tuple[float, float]]
    epoch_losses: list[tuple[float, float]]
    validation_losses: list[tuple[float, float]]
    accuracies: list[tuple[float, float]]


def plot_data(
    batch_losses: list[float],
    epoch_losses: list[float],
    validation_losses: list[float],
    accuracies: list[float],
) -> PlotData:
    batches_per_epoch = len(batch_losses) / max(1, len(epoch_losses))
    ends = [batches_per_epoch * (epoch + 1) for epoch in range(len(epoch_losses))]
    return PlotData(
        batch_losses=[(index + 1, loss) for index, loss in enumerate(batch_losses)],
        epoch_losses=list(zip(ends, epoch_losses, strict=True)),
        validation_losses=list(zip(ends, validation_losses, strict=False)),
        accuracies=list(zip(ends, accuracies, strict=False)),
    )


def write_plot(data: PlotData, path: Path, title: str = "") -> PlotData:
    """Draw `data` into a PNG at `path`; return what was drawn."""
    try:
        import matplotlib  # noqa: PLC0415 (an optional extra, imported on use)
    except ImportError:
        raise DataError(
            f"plot: --plot needs matplotlib, an optional extra: {INSTALL_HINT}"
        ) from None
    matplotlib.use("Agg")
    from matplotlib import pyplot  # noqa: PLC0415

    def unzip(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
        return [x for x, _ in points], [y for _, y in points]

    figure, loss_axes = pyplot.subplots(figsize=(8, 4.5), dpi=100)
    try:
        loss_axes.plot(*unzip(data.batch_losses), color="0.7", linewidth=0.8, label="batch loss")
        loss_axes.plot(*unzip(data.epoch_losses), "o-", color="C0", label="epoch mean loss")
        if data.validation_losses:
            loss_axes.plot(
                *unzip(data.validation_losses), "s--", color="C1", label="validation loss"
            )
        loss_axes.set_xlabel("batches")
        loss_axes.set_ylabel("loss")
        if data.batch_losses and min(y for _, y in data.batch_losses) > 0:
            loss_axes.set_yscale("log")
        handles, labels = loss_axes.get_legend_handles_labels()
        if data.accuracies:
            accuracy_axes = loss_axes.twinx()
            accuracy_axes.plot(
                *unzip(data.accuracies), "^-", color="C2", label="validation accuracy"
            )
            accuracy_axes.set_ylabel("accuracy")
            accuracy_axes.set_ylim(0.0, 1.0)
            more_handles, more_labels = accuracy_axes.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        loss_axes.legend(handles, labels, loc="lower left")
        if title:
            loss_axes.set_title(title)
        figure.tight_layout()
        try:
            figure.savefig(path, format="png")
        except OSError as error:
            raise DataError(f"plot: cannot write {path}: {error.strerror}") from None
    finally:
        pyplot.close(figure)
    return data


def require_matplotlib() -> None:
    """Fail before training, not after it, when --plot cannot be honoured."""
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        raise DataError(
            f"plot: --plot needs matplotlib, an optional extra: {INSTALL_HINT}"
        ) from None
