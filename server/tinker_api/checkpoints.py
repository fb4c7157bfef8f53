"""Tinker's save_state / load_state(_with_optimizer) and the checkpoint listing, on run checkpoints.

`save_state(NAME)` is the run's named checkpoint NAME (SaveCheckpoint: adapter, optimizer state
and counters, digest-checked), at `tinker://MODEL_ID/weights/NAME`. `load_state` restores the
adapter with a fresh optimizer; `load_state_with_optimizer` restores the optimizer's state too
(LoadCheckpoint with_optimizer_state), so the next step is the uninterrupted run's, bitwise.
A path names a checkpoint of the same model; another model's is refused, naming the path.
`create_training_client_from_state(_with_optimizer)` (a load with a session, no model) makes a
new model from any checkpoint of the caller's runs: gradserve's fork (CreateRun from_checkpoint).
All need the server's --checkpoint-dir. The listing is `GET /training_runs/MODEL/checkpoints`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from gradserve.run_types import RunRequest

from ..runs.forks import fork_plan
from ..runs.principals import Principal
from ..runs.registry import RunRegistry
from .errors import bad_field
from .models import run_name_of
from .sessions import Session

KINDS = {"weights": "training", "sampler_weights": "sampler"}


def tinker_path(model_id: str, name: str, kind: str = "weights") -> str:
    return f"tinker://{model_id}/{kind}/{name}"


def parsed_path(path: object) -> tuple[str, str]:
    """(run name, checkpoint name) of a tinker://MODEL_ID/weights/NAME path."""
    if not isinstance(path, str) or not path.startswith("tinker://"):
        raise bad_field("path", "a tinker://MODEL_ID/weights/NAME path is needed")
    parts = path.removeprefix("tinker://").split("/")
    if len(parts) != 3 or parts[1] != "weights" or not parts[2]:
        raise bad_field("path", f"{path[:120]!r} is not tinker://MODEL_ID/weights/NAME")
    return run_name_of(parts[0]), parts[2]


def checkpoint_of(model_id: str, path: object) -> str:
    """The checkpoint name a tinker:// path names on `model_id`; refused otherwise."""
    run, name = parsed_path(path)
    if run != run_name_of(model_id):
        raise bad_field(
            "path",
            f"{str(path)[:120]!r} is another model's checkpoint; a model loads its own "
            "(ServiceClient.create_training_client_from_state makes a new model from it)",
        )
    return name


def create_from_state(
    runs: RunRegistry, principal: Principal, session: Session, body: Mapping[str, Any]
) -> dict[str, Any]:
    """A new model forked from a checkpoint (the SDK derives its id: SESSION:train:N)."""
    seq = body.get("model_seq_id")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise bad_field("model_seq_id", f"{seq!r} is not an integer")
    source, name = parsed_path(body.get("path"))
    with_optimizer = _flag(body)
    model_id = f"{session.session_id}:train:{seq}"
    wanted = RunRequest(
        run=run_name_of(model_id),
        base_model=str(body.get("base_model") or ""),
        from_checkpoint=f"{source}/{name}",
        with_optimizer_state=with_optimizer,
        request_id=f"tinker-{model_id}",
    )
    spec, fork = fork_plan(wanted, runs, principal)
    runs.create(wanted.run, spec, principal, request_id=wanted.request_id, fork=fork)
    return {"path": body["path"], "model_id": model_id, "type": "load_weights"}


def _flag(body: Mapping[str, Any]) -> bool:
    with_optimizer = body.get("optimizer")
    if not isinstance(with_optimizer, bool):
        raise bad_field("optimizer", "true or false is needed")
    return with_optimizer


def save_state(
    runs: RunRegistry, principal: Principal, model_id: str, body: Mapping[str, Any]
) -> dict[str, Any]:
    name = body.get("path")
    if not isinstance(name, str) or not name:
        raise bad_field("path", "save_state needs a name")
    with runs.use(run_name_of(model_id), principal) as served:
        if body.get("overwrite") and any(c.name == name for c in served.list_checkpoints()):
            served.delete_checkpoint(name)
        served.save_checkpoint(name)
    return {"path": tinker_path(model_id, name), "type": "save_weights"}


def load_state(
    runs: RunRegistry, principal: Principal, model_id: str, body: Mapping[str, Any]
) -> dict[str, Any]:
    name = checkpoint_of(model_id, body.get("path"))
    with_optimizer = _flag(body)
    with runs.use(run_name_of(model_id), principal) as served:
        served.load_checkpoint(name, with_optimizer_state=with_optimizer)
    return {"path": body["path"], "model_id": model_id, "type": "load_weights"}


def listing(runs: RunRegistry, principal: Principal, model_id: str) -> dict[str, Any]:
    with runs.use(run_name_of(model_id), principal) as served:
        saved = served.list_checkpoints()
    checkpoints = [
        {
            "checkpoint_id": f"weights/{summary.name}",
            "checkpoint_type": "training",
            "time": datetime.datetime.fromtimestamp(summary.saved_at, datetime.UTC).isoformat(),
            "tinker_path": tinker_path(model_id, summary.name),
        }
        for summary in saved
    ]
    return {"checkpoints": checkpoints, "cursor": None}
