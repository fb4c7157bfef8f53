"""One trainer's run on a connected server: its data, its plan and transport, the loop.

Every run goes through `run_training`: a lone trainer, --shared, one shard of --workers or
--shard-index; what differs is only the plan's sharding and versioning and the transport.
"""

from __future__ import annotations

from typing import TextIO

import torch

from gradserve.types import ModelInfo

from .config import TrainConfig
from .data import Dataset
from .gradient_client import GradientClient
from .graph import render_dot, render_tree
from .large_parameters import put_parameters
from .loop import train
from .parameter_files import read_parameters
from .plan import BatchSource, Shard, StepPlan, Versioning
from .recorder import Recorder, TrainSummary
from .server_data import upload_training_set
from .training_data import training_sets
from .transport import Transport
from .transport_stream import NAMED_REQUEST_BYTES, StreamTransport
from .transport_unary import UnaryTransport


def make_plan(
    config: TrainConfig, train_set: Dataset | BatchSource, on_server: str | None = None
) -> StepPlan:
    parallel = config.parallel
    if parallel.sharded:
        versioning = Versioning.AS_COMPUTED
    elif parallel.shared:
        versioning = Versioning.NONE
    else:
        versioning = Versioning.EXACT
    return StepPlan(
        train_set,
        config.schedule,
        config.data.seed,
        shard=Shard(parallel.shard_index, parallel.shard_count),
        versioning=versioning,
        on_server=on_server,
        step_seeds=config.data.step_seeds,
    )


def make_transport(
    client: GradientClient, config: TrainConfig, info: ModelInfo | None = None
) -> Transport:
    # A shard takes part in sync rounds, which the Train stream does not (the server refuses).
    if config.transport.kind == "unary" or config.parallel.sharded:
        return UnaryTransport(client)
    # Named batches: the server gathers a request's batches, at most its message limit of them.
    limit = info.max_message_bytes if info is not None else 2 * NAMED_REQUEST_BYTES
    named_bytes = min(NAMED_REQUEST_BYTES, max(limit // 2, 1 << 20))
    return StreamTransport(
        client, config.transport.steps_per_request, config.transport.window, named_bytes
    )


def run_training(
    client: GradientClient,
    config: TrainConfig,
    info: ModelInfo,
    recorder: Recorder,
    *,
    validate: bool = True,
    set_initial: bool = True,
    graph_out: TextIO | None = None,
) -> TrainSummary:
    """Train this process's part of the run. `set_initial`: set the initial parameters the
    data implies (a --workers child leaves that to its parent)."""
    train_set, validation_set, initial = training_sets(config, info)
    if config.data.init_from is not None:
        initial = read_parameters(config.data.init_from)
    if not set_initial or config.parallel.shard_index > 0:
        initial = {}
    # Step s of the run applies at version start_version + s (how the loop resumes).
    start_version = put_parameters(client, initial, info) if initial else info.model_version
    if isinstance(train_set, Dataset) and graph_out is not None:
        show_graph(client, train_set, config, graph_out)
    server_data = upload_training_set(client, config.transport.data_on_server, info, train_set)
    plan = make_plan(config, train_set, server_data.name if server_data else None)
    try:
        return train(
            client,
            plan,
            make_transport(client, config, info),
            recorder,
            validation_set=validation_set if validate else None,
            classification=info.target.dtype == torch.int64,
            initial=initial if plan.versioning is Versioning.EXACT else None,
            start_version=start_version,
            connect_timeout=config.connection.connect_timeout_seconds,
            upload=server_data.upload if server_data else None,
        )
    finally:
        # Datasets count against the server's budget for every run: not left behind. Only a
        # lone trainer's: shards and --shared trainers name one dataset together, and one
        # that ends first must not pull it from under the others.
        alone = not (config.parallel.sharded or config.parallel.shared)
        if server_data is not None and alone and not config.transport.keep_datasets:
            server_data.delete()


def show_graph(
    client: GradientClient, train_set: Dataset, config: TrainConfig, out: TextIO
) -> None:
    """The autograd graph of the first batch (in data order), as a tree and/or DOT."""
    output = config.output
    if not output.show_graph and output.graph_dot is None:
        return
    size = config.schedule.batch_size
    graph = client.describe_graph(
        train_set.inputs[:size], train_set.targets[:size], return_gradients=True
    )
    if output.show_graph:
        out.write(render_tree(graph))
    if output.graph_dot is not None:
        output.graph_dot.write_text(render_dot(graph))
