"""Many workers on one model: sync rounds (barrier, mean, timeout policies) and async staleness."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from gradserve.client.gradient_client import NO_RETRY, GradientClient, UpdateResult
from gradserve.errors import GradserveError, InvalidArgumentError, VersionConflictError

LEARNING_RATE = 0.1


def local_gradients(parameters: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
    w = parameters["w"].clone().requires_grad_()
    b = parameters["b"].clone().requires_grad_()
    ((w * x + b - y) ** 2).mean().backward()
    return {"w": w.grad, "b": b.grad}


def linear_batches(count: int, size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        x = torch.rand(size, 1, generator=generator)
        out.append((x, 2 * x + 1 + 0.1 * torch.randn(size, 1, generator=generator)))
    return out


def run_workers(address: str, work: list[list[tuple[torch.Tensor, torch.Tensor]]], timeout=10.0):
    """Each worker (a thread with its own client) computes then applies, once per batch."""

    def worker(batches) -> list[UpdateResult | GradserveError]:
        outcomes: list[UpdateResult | GradserveError] = []
        with GradientClient(address, timeout=timeout, retry=NO_RETRY) as client:
            for x, y in batches:
                computed = client.compute_gradients(x, y)
                try:
                    outcomes.append(
                        client.apply_update(LEARNING_RATE, expected_version=computed.model_version)
                    )
                except GradserveError as error:
                    outcomes.append(error)
        return outcomes

    with ThreadPoolExecutor(len(work)) as pool:
        return list(pool.map(worker, work))


def parameters_of(address: str) -> dict[str, torch.Tensor]:
    with GradientClient(address, timeout=10.0) as client:
        return client.get_parameters()[1]


def test_sync_four_workers_equal_one_worker_on_concatenated_batches(make_server) -> None:
    workers, steps = 4, 5
    sync = make_server(mode="sync", sync_contributions=workers, sync_timeout_seconds=20.0)
    reference = make_server()
    per_step = [linear_batches(workers, 8, seed=step) for step in range(steps)]

    outcomes = run_workers(
        sync.address, [[per_step[s][k] for s in range(steps)] for k in range(workers)]
    )
    for results in outcomes:
        assert [r.model_version for r in results] == list(range(1, steps + 1))
        assert {r.applied_batches for r in results} == {workers}

    expected = parameters_of(reference.address)
    with GradientClient(reference.address, timeout=10.0) as client:
        for batches in per_step:
            x = torch.cat([b[0] for b in batches])
            y = torch.cat([b[1] for b in batches])
            client.compute_gradients(x, y)
            client.apply_update(LEARNING_RATE)
            # torch as the oracle for the reference itself.
            grads = local_gradients(expected, x, y)
            expected = {name: expected[name] - LEARNING_RATE * grads[name] for name in expected}
    one_worker = parameters_of(reference.address)
    four_workers = parameters_of(sync.address)
    for name in expected:
        torch.testing.assert_close(four_workers[name], one_worker[name], atol=1e-6, rtol=0)
        torch.testing.assert_close(four_workers[name], expected[name], atol=1e-6, rtol=0)


def test_sync_counts_samples(make_server) -> None:
    sync = make_server(mode="sync", sync_contributions=12, sync_unit="samples")
    outcomes = run_workers(sync.address, [linear_batches(1, 4, seed=k) for k in range(3)])
    assert {r.model_version for [r] in outcomes} == {1}
    assert {r.applied_samples for [r] in outcomes} == {12}


@pytest.mark.parametrize("policy", ["apply", "abort"])
def test_sync_worker_that_never_applies(make_server, policy: str) -> None:
    """Four expected, three arrive (the fourth died): the round ends at the sync timeout."""
    sync = make_server(
        mode="sync",
        sync_contributions=4,
        sync_timeout_seconds=0.3,
        sync_timeout_policy=policy,
    )
    reference = make_server()
    batches = linear_batches(3, 8, seed=7)
    before = parameters_of(sync.address)
    outcomes = [r for [r] in run_workers(sync.address, [[b] for b in batches])]

    with GradientClient(sync.address, timeout=10.0) as client:
        info = client.model_info()
    if policy == "apply":
        assert {(r.model_version, r.applied_batches) for r in outcomes} == {(1, 3)}
        with GradientClient(reference.address, timeout=10.0) as client:
            for x, y in batches:
                client.compute_gradients(x, y)
            client.apply_update(LEARNING_RATE, reduction="mean")
        expected = parameters_of(reference.address)
        assert (info.model_version, info.accumulated_batches) == (1, 0)
    else:
        assert all(isinstance(r, VersionConflictError) for r in outcomes), outcomes
        assert all("aborted" in str(r) for r in outcomes)
        expected = before
        assert (info.model_version, info.accumulated_batches) == (0, 0)
    after = parameters_of(sync.address)
    for name in expected:
        torch.testing.assert_close(after[name], expected[name], atol=1e-6, rtol=0)
    outcome = "timed_out_applied" if policy == "apply" else "aborted"
    rounds = sync.metrics.registry.get_sample_value(
        "gradserve_sync_rounds_total", {"outcome": outcome}
    )
    assert rounds == 1


def test_sync_call_deadline_leaves_gradients_accumulated(make_server) -> None:
    sync = make_server(mode="sync", sync_contributions=2, sync_timeout_seconds=30.0)
    (x, y), (x2, y2) = linear_batches(2, 4, seed=3)
    with GradientClient(sync.address, timeout=0.3, retry=NO_RETRY) as client:
        client.compute_gradients(x, y)
        with pytest.raises(GradserveError) as raised:
            client.apply_update(LEARNING_RATE)
        assert raised.value.code.name == "DEADLINE_EXCEEDED"
    # The first worker's batch still counts: a second contribution completes the round.
    [[result]] = run_workers(sync.address, [[(x2, y2)]])
    assert (result.model_version, result.applied_batches) == (1, 2)


def advance(client: GradientClient, updates: int) -> int:
    version = 0
    for x, y in linear_batches(updates, 4, seed=11):
        client.compute_gradients(x, y)
        version = client.apply_update(LEARNING_RATE).model_version
    return version


def test_async_rejects_contributions_over_the_staleness_bound(make_server) -> None:
    server = make_server(mode="async", max_staleness=1, stale_policy="reject")
    [(x, y)] = linear_batches(1, 4, seed=5)
    with GradientClient(server.address, timeout=10.0, retry=NO_RETRY) as client:
        assert advance(client, 3) == 3
        with pytest.raises(VersionConflictError) as raised:
            client.compute_gradients(x, y, based_on_version=1)
        assert raised.value.field == "based_on_version"
        assert client.model_info().accumulated_batches == 0
        assert client.compute_gradients(x, y, based_on_version=2).accumulated_batches == 1
        with pytest.raises(InvalidArgumentError):
            client.compute_gradients(x, y, based_on_version=4)
    registry = server.metrics.registry
    # Three advancing contributions at staleness 0, one accepted at staleness 1.
    assert registry.get_sample_value("gradserve_gradient_staleness_count") == 4
    assert registry.get_sample_value("gradserve_gradient_staleness_sum") == 1
    assert (
        registry.get_sample_value("gradserve_stale_contributions_total", {"outcome": "rejected"})
        == 1
    )


def test_async_downweights_stale_contributions(make_server) -> None:
    server = make_server(mode="async", max_staleness=0, stale_policy="downweight")
    [(x, y)] = linear_batches(1, 4, seed=6)
    with GradientClient(server.address, timeout=10.0) as client:
        assert advance(client, 2) == 2
        parameters = client.get_parameters()[1]
        client.compute_gradients(x, y, based_on_version=0)
    expected = local_gradients(parameters, x, y)
    accumulated = server.store.gradients()
    for name, gradient in expected.items():
        torch.testing.assert_close(accumulated[name], gradient / 3, atol=1e-6, rtol=0)


def test_async_update_whose_gradients_were_already_applied(make_server) -> None:
    """Two workers compute, the first update applies both; the second steps nothing."""
    server = make_server(mode="async")
    batches = linear_batches(2, 4, seed=9)
    with (
        GradientClient(server.address, timeout=10.0) as first,
        GradientClient(server.address, timeout=10.0) as second,
    ):
        first.compute_gradients(*batches[0])
        second.compute_gradients(*batches[1])
        assert first.apply_update(LEARNING_RATE).applied_batches == 2
        late = second.apply_update(LEARNING_RATE)
    assert (late.model_version, late.applied_batches) == (1, 0)


def _train_cli(*arguments: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "client/train.py", "--metrics-port", "0", "--json", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_train_cli_workers_equal_one_worker_with_larger_batches() -> None:
    """--workers 2 with batch 5 (embedded sync server) = one worker with batch 10."""
    common = ("--epochs", "5", "--lr", "0.1", "--samples", "40")
    two = _train_cli("--workers", "2", "--batch-size", "5", *common)
    one = _train_cli("--batch-size", "10", "--transport", "unary", *common)
    assert [shard["batches"] for shard in two["shards"]] == [20, 20]
    assert two["model_version"] == one["model_version"] == 21
    for name, values in one["parameters"].items():
        torch.testing.assert_close(
            torch.tensor(two["parameters"][name]), torch.tensor(values), atol=1e-6, rtol=0
        )


def test_sync_abort_resets_the_accumulated_batches_gauge(make_server) -> None:
    """An aborted round discards its gradients: the gauge says so (it used to keep the last count)."""
    sync = make_server(
        mode="sync", sync_contributions=4, sync_timeout_seconds=0.3, sync_timeout_policy="abort"
    )
    outcomes = [r for [r] in run_workers(sync.address, [[b] for b in linear_batches(3, 8, 7)])]
    assert all(isinstance(r, VersionConflictError) for r in outcomes), outcomes
    registry = sync.metrics.registry
    assert sync.store.info().accumulated_batches == 0
    assert registry.get_sample_value("gradserve_accumulated_batches", {"run": ""}) == 0
    assert registry.get_sample_value("gradserve_model_version", {"run": ""}) == 0
