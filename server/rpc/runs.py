"""The RPCs that manage runs (create, fork, list, delete), and how every RPC finds its run.

Part of the GradientService servicer (servicer.py inherits it, through checkpoint_rpcs.py's
CheckpointRpcs, which holds the checkpoint RPCs): decode, one call to the run registry, encode. `_use` gives every other RPC its run's
coordinator for the caller's principal, and checks the `gradserve-run` metadata that clients
send for proxies against the run the request names: a proxy that placed the call by one name
must not reach another run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import grpc

from gradserve import serde, serde_runs
from gradserve.errors import InvalidArgumentError
from gradserve.v1 import gradserve_pb2 as pb

from ..coordination.coordinator import DirectCoordinator
from ..runs.forks import fork_plan
from ..runs.lifecycle import Run, RunSpec
from ..runs.principals import Principal, PrincipalTable
from ..runs.registry import RunRegistry, check_run_name

RUN_METADATA = "gradserve-run"


class RunRpcs:
    def __init__(self, runs: RunRegistry, principals: PrincipalTable) -> None:
        self._runs = runs
        self._principals = principals

    def _principal(self, context: grpc.ServicerContext) -> Principal:
        return self._principals.of(context.invocation_metadata())

    @contextmanager
    def _use(self, run: str, context: grpc.ServicerContext) -> Iterator[DirectCoordinator]:
        metadata = _checked_metadata(run, context)
        with self._runs.use(run, self._principals.of(metadata)) as coordinator:
            yield coordinator

    def CreateRun(
        self, request: pb.CreateRunRequest, context: grpc.ServicerContext
    ) -> pb.CreateRunResponse:
        # An empty run (a name the server generates) under a header naming a run is refused
        # too: the generated name would hash to another replica than the header placed it on.
        _checked_metadata(request.run, context)
        principal = self._principal(context)
        fork: Callable[[Run], None] | None = None
        if request.from_checkpoint:
            spec, fork = fork_plan(request, self._runs, principal)
        elif not request.model:
            raise InvalidArgumentError("model: a model spec is needed", field="model")
        elif request.with_optimizer_state:
            raise InvalidArgumentError(
                "with_optimizer_state: only with from_checkpoint", field="with_optimizer_state"
            )
        else:
            spec = RunSpec(
                model=request.model,
                loss=request.loss or None,
                optimizer=request.optimizer or "sgd",
                seed=request.seed if request.HasField("seed") else 0,
            )
        run = self._runs.create(
            request.run, spec, principal, request_id=request.request_id, fork=fork
        )
        with self._runs.use(run.name, principal) as coordinator:
            info = dataclasses.replace(coordinator.info(), run=run.name)
        return pb.CreateRunResponse(run=run.name, info=serde.model_info_to_proto(info))

    def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.ServicerContext
    ) -> pb.ListRunsResponse:
        return pb.ListRunsResponse(
            runs=[
                serde_runs.run_summary_to_proto(summary)
                for summary in self._runs.list(self._principal(context))
            ]
        )

    def DeleteRun(
        self, request: pb.DeleteRunRequest, context: grpc.ServicerContext
    ) -> pb.DeleteRunResponse:
        if request.run:
            check_run_name(request.run)
        _checked_metadata(request.run, context)
        deleted = self._runs.delete(
            request.run, self._principal(context), delete_checkpoints=request.delete_checkpoints
        )
        return pb.DeleteRunResponse(deleted_checkpoints=deleted)


def _checked_metadata(run: str, context: grpc.ServicerContext) -> Sequence[tuple[str, str | bytes]]:
    """The call's metadata, once its `gradserve-run` (if any) agrees with the run the body
    names: a proxy that placed the call by one name must not reach or make another run."""
    metadata = context.invocation_metadata() or ()
    for key, value in metadata:
        if key == RUN_METADATA and value != run:
            raise InvalidArgumentError(
                f"run: the request names {run[:80]!r} but its {RUN_METADATA} metadata "
                f"names {str(value)[:80]!r}",
                field="run",
            )
    return metadata
