"""The plain types of runs and their checkpoints: what CreateRun takes, what ListRuns and GetRun
show, what a checkpoint saves, lists and loads, and the state digest.

Beside gradserve.types (the training types) as pass_types.py and graph_types.py are; the same
rule holds: no protobuf here, serde_runs.py converts them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoraRequest:
    """A LoRA adapter CreateRun asks for (docs/adapters.md); empty targets: all linear layers."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...] = ()
    dropout: float = 0.0


@dataclass(frozen=True)
class RunRequest:
    """What CreateRun asks for: a fresh run of a model, or a fork of a checkpoint."""

    # "" to have the server name it.
    run: str = ""
    model: str = ""
    loss: str = ""
    optimizer: str = ""
    # None: the default (0, or a fork's source's seed).
    seed: int | None = None
    # "RUN/NAME" of a checkpoint to fork; "" for a fresh run.
    from_checkpoint: str = ""
    with_optimizer_state: bool = False
    request_id: str = ""
    # An adapter run: the base the operator serves, and the adapter over it.
    base_model: str = ""
    lora: LoraRequest | None = None


@dataclass(frozen=True)
class RunSummary:
    """One run as ListRuns shows it."""

    # "" for the default run.
    run: str
    model_spec: str
    optimizer: str
    model_version: int
    # False while the run is unloaded (idle, checkpointed); its next call loads it back.
    loaded: bool
    parameter_bytes: int
    # An adapter run's base model and its digest ("" for a full model).
    base_model: str = ""
    base_model_digest: str = ""
    # The principal that created it ("" for the default run): names are per principal, and an
    # admin's list holds every principal's runs.
    owner: str = ""


@dataclass(frozen=True)
class RunDetails:
    """One run as GetRun shows it: its summary, and who and what it holds on the server."""

    summary: RunSummary
    # The principal that created it ("" for the default run).
    owner: str
    # The shared base it trains over; "" for a run that holds its whole model.
    base_model: str
    checkpoints: int
    datasets: int
    dataset_bytes: int
    # The loss its batches use when they name none ("" for the model's default).
    loss: str


@dataclass(frozen=True)
class SavedCheckpoint:
    """What SaveCheckpoint wrote."""

    name: str
    model_version: int
    accumulated_batches: int
    # The run's state digest at that moment ("" from a server that does not compute it).
    digest: str


@dataclass(frozen=True)
class CheckpointSummary:
    """One checkpoint of a run, as ListCheckpoints shows it."""

    name: str
    model_version: int
    accumulated_batches: int
    digest: str
    # Seconds since the Unix epoch.
    saved_at: float


@dataclass(frozen=True)
class LoadResult:
    """What LoadCheckpoint restored."""

    # The run's new version: its version before the load plus one.
    model_version: int
    # The version the checkpoint was saved at.
    checkpoint_version: int
    restored_parameters: int
    restored_buffers: int
    restored_optimizer_state: bool
    discarded_batches: int
    # The run's state digest after the load.
    digest: str
    # Server side: answered from the request-id window (metrics only).
    replayed: bool = False


@dataclass(frozen=True)
class StateDigest:
    """A run's state digest (lowercase hex SHA-256) and the version it covers."""

    digest: str
    model_version: int
