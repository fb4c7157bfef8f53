"""How every RPC finds its run (RunAccess), and the RPCs that manage runs: create, fork, list,
delete (RunRpcs).

RunAccess gives each RPC its run's ServedRun for the caller's principal, and checks the
`gradserve-run` metadata that clients send for proxies against the run the request names: a
proxy that placed the call by one name must not reach another run. RunRpcs is one of the
handlers the servicer (servicer.py) delegates to: decode, one call to the run registry,
encode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import grpc

from gradserve import serde_runs
from gradserve.errors import InvalidArgumentError
from gradserve.v1 import gradserve_pb2 as pb

from ..coordination.served_run import ServedRun
from ..datasets.registry import DatasetRegistry
from ..runs.adapter_specs import adapter_run_spec
from ..runs.forks import fork_plan
from ..runs.lifecycle import Run, RunSpec
from ..runs.names import check_run_name
from ..runs.principals import Principal, PrincipalTable
from ..runs.registry import RunRegistry

RUN_METADATA = "gradserve-run"


class RunAccess:
    """The run registry as the caller's principal sees it."""

    def __init__(self, runs: RunRegistry, principals: PrincipalTable) -> None:
        self.runs = runs
        self._principals = principals

    def principal(self, context: grpc.ServicerContext) -> Principal:
        return self._principals.of(context.invocation_metadata())

    @contextmanager
    def use(self, run: str, context: grpc.ServicerContext) -> Iterator[ServedRun]:
        """The run's ServedRun for the length of one call (loaded, never unloaded meanwhile)."""
        metadata = checked_metadata(run, context)
        with self.runs.use(run, self._principals.of(metadata)) as served:
            yield served

    def run_of(self, run: str, context: grpc.ServicerContext) -> Run:
        """The run itself (its datasets are keyed by it), loaded or not."""
        checked_metadata(run, context)
        return self.runs.run(run, self.principal(context))


class RunRpcs:
    def __init__(self, access: RunAccess, datasets: DatasetRegistry) -> None:
        self._access = access
        self._runs = access.runs
        self._datasets = datasets

    def CreateRun(
        self, request: pb.CreateRunRequest, context: grpc.ServicerContext
    ) -> pb.CreateRunResponse:
        wanted = serde_runs.run_request_from_proto(request)
        # An empty run (a name the server generates) under a header naming a run is refused
        # too: the generated name would hash to another replica than the header placed it on.
        checked_metadata(wanted.run, context)
        principal = self._access.principal(context)
        fork: Callable[[Run], None] | None = None
        if wanted.from_checkpoint:
            spec, fork = fork_plan(wanted, self._runs, principal)
        elif wanted.base_model:
            spec = adapter_run_spec(wanted, self._runs.bases)
        elif wanted.lora is not None:
            raise InvalidArgumentError("lora: only with base_model", field="lora")
        elif not wanted.model:
            raise InvalidArgumentError("model: a model spec is needed", field="model")
        elif wanted.with_optimizer_state:
            raise InvalidArgumentError(
                "with_optimizer_state: only with from_checkpoint", field="with_optimizer_state"
            )
        else:
            spec = RunSpec(
                model=wanted.model,
                loss=wanted.loss or None,
                optimizer=wanted.optimizer or "sgd",
                seed=wanted.seed if wanted.seed is not None else 0,
            )
        run = self._runs.create(
            wanted.run, spec, principal, request_id=wanted.request_id, fork=fork
        )
        with self._runs.use(run.name, principal) as served:
            # The room left for datasets, as GetModelInfo advertises it.
            info = dataclasses.replace(
                served.info(), run=run.name, dataset_bytes_available=self._datasets.available()
            )
        return serde_runs.created_run_to_proto(run.name, info)

    def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.ServicerContext
    ) -> pb.ListRunsResponse:
        return serde_runs.runs_to_proto(self._runs.list(self._access.principal(context)))

    def GetRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.GetRunResponse:
        run = self._access.run_of(request.run, context)
        held = self._datasets.list(run)
        details = self._runs.details(run, len(held), sum(dataset.bytes for dataset in held))
        return serde_runs.run_details_to_proto(details)

    def DeleteRun(
        self, request: pb.DeleteRunRequest, context: grpc.ServicerContext
    ) -> pb.DeleteRunResponse:
        # Its datasets go with it (they are keyed by the Run object).
        owner = self._access.run_of(request.run, context) if request.run else None
        if request.run:
            check_run_name(request.run)
        checked_metadata(request.run, context)
        deleted = self._runs.delete(
            request.run,
            self._access.principal(context),
            delete_checkpoints=request.delete_checkpoints,
        )
        if owner is not None:
            self._datasets.drop_owner(owner)
        return serde_runs.deleted_run_to_proto(deleted)


def checked_metadata(run: str, context: grpc.ServicerContext) -> Sequence[tuple[str, str | bytes]]:
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
