"""Cross-run batches (docs/batching.md): K adapter runs on one base stepped together equal each
run alone, bitwise; the fair queue keeps a light principal's wait bounded; refusals say why."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import torch
from helpers import TIMEOUT, decoded
from llm_bases import VOCAB, tiny_llama

from gradserve.codec import tensor_from_proto, tensor_to_proto
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)
STEPS = 3
# Long enough never to close a batch in these tests: a batch closes when every run on the
# base has a request queued (or at the request bound); a window that closed would show as a
# batch smaller than expected.
WINDOW = 10.0
Stub = pb_grpc.GradientServiceStub


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("batching") / "base")


def _create(stub: Stub, run: str, index: int, metadata: tuple = ()) -> None:  # type: ignore[type-arg]
    # Half the runs adapt two projections, half every linear layer (none named); ranks differ.
    targets = ["q_proj", "v_proj"] if index % 2 == 0 else []
    lora = pb.LoraSpec(rank=2 + index % 3, alpha=8, target_modules=targets)
    stub.CreateRun(
        pb.CreateRunRequest(
            run=run, base_model="tiny", lora=lora, optimizer="adamw:weight_decay=0.01", seed=index
        ),
        timeout=TIMEOUT,
        metadata=metadata,
    )


def _request(run: str, index: int, step: int, weighted: bool) -> pb.ComputeGradientsRequest:
    """Run `index`'s batch of `step`: its own tokens; runs 2-3, 6-7, ... have shorter
    sequences (each length shares a forward: runs 0 and 1 always share one)."""
    generator = torch.Generator().manual_seed(1000 * index + step)
    length = 8 if index // 2 % 2 == 0 else 5
    tokens = torch.randint(0, VOCAB, (2, length + 1), generator=generator)
    fields: dict[str, object] = {
        "inputs": tensor_to_proto(tokens[:, :-1]),
        "targets": tensor_to_proto(tokens[:, 1:]),
    }
    if weighted:
        weights = torch.rand(2, length, generator=generator) * 2
        weights[torch.rand(2, length, generator=generator) < 0.3] = 0.0
        fields["sample_weights"] = tensor_to_proto(weights)
        fields["loss"] = pb.LossSpec(name="cross_entropy")
    # Gradients back on even steps (autograd.grad); odd steps take the backward() path alone
    # and ask for the per-token logprobs (each run's loss answers its own rows').
    return pb.ComputeGradientsRequest(
        run=run, return_gradients=step % 2 == 0, return_logprobs=step % 2 == 1, **fields
    )  # type: ignore[arg-type]


Record = dict[str, list]  # type: ignore[type-arg]


def _steps(
    stub: Stub, run: str, index: int, weighted: bool, before: Callable[[], object]
) -> Record:
    record: Record = {"losses": [], "gradients": [], "batched": [], "logprobs": []}
    for step in range(STEPS):
        before()
        request = _request(run, index, step, weighted)
        response, call = stub.ComputeGradients.with_call(request, timeout=TIMEOUT + WINDOW)
        record["losses"].append(response.loss)
        record["gradients"].append(decoded(response.gradients))
        if response.HasField("logprobs"):
            record["logprobs"].append(tensor_from_proto(response.logprobs).clone())
        trailing = dict(call.trailing_metadata() or ())
        record["batched"].append(int(trailing.get("gradserve-batch-requests", "1")))
        stub.ApplyUpdate(pb.ApplyUpdateRequest(run=run, learning_rate=0.01), timeout=TIMEOUT)
    response = stub.GetParameters(pb.GetParametersRequest(run=run), timeout=TIMEOUT)
    record["adapter"] = list(decoded(response.parameters).items())
    return record


def _threads(count: int, work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            work(index)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def _assert_same(mine: Record, alone: Record) -> None:
    assert mine["losses"] == alone["losses"]
    assert len(mine["logprobs"]) == len(alone["logprobs"]) == STEPS // 2
    for ours, theirs in zip(mine["logprobs"], alone["logprobs"], strict=True):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(mine["gradients"], alone["gradients"], strict=True):
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert [name for name, _ in mine["adapter"]] == [name for name, _ in alone["adapter"]]
    for (_, ours), (_, theirs) in zip(mine["adapter"], alone["adapter"], strict=True):
        assert torch.equal(ours, theirs)


def _batched_total(running: object) -> float:
    value = running.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
        "gradserve_batched_requests_total", {"base": "tiny"}
    )
    return value or 0.0


@pytest.mark.parametrize("weighted", [False, True], ids=["cross_entropy", "token_weights"])
@pytest.mark.parametrize("runs", [2, 4, 16])
def test_interleaved_steps_in_cross_run_batches_are_bitwise_each_run_alone(
    make_server, make_stub, base_folder: Path, runs: int, weighted: bool
) -> None:
    names = [f"r{i}" for i in range(runs)]
    alone_server = make_server(base_models=(f"tiny={base_folder}",))
    alone_stub = make_stub(alone_server)
    batched_server = make_server(
        base_models=(f"tiny={base_folder}",),
        batch_window_seconds=WINDOW,
        workers=runs + 4,
    )
    stub = make_stub(batched_server)
    for index, name in enumerate(names):
        _create(alone_stub, name, index)
        _create(stub, name, index)
    # Alone: one run after another, no batching.
    alone = [_steps(alone_stub, n, i, weighted, lambda: None) for i, n in enumerate(names)]
    # Together: every run's step sent at once (a barrier), the server batching them.
    barrier = threading.Barrier(runs)
    together: list[Record] = [{} for _ in names]

    def one_run(index: int) -> None:
        together[index] = _steps(stub, names[index], index, weighted, barrier.wait)

    _threads(runs, one_run)
    for mine, theirs in zip(together, alone, strict=True):
        assert mine["batched"] == [runs] * STEPS  # every step ran in one batch of all runs
        _assert_same(mine, theirs)
    assert _batched_total(batched_server) == runs * STEPS
    assert _batched_total(alone_server) == 0


HEAVY, LIGHT = "heavy-token-0123456789", "light-token-0123456789"
ROUNDS = 6


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def test_a_principal_sending_ten_times_the_requests_does_not_push_back_the_other(
    make_server, make_stub, base_folder: Path
) -> None:
    """The bound: every request of the light principal runs in the first batch that starts
    after it is queued (batches waited 0) at queue position <= 1 (the principals ahead of
    it), however many requests the heavy one has queued; FIFO would put it behind up to 10
    requests, 2 batches of 4 (test_fair_queue_* below shows both orders)."""
    running = make_server(
        base_models=(f"tiny={base_folder}",),
        batch_window_seconds=WINDOW,
        batch_max_requests=4,
        workers=16,
        auth_tokens=(HEAVY, LIGHT),
    )
    stub = make_stub(running)
    heavy_runs = [(f"h{i}", HEAVY, i) for i in range(10)]
    runs = [*heavy_runs, ("l0", LIGHT, 10)]
    for name, token, index in runs:
        _create(stub, name, index, _bearer(token))
    notes: dict[str, list[tuple[int, int, int]]] = {name: [] for name, _, _ in runs}

    def one_run(which: int) -> None:
        name, token, index = runs[which]
        for step in range(ROUNDS):
            request = _request(name, index, step, weighted=False)
            _, call = stub.ComputeGradients.with_call(
                request, timeout=TIMEOUT + WINDOW, metadata=_bearer(token)
            )
            trailing = dict(call.trailing_metadata() or ())
            if "gradserve-batch-requests" in trailing:  # a batch of one ran alone
                notes[name].append(
                    (
                        int(trailing["gradserve-batch-queue-position"]),
                        int(trailing["gradserve-batch-batches-waited"]),
                        int(trailing["gradserve-batch-requests"]),
                    )
                )
        # Batches stop waiting for a run that has left.
        stub.DeleteRun(pb.DeleteRunRequest(run=name), timeout=TIMEOUT, metadata=_bearer(token))

    _threads(len(runs), one_run)
    light = notes["l0"]
    heavy = [note for name, _, _ in heavy_runs for note in notes[name]]
    assert light, "the light principal's requests never shared a batch"
    assert all(position <= 1 and waited == 0 for position, waited, _ in light), light
    assert all(size <= 4 for _, _, size in light + heavy)
    # The heavy principal sent 10x the requests and had them queued several deep.
    assert max(position for position, _, _ in heavy) >= 2


class _Entry:
    def __init__(self, principal: str, arrived: float) -> None:
        self.principal, self.arrived, self.tokens, self.nbytes = principal, arrived, 16, 256


def test_fair_queue_takes_one_request_per_principal_in_turn() -> None:
    from gradserve.server.coordination.fair_queue import FairQueue  # noqa: PLC0415

    queue: FairQueue[_Entry] = FairQueue()
    heavy = [_Entry("heavy", float(i)) for i in range(10)]
    positions = [queue.push(entry) for entry in heavy]
    light = _Entry("light", 10.0)
    # In arrival order it would be 10th; in the fair order it is 1st after one heavy.
    assert queue.push(light) == 1
    assert positions == list(range(10))
    assert queue.first() is heavy[0]
    first = queue.take(4, 1 << 20)
    assert first == [heavy[0], light, heavy[1], heavy[2]]
    assert (len(queue), queue.tokens, queue.nbytes) == (7, 7 * 16, 7 * 256)
    # The token bound ends a batch early, but never before its first request.
    assert queue.take(4, 20) == [heavy[3]]
    assert queue.take(4, 1) == [heavy[4]]


def _queued(running: object) -> float:
    value = running.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
        "gradserve_batch_queue_requests", {"base": "tiny"}
    )
    return value or 0.0


def _accumulated(stub: Stub, run: str) -> int:
    """The run's accumulated batches (dropped: the tests end with it)."""
    return stub.DiscardGradients(
        pb.DiscardGradientsRequest(run=run), timeout=TIMEOUT
    ).discarded_batches


def test_a_full_queue_refuses_with_retry_info_and_changes_nothing(
    make_server, make_stub, base_folder: Path
) -> None:
    from grpc_status import rpc_status  # noqa: PLC0415

    running = make_server(
        base_models=(f"tiny={base_folder}",), batch_window_seconds=WINDOW, batch_queue_requests=1
    )
    stub = make_stub(running)
    for index, name in enumerate(("a", "b", "c")):
        _create(stub, name, index)
    waiting = threading.Thread(
        target=lambda: stub.ComputeGradients(_request("a", 0, 1, False), timeout=TIMEOUT + WINDOW)
    )
    waiting.start()
    # Run a's request is queued (waiting for b and c) once the gauge says so.
    deadline = threading.Event()
    while _queued(running) < 1:
        assert not deadline.wait(0.005) and waiting.is_alive()
    with pytest.raises(grpc.RpcError) as caught:
        stub.ComputeGradients(_request("b", 1, 1, False), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "batch queue" in (caught.value.details() or "")
    status = rpc_status.from_call(caught.value)
    assert status is not None
    kinds = [detail.TypeName() for detail in status.details]
    assert "google.rpc.RetryInfo" in kinds
    assert _accumulated(stub, "b") == 0
    refused = running.metrics.registry.get_sample_value(
        "gradserve_batch_refusals_total", {"base": "tiny", "reason": "requests"}
    )
    assert refused == 1
    # b and c leave: a's batch stops waiting for them and runs (alone, a batch of one).
    for name in ("b", "c"):
        stub.DeleteRun(pb.DeleteRunRequest(run=name), timeout=TIMEOUT)
    waiting.join()
    assert _accumulated(stub, "a") == 1


def test_a_run_whose_loss_is_not_finite_is_refused_alone_and_its_batch_goes_on(
    make_server, make_stub, base_folder: Path
) -> None:
    running = make_server(
        base_models=(f"tiny={base_folder}",), batch_window_seconds=WINDOW, workers=8
    )
    alone = make_stub(make_server(base_models=(f"tiny={base_folder}",)))
    stub = make_stub(running)
    for index, name in enumerate(("a", "b", "c")):
        _create(stub, name, index)
        _create(alone, name, index)
    tokens = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(5))
    overflowing = pb.ComputeGradientsRequest(
        run="b",
        inputs=tensor_to_proto(tokens[:, :-1]),
        targets=tensor_to_proto(tokens[:, 1:]),
        logprobs=tensor_to_proto(torch.full((2, 8), -4.0)),
        # Finite, but their sum is not: the loss is -inf.
        advantages=tensor_to_proto(torch.full((2, 8), 3e38)),
        loss=pb.LossSpec(name="importance_sampling"),
    )
    barrier = threading.Barrier(3)
    answers: dict[str, object] = {}

    def send(index: int) -> None:
        name = "abc"[index]
        request = overflowing if name == "b" else _request(name, index, 0, weighted=False)
        barrier.wait()
        try:
            response, call = stub.ComputeGradients.with_call(request, timeout=TIMEOUT + WINDOW)
            answers[name] = (response, dict(call.trailing_metadata() or ()))
        except grpc.RpcError as error:
            answers[name] = error

    _threads(3, send)
    refused = answers["b"]
    assert isinstance(refused, grpc.RpcError)
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    for index, name in ((0, "a"), (2, "c")):
        response, trailing = answers[name]  # type: ignore[misc]
        assert trailing["gradserve-batch-requests"] == "3"
        expected = alone.ComputeGradients(_request(name, index, 0, False), timeout=TIMEOUT)
        assert response.loss == expected.loss
        assert decoded(response.gradients).keys() == decoded(expected.gradients).keys()
        for key, value in decoded(response.gradients).items():
            assert torch.equal(value, decoded(expected.gradients)[key])
    assert [_accumulated(stub, name) for name in "abc"] == [1, 0, 1]


def test_a_lone_run_never_waits_for_the_window(make_server, make_stub, base_folder: Path) -> None:
    running = make_server(base_models=(f"tiny={base_folder}",), batch_window_seconds=WINDOW)
    stub = make_stub(running)
    _create(stub, "only", 0)
    # A deadline well inside the window: a request that waited for it would fail.
    response, call = stub.ComputeGradients.with_call(
        _request("only", 0, 0, weighted=False), timeout=WINDOW / 2
    )
    assert response.batch_size == 2
    assert "gradserve-batch-requests" not in dict(call.trailing_metadata() or ())
    assert _batched_total(running) == 0


def test_batching_flags_and_environment_fill_the_batching_section() -> None:
    from gradserve.errors import InvalidArgumentError  # noqa: PLC0415
    from gradserve.server.flags import parse_args  # noqa: PLC0415

    config = parse_args(
        ["--batch-window-seconds", "0.02", "--batch-max-requests", "8"],
        {"GRADSERVE_BATCH_QUEUE_BYTES": "1000"},
    ).batching
    assert (config.batch_window_seconds, config.batch_max_requests) == (0.02, 8)
    assert config.batch_queue_bytes == 1000
    assert parse_args([], {}).batching.batch_window_seconds == 0.0  # off by default
    with pytest.raises(InvalidArgumentError, match="batch_max_tokens"):
        parse_args(["--batch-max-tokens", "0"], {})


def test_a_large_vocabulary_lowers_the_batch_token_bound_to_one_request_logits() -> None:
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from gradserve.server.batch_metrics import BatchMetrics  # noqa: PLC0415
    from gradserve.server.config import BatchingConfig  # noqa: PLC0415
    from gradserve.server.coordination.cross_run_batches import BaseBatcher  # noqa: PLC0415

    config = BatchingConfig(batch_window_seconds=1.0, batch_max_tokens=16_384)
    metrics = BatchMetrics(CollectorRegistry())
    module = torch.nn.Linear(1, 1)
    # float32 logits and their log-softmax, 8 bytes a token and entry, within 1 GiB.
    assert BaseBatcher("big", module, 1 << 20, config, metrics).max_tokens == 128
    assert BaseBatcher("small", module, 1024, config, metrics).max_tokens == 16_384
