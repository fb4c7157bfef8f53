"""`python client/train.py`: train a model on a gradserve server and export the loss.

With no --server it starts an embedded server on a free loopback port, so the first run needs
nothing else. Exit codes: 0 done; 1 training failed (diverged, rejected by the server);
2 bad usage or data; 3 server unreachable.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

import torch
from prometheus_client import push_to_gateway, start_http_server

from gradserve.client import datasets
from gradserve.client.config import TrainConfig, parse_args
from gradserve.client.csv_stream import CsvStream, open_for_model, should_stream
from gradserve.client.data import DataError, Dataset, read_csv, seed_data
from gradserve.client.gradient_client import GradientClient, ModelInfo, RetryPolicy
from gradserve.client.metrics import TrainMetrics
from gradserve.client.plot import plot_data, require_matplotlib, write_plot
from gradserve.client.progress import ProgressBar
from gradserve.client.resume import ResumeError, train_resumable
from gradserve.client.security import bearer_metadata, channel_credentials, read_token
from gradserve.client.stream_trainer import train_streamed
from gradserve.client.trainer import EpochReport, TrainingDiverged, train
from gradserve.errors import GradserveError, UnavailableError
from gradserve.server.app import create_server
from gradserve.server.config import ServerConfig

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class UsageError(Exception):
    pass


@contextmanager
def connect(config: TrainConfig) -> Iterator[tuple[GradientClient, str]]:
    """A client to --server, or to an embedded server that lives as long as the block."""
    embedded = None
    target = config.server
    if target is None:
        embedded = create_server(
            ServerConfig(
                host="127.0.0.1",
                port=0,
                metrics_port=0,
                model=config.model,
                loss=config.loss,
                optimizer=config.optimizer,
                seed=config.seed,
                shutdown_grace_seconds=1.0,
            )
        )
        target = embedded.address
    client = GradientClient(
        target,
        timeout=config.timeout_seconds,
        retry=RetryPolicy(
            max_attempts=config.retry_attempts, max_backoff=config.retry_max_backoff_seconds
        ),
        credentials=channel_credentials(config.tls_ca, config.tls_cert, config.tls_key),
        metadata=bearer_metadata(read_token(config.token_file)),
    )
    try:
        yield client, ("embedded " if embedded else "") + target
    finally:
        client.close()
        if embedded is not None:
            embedded.stop(0)


def load_data(config: TrainConfig, info: ModelInfo) -> tuple[Dataset, dict[str, torch.Tensor]]:
    """The dataset, cast and shaped for the server's model, and the initial parameters to set."""
    initial: dict[str, torch.Tensor] = {}
    if config.dataset is not None:
        dataset = datasets.fit_to_model(
            datasets.load(config.dataset), info.input.shape, info.target.dtype, info.target.shape
        )
    elif config.csv is None:
        seed = seed_data(config.seed, config.samples)
        dataset = seed.dataset
        auto_seed = config.init == "auto" and info.model == "linear" and not config.shared
        if config.init == "seed" or auto_seed:
            initial = {"w": seed.initial_w, "b": seed.initial_b}
    else:
        _, features, target = read_csv(config.csv, config.features, config.target)
        if info.target.dtype in (torch.int64, torch.int32):
            if not bool((target == target.round()).all()):
                raise DataError(
                    f"data: the model's loss {info.loss} needs integer class targets; "
                    f"column {config.target or 'target'} has fractions"
                )
            targets = target.to(info.target.dtype)
        else:
            targets = target.to(info.target.dtype).reshape(-1, 1)
        dataset = Dataset(features.to(info.input.dtype), targets)
        if config.init == "seed":
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


def run(config: TrainConfig, out: TextIO, err: TextIO) -> int:
    if config.workers > 1 or config.shard_count > 1:
        from gradserve.client.workers import run_sharded  # noqa: PLC0415 (workers imports us)

        return run_sharded(config, out, err)
    human = err if config.json else out
    if config.plot is not None:
        require_matplotlib()
    metrics = TrainMetrics(config.run_id, config.model)
    if config.metrics_port:
        try:
            start_http_server(
                config.metrics_port, addr=config.metrics_host, registry=metrics.registry
            )
        except OSError as error:
            # Port 8000 is a common default: say which port, and how to move or drop it.
            raise OSError(
                f"cannot serve /metrics on {config.metrics_host}:{config.metrics_port}: "
                f"{error.strerror or error} (--metrics-port PORT, or 0 for none)"
            ) from None
    with connect(config) as (client, where):
        client.wait_until_ready(config.connect_timeout_seconds)
        info = client.model_info()
        train_set: Dataset | CsvStream
        initial: dict[str, torch.Tensor]
        if config.csv is not None and should_stream(config.csv, config.stream_csv):
            # Read from disk a batch at a time (open_for_model refuses what needs it held).
            train_set, validation_set, initial = open_for_model(config, info), None, {}
        else:
            dataset, initial = load_data(config, info)
            train_set, validation_set = split(dataset, config.validation_split, config.seed)
            if config.dataset is not None:
                train_set, validation_set = datasets.standardize(train_set, validation_set)
        # Step s of the run applies at version start_version + s (how the loops resume).
        start_version = client.set_parameters(initial) if initial else info.model_version
        if isinstance(train_set, Dataset) and (config.show_graph or config.graph_dot is not None):
            show_graph(client, train_set, config, human)
        bar = ProgressBar(config.epochs, err, config.progress)

        def on_epoch(report: EpochReport) -> None:
            bar.update(report.epoch + 1, report.last_loss)
            if report.epoch % config.log_every == 0:
                line = f"Epoch {report.epoch}, Loss: {report.last_loss:.4f}"
                if report.validation_loss is not None:
                    line += f", Validation loss: {report.validation_loss:.4f}"
                if report.accuracy is not None:
                    line += f", Accuracy: {report.accuracy:.3f}"
                bar.write(line, human)

        # The loops: the stream (default) or unary calls; a lone trainer's steps carry the
        # version they expect and replay exactly after a server restart (not --shared, and not
        # a CSV read from disk as it goes, which cannot restart at an arbitrary step).
        common: dict[str, Any] = {
            "validation_set": validation_set,
            "classification": info.target.dtype == torch.int64,
            "on_epoch": on_epoch,
        }
        resumable: dict[str, Any] = {"initial": initial, "start_version": start_version}
        if config.transport == "stream":
            summary = train_streamed(
                client,
                train_set,
                config,
                metrics,
                **common,
                **resumable,
                exclusive=not config.shared,
            )
        elif isinstance(train_set, Dataset) and not config.shared:
            summary = train_resumable(client, train_set, config, metrics, **common, **resumable)
        else:
            summary = train(client, train_set, config, metrics, **common)
        bar.close()
        version, parameters = client.get_parameters()
    if config.plot is not None:
        write_plot(
            plot_data(
                summary.batch_losses,
                summary.epoch_losses,
                summary.validation_losses,
                summary.accuracies,
            ),
            config.plot,
            title=f"{info.model_spec} ({info.loss}, {info.optimizer})",
        )
    if info.model == "linear":
        print(
            f"Trained w: {parameters['w'].item():.3f}, b: {parameters['b'].item():.3f}", file=human
        )
    else:
        print(f"Trained {info.model_spec}: last loss {summary.last_loss:.4f}", file=human)
    if config.json:
        result: dict[str, Any] = {
            "server": where,
            "model": info.model_spec,
            "epochs": config.epochs,
            "steps": summary.steps,
            "batches": summary.batches,
            "model_version": version,
            "last_loss": summary.last_loss,
            "epoch_losses": summary.epoch_losses,
            "validation_loss": summary.validation_loss,
            "accuracy": summary.accuracy,
            "accuracies": summary.accuracies,
            "seconds": summary.seconds,
            # Exact values (float32 -> float is exact); only for small models.
            "parameters": {
                name: value.flatten().tolist()
                for name, value in parameters.items()
                if value.numel() <= 1024
            },
        }
        print(json.dumps(result), file=out)
    if config.pushgateway:
        try:
            push_to_gateway(
                config.pushgateway,
                job="gradserve_train",
                registry=metrics.registry,
                grouping_key={"run_id": config.run_id},
            )
        except OSError as error:
            reason = getattr(error, "reason", None) or error.strerror or error
            raise OSError(
                f"cannot push to the Pushgateway at {config.pushgateway}: {reason}"
            ) from None
    if config.metrics_port and config.linger_seconds > 0:
        linger(config.linger_seconds)
    return EXIT_OK


def show_graph(
    client: GradientClient, train_set: Dataset, config: TrainConfig, out: TextIO
) -> None:
    """The autograd graph of the first batch (in data order), as a tree and/or DOT."""
    from gradserve.client.graph import render_dot, render_tree  # noqa: PLC0415 (cycle)

    graph = client.describe_graph(
        train_set.inputs[: config.batch_size],
        train_set.targets[: config.batch_size],
        return_gradients=True,
    )
    if config.show_graph:
        out.write(render_tree(graph))
    if config.graph_dot is not None:
        config.graph_dot.write_text(render_dot(graph))


def linger(seconds: float) -> None:
    """Keep /metrics served so a scrape sees the final values; SIGTERM/SIGINT end it early."""
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    done.wait(seconds)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        return run(config, sys.stdout, sys.stderr)
    except DataError as error:
        print(f"gradserve-train: {error}", file=sys.stderr)
        return EXIT_USAGE
    except UnavailableError as error:
        print(f"gradserve-train: cannot reach the server: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (TrainingDiverged, ResumeError) as error:
        print(f"gradserve-train: {error}", file=sys.stderr)
        return EXIT_FAILED
    except GradserveError as error:
        where = f" ({error.field})" if error.field else ""
        print(
            f"gradserve-train: the server refused: {error.code.name}{where}: {error}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except OSError as error:
        print(f"gradserve-train: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
