"""`gradserve-train` from configuration to exit: metrics served, the server connected, the
run trained (alone, --shared, one shard, or --workers), the results printed and pushed."""

from __future__ import annotations

import json
from typing import Any, TextIO

import torch

from gradserve.types import ModelInfo

from .config import TrainConfig
from .connection import connect
from .exit_codes import EXIT_OK
from .large_parameters import fetch_parameters
from .metrics import TrainMetrics
from .metrics_export import Linger, push_metrics, serve_metrics
from .parameter_files import write_parameters
from .plot import plot_data, require_matplotlib, write_plot
from .recorder import Recorder, TrainSummary
from .run_setup import prepare_run
from .session import run_training
from .workers import run_workers, shard_line, shard_report


def run(config: TrainConfig, out: TextIO, err: TextIO) -> int:
    human = err if config.output.json else out
    if config.output.plot is not None:
        require_matplotlib()
    metrics = TrainMetrics(config.metrics.run_id, config.embedded.model)
    serve_metrics(config.metrics, metrics.registry, err)
    warn_unused_flags(config, err)
    parallel = config.parallel
    reports: list[dict[str, Any]] = []
    sync_workers = parallel.workers if parallel.sharded else 0
    with connect(config, sync_workers=sync_workers) as (client, where):
        config = prepare_run(client, config)
        info = client.model_info()
        recorder = Recorder(
            metrics, output=config.output, epochs=config.schedule.epochs, human=human, progress=err
        )
        if parallel.workers > 1:
            summary, reports = run_workers(client, config, info, recorder)
        else:
            summary = run_training(client, config, info, recorder, graph_out=human)
        version, parameters = fetch_parameters(client, info)
    if config.output.save is not None:
        write_parameters(
            config.output.save,
            parameters,
            {"model": info.model_spec, "model_version": str(version)},
        )
    linger = Linger(config.metrics)
    linger.begin()
    if config.output.plot is not None:
        write_plot(
            plot_data(
                summary.batch_losses,
                summary.epoch_losses,
                summary.validation_losses,
                summary.accuracies,
            ),
            config.output.plot,
            title=f"{info.model_spec} ({info.loss}, {info.optimizer})",
        )
    if parallel.sharded and parallel.workers == 1:
        # One shard of several: its own report, as a --workers child gives it.
        report = shard_report(config, summary)
        print(json.dumps(report) if config.output.json else shard_line(report), file=out)
    else:
        for report in reports:
            print(shard_line(report), file=human)
        if info.model == "linear":
            w, b = parameters["w"].item(), parameters["b"].item()
            print(f"Trained w: {w:.3f}, b: {b:.3f}", file=human)
        elif not reports:
            print(f"Trained {info.model_spec}: last loss {summary.last_loss:.4f}", file=human)
        if config.output.json:
            result = run_summary(
                config,
                info,
                where=where,
                summary=summary,
                version=version,
                parameters=parameters,
                reports=reports,
            )
            print(json.dumps(result), file=out)
    push_metrics(config.metrics, metrics.registry)
    linger.wait()
    return EXIT_OK


def warn_unused_flags(config: TrainConfig, err: TextIO) -> None:
    """One line for the model flags a remote server's default run does not take: it was
    built from the server's own flags (with --run NAME they describe the run to create)."""
    given = config.embedded.given
    if config.connection.server is None or config.run.name or not given:
        return
    flags = ", ".join(sorted(set(given)))
    print(
        f"gradserve-train: warning: {flags} not applied: the server's default run has its "
        f"own model, optimizer and loss (--run NAME creates a run with yours)",
        file=err,
    )


def run_summary(
    config: TrainConfig,
    info: ModelInfo,
    *,
    where: str,
    summary: TrainSummary,
    version: int,
    parameters: dict[str, torch.Tensor],
    reports: list[dict[str, Any]],
) -> dict[str, Any]:
    """The --json summary: a run's, or with --workers the workers' (shard reports)."""
    # Exact values (float32 -> float is exact); only for small models.
    small = {
        name: value.flatten().tolist()
        for name, value in parameters.items()
        if value.numel() <= 1024
    }
    if reports:
        return {
            "server": where,
            "model": info.model_spec,
            "workers": config.parallel.workers,
            "model_version": version,
            "shards": reports,
            "validation_loss": summary.validation_loss,
            "accuracy": summary.accuracy,
            "parameters": small,
        }
    return {
        "server": where,
        "run": config.run.name,
        "model": info.model_spec,
        "epochs": config.schedule.epochs,
        "steps": summary.steps,
        "batches": summary.batches,
        "model_version": version,
        "last_loss": summary.last_loss,
        "epoch_losses": summary.epoch_losses,
        "validation_loss": summary.validation_loss,
        "accuracy": summary.accuracy,
        "accuracies": summary.accuracies,
        "seconds": summary.seconds,
        "parameters": small,
    }
