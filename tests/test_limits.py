"""Limits: past the concurrent-call limit the server answers RESOURCE_EXHAUSTED and changes
nothing; message and batch limits are covered by test_bad_input.py."""

from __future__ import annotations

import time

import grpc
from helpers import TIMEOUT, linear_batch

from gradserve.codec import tensor_to_proto
from gradserve.v1 import gradserve_pb2 as pb


def test_calls_past_the_concurrency_limit_are_resource_exhausted(make_server, make_stub) -> None:
    server = make_server(max_concurrent_rpcs=2, workers=4)
    stub = make_stub(server)
    x, y = linear_batch(3)
    request = pb.ComputeGradientsRequest(inputs=tensor_to_proto(x), targets=tensor_to_proto(y))
    store = server.store
    pending = []
    codes = []
    store._lock.acquire()
    try:
        pending = [stub.ComputeGradients.future(request, timeout=TIMEOUT) for _ in range(2)]
        # Until both are in progress on the server a third call may still get in (and then
        # wait on the lock too); bounded: the limit must show within the deadline.
        deadline = time.monotonic() + 10
        while grpc.StatusCode.RESOURCE_EXHAUSTED not in codes:
            assert time.monotonic() < deadline, f"never RESOURCE_EXHAUSTED: {codes}"
            try:
                stub.ComputeGradients(request, timeout=0.2)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
    finally:
        store._lock.release()
    # Calls admitted finish once the lock is free (a queued future may itself have been the
    # one refused, when a probe overtook it).
    for call in pending:
        assert call.code() in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED)
