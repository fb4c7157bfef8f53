"""A ServedRun under the direct, sync and async update policies, called without gRPC; local
torch is the oracle (same seed, same model built here), compared with torch.equal."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from gradserve.errors import FailedPreconditionError, InvalidArgumentError, VersionConflictError
from gradserve.server.config import CoordinationConfig, ModelConfig
from gradserve.server.coordination.served_run import ServedRun
from gradserve.server.metrics import ServerMetrics
from gradserve.server.models.optimizers import build_optimizer
from gradserve.server.models.specs import build_configured
from gradserve.server.store.parameter_store import ParameterStore
from gradserve.types import TrainStep

LR = 0.1


def coordinator(**coordination: object) -> ServedRun:
    model = build_configured(ModelConfig(seed=0))
    store = ParameterStore(model, build_optimizer("sgd", list(model.module.parameters())))
    metrics = ServerMetrics().for_run("", store)
    return ServedRun(store, metrics, coordination=CoordinationConfig(**coordination))  # type: ignore[arg-type]


def local_linear() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(1).requires_grad_(), torch.zeros(1).requires_grad_()


def batch(seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(size, 1, generator=generator)
    return x, 2 * x + 1 + 0.1 * torch.randn(size, 1, generator=generator)


def parameters(c: ServedRun) -> dict[str, torch.Tensor]:
    return dict(c.read_parameters([], lambda name, value: (name, value.clone()))[1])


def gauge(c: ServedRun, name: str) -> float | None:
    return c.metrics.registry.get_sample_value(name, {"run": ""})


def test_direct_compute_update_and_train_are_the_local_loop() -> None:
    unary, streamed = coordinator(), coordinator()
    w, b = local_linear()
    batches = [batch(seed) for seed in range(4)]
    for x, y in batches:
        unary.compute_gradients(x, y)
        unary.apply_update(LR)
        ((w * x + b - y) ** 2).mean().backward()
        with torch.no_grad():
            w -= LR * w.grad
            b -= LR * b.grad
        w.grad.zero_()
        b.grad.zero_()
    result = streamed.train([TrainStep.of([pair], learning_rate=LR) for pair in batches])
    assert [step.model_version for step in result.steps] == [1, 2, 3, 4]
    for c in (unary, streamed):
        assert torch.equal(parameters(c)["w"], w.detach())
        assert torch.equal(parameters(c)["b"], b.detach())
        assert gauge(c, "gradserve_model_version") == 4
        assert gauge(c, "gradserve_updates_total") == 4
        assert gauge(c, "gradserve_samples_total") == 32
    assert unary.info().max_message_bytes > 0


def test_sync_applies_one_mean_update_for_every_waiter() -> None:
    sync = coordinator(mode="sync", sync_contributions=2, sync_timeout_seconds=30.0)
    w, b = local_linear()
    pairs = [batch(1), batch(2)]
    for x, y in pairs:
        ((w * x + b - y) ** 2).mean().backward()
    with torch.no_grad():
        w -= LR * (w.grad / 2)
        b -= LR * (b.grad / 2)

    def worker(pair: tuple[torch.Tensor, torch.Tensor]):  # type: ignore[no-untyped-def]
        computed = sync.compute_gradients(*pair)
        return sync.apply_update(LR, expected_version=computed.model_version, time_remaining=30)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(worker, pairs))
    assert {(r.model_version, r.applied_batches) for r in results} == {(1, 2)}
    assert torch.equal(parameters(sync)["w"], w.detach())
    assert torch.equal(parameters(sync)["b"], b.detach())
    assert gauge(sync, "gradserve_updates_total") == 1
    assert gauge(sync, "gradserve_accumulated_batches") == 0


def test_sync_abort_discards_and_resets_the_gauges() -> None:
    sync = coordinator(
        mode="sync", sync_contributions=2, sync_timeout_seconds=0.05, sync_timeout_policy="abort"
    )
    before = parameters(sync)
    sync.compute_gradients(*batch(1))
    assert gauge(sync, "gradserve_accumulated_batches") == 1
    with pytest.raises(VersionConflictError, match="aborted"):
        sync.apply_update(LR)
    assert sync.store.snapshot() == (0, 0, 0)
    assert gauge(sync, "gradserve_accumulated_batches") == 0
    assert all(g is None for g in sync.store.gradients().values())
    for name, value in parameters(sync).items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sync_and_async_refuse_train(mode: str) -> None:
    with pytest.raises(FailedPreconditionError) as caught:
        coordinator(mode=mode).train([TrainStep.of([batch(0)], learning_rate=LR)])
    assert caught.value.field == "mode"


def test_async_rejects_or_downweights_stale_contributions() -> None:
    rejecting = coordinator(mode="async", max_staleness=1)
    weighting = coordinator(mode="async", max_staleness=1, stale_policy="downweight")
    for c in (rejecting, weighting):
        for seed in range(2):
            c.compute_gradients(*batch(seed))
            c.apply_update(LR)
    with pytest.raises(VersionConflictError) as caught:
        rejecting.compute_gradients(*batch(5), based_on_version=0)
    assert caught.value.field == "based_on_version"
    with pytest.raises(InvalidArgumentError):
        rejecting.compute_gradients(*batch(5), based_on_version=3)
    assert rejecting.store.snapshot() == (2, 0, 0)

    # Local oracle: the same two updates, then the stale batch's gradient times 1 / (1 + 2).
    w, b = local_linear()
    for seed in range(2):
        x, y = batch(seed)
        ((w * x + b - y) ** 2).mean().backward()
        with torch.no_grad():
            w -= LR * w.grad
            b -= LR * b.grad
        w.grad.zero_()
        b.grad.zero_()
    x, y = batch(5)
    gw, gb = torch.autograd.grad(((w * x + b - y) ** 2).mean(), [w, b])
    weighting.compute_gradients(x, y, based_on_version=0)
    accumulated = weighting.store.gradients()
    assert torch.equal(accumulated["w"], w.grad + gw * (1.0 / 3.0))
    assert torch.equal(accumulated["b"], b.grad + gb * (1.0 / 3.0))
    labels = {"outcome": "downweighted"}
    assert (
        weighting.metrics.registry.get_sample_value("gradserve_stale_contributions_total", labels)
        == 1
    )


def test_async_update_with_nothing_left_returns_the_current_version() -> None:
    c = coordinator(mode="async")
    c.compute_gradients(*batch(0))
    c.apply_update(LR)
    late = c.apply_update(LR)
    assert (late.model_version, late.applied_batches) == (1, 0)
    assert gauge(c, "gradserve_updates_total") == 1
