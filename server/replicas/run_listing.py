"""ListRuns through the proxy: every replica's runs in one answer, as one server would give it.

nginx sends ListRuns (it names no run, so no replica) to the supervisor, which asks every
replica with the caller's metadata (its token decides what each replica shows) and merges the
answers, sorted by name and owner. The default run listed is replica 0's: calls without a run
header go there, so the other replicas' default runs cannot be reached through the proxy and
are left out. A replica's refusal is passed on, prefixed with which replica said it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from gradserve.defaults import SERVICE_NAME
from gradserve.v1 import gradserve_pb2 as pb

LIST_RUNS = f"/{SERVICE_NAME}/ListRuns"
# Metadata that belongs to the hop, not to the caller: not forwarded.
_HOP_METADATA = ("user-agent", "grpc-timeout", "grpc-accept-encoding", "te", "content-type")
REPLICA_CALL_SECONDS = 10.0


class MergedRunListing:
    def __init__(self, replicas: Sequence[str]) -> None:
        self._channels = [grpc.insecure_channel(address) for address in replicas]
        self._calls = [channel.unary_unary(LIST_RUNS) for channel in self._channels]

    def list_runs(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = [
            (key, value)
            for key, value in context.invocation_metadata()
            if not key.startswith(":") and key not in _HOP_METADATA
        ]
        remaining = context.time_remaining()
        timeout = REPLICA_CALL_SECONDS if remaining is None else remaining
        runs: list[pb.RunSummary] = []
        for index, call in enumerate(self._calls):
            try:
                answer = pb.ListRunsResponse.FromString(
                    call(request, timeout=timeout, metadata=metadata)
                )
            except grpc.RpcError as error:
                context.set_trailing_metadata(error.trailing_metadata() or ())
                context.abort(error.code(), f"replica {index}: {error.details() or ''}")
            runs += [summary for summary in answer.runs if index == 0 or summary.run]
        runs.sort(key=lambda summary: (summary.run, summary.owner))  # as one server sorts them
        return bytes(pb.ListRunsResponse(runs=runs).SerializeToString())

    def handler(self) -> grpc.GenericRpcHandler:
        """ListRuns on raw bytes: the request is passed on as it came."""
        method: Any = grpc.unary_unary_rpc_method_handler(self.list_runs)
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {"ListRuns": method})

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
