"""Concurrent calls: every ComputeGradients accumulates; an update applies exactly what finished
before it."""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import torch
from helpers import apply, compute, get_parameters, linear_batch

THREADS = 8
CALLS = 100


def local_gradients(parameters: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
    w = parameters["w"].clone().requires_grad_()
    b = parameters["b"].clone().requires_grad_()
    ((w * x + b - y) ** 2).mean().backward()
    return w.grad, b.grad


def batches(thread: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1000 + thread)
    return [linear_batch(1 + index % 7, generator) for index in range(CALLS)]


def test_concurrent_compute_gradients_all_accumulate(server, stub) -> None:
    parameters = get_parameters(stub)
    work = [batches(thread) for thread in range(THREADS)]

    def run(thread_batches):
        return [compute(stub, x, y).model_version for x, y in thread_batches]

    with ThreadPoolExecutor(THREADS) as pool:
        versions = list(pool.map(run, work))

    assert {v for thread in versions for v in thread} == {0}
    assert server.store.info().accumulated_batches == THREADS * CALLS
    expected_w = torch.zeros(1, dtype=torch.float64)
    expected_b = torch.zeros(1, dtype=torch.float64)
    for thread_batches in work:
        for x, y in thread_batches:
            w_grad, b_grad = local_gradients(parameters, x, y)
            expected_w += w_grad.double()
            expected_b += b_grad.double()
    gradients = server.store.gradients()
    torch.testing.assert_close(gradients["w"].double(), expected_w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gradients["b"].double(), expected_b, rtol=1e-5, atol=1e-5)


def test_updates_interleaved_with_computes_apply_what_finished_before_them(server, stub) -> None:
    parameters = get_parameters(stub)
    work = [batches(thread)[:40] for thread in range(4)]

    def run_computes(thread_batches):
        return [(compute(stub, x, y), x, y) for x, y in thread_batches]

    def run_updates():
        updates = []
        for _ in range(60):
            try:
                # lr 0 keeps the parameters, so every batch's gradient is known locally.
                updates.append(apply(stub, 0.0))
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        return updates

    with ThreadPoolExecutor(5) as pool:
        updates_future = pool.submit(run_updates)
        computed = [c for result in pool.map(run_computes, work) for c in result]
        updates = updates_future.result()

    by_version = defaultdict(list)
    for response, x, y in computed:
        by_version[response.model_version].append((response, x, y))
    final_version = server.store.version
    assert final_version == len(updates)
    assert [u.model_version for u in updates] == list(range(1, final_version + 1))
    for update in updates:
        finished = by_version[update.model_version - 1]
        # The batches computed at version v are exactly those update v + 1 applied, in order.
        assert update.applied_batches == len(finished)
        assert sorted(r.accumulated_batches for r, _, _ in finished) == list(
            range(1, len(finished) + 1)
        )
        assert update.applied_samples == sum(r.batch_size for r, _, _ in finished)
        w_grad = sum(local_gradients(parameters, x, y)[0].double() for _, x, y in finished)
        b_grad = sum(local_gradients(parameters, x, y)[1].double() for _, x, y in finished)
        norm = torch.cat([w_grad, b_grad]).norm().item()
        assert update.gradient_norm == pytest.approx(norm, rel=1e-4, abs=1e-5)
    assert sum(u.applied_batches for u in updates) + server.store.info().accumulated_batches == (
        len(computed)
    )
    pending = by_version[final_version]
    assert server.store.info().accumulated_batches == len(pending)
    if pending:
        expected = sum(local_gradients(parameters, x, y)[0].double() for _, x, y in pending)
        torch.testing.assert_close(
            server.store.gradients()["w"].double(), expected, rtol=1e-5, atol=1e-5
        )
