"""16 clients x N ComputeGradients with ApplyUpdate calls interleaved under expected_version
checks; the server's final state equals a sequential replay of the accepted operations in
local torch (issue 6, "Bad input and load").

Every accepted ComputeGradients answers the version its gradients were computed at and the
number of batches accumulated since the last update, this one included; every accepted
ApplyUpdate answers the version it produced and how many batches it applied. Under the store's
one lock that is a total order: version v's batches in accumulated-count order 1..n_v, then
the update to v + 1 (applied_batches == n_v), and so on. The replay runs the same arithmetic in
that order, so the final parameters (and the gradients accumulated after the last update) must
be bitwise the server's.

N is GRADSERVE_CONCURRENCY_CALLS (default 150 per client, 2-13 s here; the issue's figure,
16 x 1000, runs by hand in about 50 s: GRADSERVE_CONCURRENCY_CALLS=1000 pytest
tests/test_concurrency_replay.py).
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from gradserve.client.gradient_client import NO_RETRY, GradientClient
from gradserve.errors import VersionConflictError

CLIENTS = 16
CALLS = int(os.environ.get("GRADSERVE_CONCURRENCY_CALLS", "150"))
UPDATE_EVERY = 5
LEARNING_RATE = 0.05


@dataclass(frozen=True)
class Computed:
    client: int
    index: int
    version: int
    accumulated: int


@dataclass(frozen=True)
class Updated:
    client: int
    version: int
    applied: int


def batch(model: str, client: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(client * 100_000 + index)
    size = 1 + (client + index) % 4
    if model == "linear":
        x = torch.rand(size, 1, generator=generator)
        return x, 2 * x + 1 + 0.1 * torch.randn(size, 1, generator=generator)
    return torch.randn(size, 4, generator=generator), torch.randint(
        0, 3, (size,), generator=generator
    )


class LocalLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.b = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x + self.b


def local_model(model: str) -> tuple[nn.Module, object]:
    if model == "linear":
        return LocalLinear(), lambda p, y: ((p - y) ** 2).mean()
    network = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    return network, nn.functional.cross_entropy


def run_clients(address: str, model: str) -> tuple[list[Computed], list[Updated], int]:
    computed: list[list[Computed]] = [[] for _ in range(CLIENTS)]
    updated: list[list[Updated]] = [[] for _ in range(CLIENTS)]
    aborted = [0] * CLIENTS
    failures: list[BaseException] = []
    start = threading.Barrier(CLIENTS)

    def client_loop(client: int) -> None:
        try:
            with GradientClient(address, timeout=60.0, retry=NO_RETRY) as remote:
                start.wait(timeout=60)
                seen = 0
                for index in range(CALLS):
                    result = remote.compute_gradients(*batch(model, client, index))
                    computed[client].append(
                        Computed(client, index, result.model_version, result.accumulated_batches)
                    )
                    seen = result.model_version
                    if index % UPDATE_EVERY != UPDATE_EVERY - 1:
                        continue
                    try:
                        update = remote.apply_update(LEARNING_RATE, expected_version=seen)
                    except VersionConflictError:
                        aborted[client] += 1
                        continue
                    assert update.model_version == seen + 1
                    updated[client].append(
                        Updated(client, update.model_version, update.applied_batches)
                    )
        except BaseException as error:  # reported by the main thread
            failures.append(error)

    threads = [
        threading.Thread(target=client_loop, args=(client,), name=f"client-{client}")
        for client in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
        assert not thread.is_alive(), f"{thread.name} did not finish"
    if failures:
        raise failures[0]
    return (
        [c for per_client in computed for c in per_client],
        [u for per_client in updated for u in per_client],
        sum(aborted),
    )


@pytest.mark.parametrize("model", ["linear", "mlp:4-8-3:tanh"])
def test_sixteen_clients_equal_a_sequential_replay(make_server, model: str) -> None:
    server = make_server(model=model, seed=7, workers=CLIENTS)
    with GradientClient(server.address, retry=NO_RETRY) as client:
        _, initial = client.get_parameters()

    computed, updated, aborted = run_clients(server.address, model)

    # Reconstruct the server's order from what it answered.
    by_version: dict[int, list[Computed]] = defaultdict(list)
    for c in computed:
        by_version[c.version].append(c)
    updates = sorted(updated, key=lambda u: u.version)
    final_version = updates[-1].version if updates else 0
    assert [u.version for u in updates] == list(range(1, final_version + 1)), "a version twice"
    assert set(by_version) <= set(range(final_version + 1))
    for u in updates:
        counts = sorted(c.accumulated for c in by_version[u.version - 1])
        assert counts == list(range(1, u.applied + 1)), f"update to {u.version}"
    tail = sorted(c.accumulated for c in by_version[final_version])
    assert tail == list(range(1, len(tail) + 1))
    assert len(computed) == CLIENTS * CALLS
    assert aborted > 0 or len(updates) == CLIENTS * (CALLS // UPDATE_EVERY)

    # Replay: the same arithmetic as the store, in the server's order.
    module, loss_function = local_model(model)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            parameter.copy_(initial[name])
    parameters = dict(module.named_parameters())
    gradients: dict[str, torch.Tensor | None] = dict.fromkeys(parameters)

    def accumulate(version: int) -> None:
        for c in sorted(by_version[version], key=lambda c: c.accumulated):
            x, y = batch(model, c.client, c.index)
            loss = loss_function(module(x), y)  # type: ignore[operator]
            grads = torch.autograd.grad(loss, list(parameters.values()))
            for name, grad in zip(parameters, grads, strict=True):
                held = gradients[name]
                if held is None:
                    gradients[name] = grad.clone()
                else:
                    held += grad

    for u in updates:
        accumulate(u.version - 1)
        with torch.no_grad():
            for name, parameter in parameters.items():
                held = gradients[name]
                assert held is not None
                parameter.sub_(LEARNING_RATE * held)
                held.zero_()
    accumulate(final_version)

    with GradientClient(server.address, retry=NO_RETRY) as client:
        version, final = client.get_parameters()
        info = client.model_info()
    assert version == final_version
    assert info.accumulated_batches == len(by_version[final_version])
    server_gradients = server.store.gradients()
    # The order is fully determined by (version, accumulated count): bitwise.
    for name, parameter in parameters.items():
        assert torch.equal(final[name], parameter.detach()), name
        held, remote = gradients[name], server_gradients[name]
        if by_version[final_version]:
            assert held is not None and remote is not None
            assert torch.equal(remote, held), name
    print(
        f"{model}: {len(computed)} ComputeGradients, {len(updates)} updates applied, "
        f"{aborted} ABORTED, final version {final_version}"
    )
