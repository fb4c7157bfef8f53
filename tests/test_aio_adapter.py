"""bench/aio_servers.py: gradserve's unary RPCs on grpc.aio answer as the thread-pool server does.

bench/aio_compare.py compares the two servers' per-call cost; the comparison only means
something if the adapter does the same work: the same steps bitwise, the same error statuses
with the same details, the same RPC metrics.
"""

from __future__ import annotations

import pytest
import torch

from bench.aio_compare import aio_gradserve_server
from bench.baselines import local_seed_loop
from bench.processes import gradserve_server
from bench.workloads import run_unary, seed_batches
from gradserve.client.data import seed_data
from gradserve.client.gradient_client import NO_RETRY, GradientClient
from gradserve.errors import GradserveError


def _outcomes(client: GradientClient) -> list[tuple[str, str | None, str]]:
    seen = []
    for call in (
        lambda: client.compute_gradients(torch.ones(4, 3), torch.ones(4, 1)),
        lambda: client.apply_update(float("nan")),
        lambda: client.apply_update(0.1),  # nothing accumulated
    ):
        with pytest.raises(GradserveError) as caught:
            call()
        seen.append((type(caught.value).__name__, caught.value.field, str(caught.value)))
    return seen


@pytest.mark.slow
def test_the_aio_adapter_serves_the_seed_steps_and_errors_of_the_thread_pool_server() -> None:
    data = seed_data(0)
    batches = seed_batches(50)
    _, w, b = local_seed_loop(
        data.dataset.inputs, data.dataset.targets, data.initial_w, data.initial_b, 50
    )
    outcomes = []
    with aio_gradserve_server() as on_aio, gradserve_server("linear") as on_threads:
        for server in (on_aio, on_threads):
            with GradientClient(server.address, timeout=30, retry=NO_RETRY) as client:
                client.wait_until_ready(30)
                outcomes.append(_outcomes(client))
                client.set_parameters({"w": data.initial_w, "b": data.initial_b})
                run_unary(client, batches)
                _, final = client.get_parameters()
                assert torch.equal(final["w"], w) and torch.equal(final["b"], b)
    assert outcomes[0] == outcomes[1]
    assert [kind for kind, _, _ in outcomes[0]] == [
        "InvalidArgumentError",
        "InvalidArgumentError",
        "FailedPreconditionError",
    ]
