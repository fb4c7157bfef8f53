"""Adapter runs over gRPC: CreateRun names a base and a LoRA adapter; bitwise the peft loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch
from helpers import TIMEOUT, apply, compute, decoded, field_violations
from llm_bases import VOCAB, peft_adapter_tensors, peft_model, tiny_llama
from safetensors.torch import load_file

from gradserve.codec import tensor_to_proto
from gradserve.server.models.bases import load_pretrained
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)
TARGETS = ["q_proj", "v_proj"]
OPTIMIZER = "adamw:weight_decay=0.01"
ROOT = Path(__file__).resolve().parent.parent


def _create(stub, run: str, **fields):  # type: ignore[no-untyped-def]
    request = pb.CreateRunRequest(
        run=run,
        base_model="tiny",
        lora=pb.LoraSpec(rank=4, alpha=8, target_modules=TARGETS),
        optimizer=OPTIMIZER,
        seed=3,
    )
    for key, value in fields.items():
        if value is None:
            request.ClearField(key)
        elif isinstance(value, pb.LoraSpec):
            request.lora.CopyFrom(value)
        else:
            setattr(request, key, value)
    return stub.CreateRun(request, timeout=TIMEOUT)


def _batches(seed: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    tokens = [torch.randint(0, VOCAB, (2, 9), generator=generator) for _ in range(count)]
    return [(t[:, :-1], t[:, 1:]) for t in tokens]


def _local_loop(folder: Path, seed: int, batches: list) -> tuple[list[float], dict]:  # type: ignore[type-arg]
    local = peft_model(folder, 4, 8, TARGETS, seed=seed).train()
    optimizer = torch.optim.AdamW(
        [p for p in local.parameters() if p.requires_grad], lr=0.01, weight_decay=0.01
    )
    losses = []
    for inputs, targets in batches:
        logprobs = torch.log_softmax(local(input_ids=inputs).logits, -1)
        loss = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, peft_adapter_tensors(local)


def _parameters(stub, run: str) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    response = stub.GetParameters(pb.GetParametersRequest(run=run), timeout=TIMEOUT)
    return decoded(response.parameters)


def _peft_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [
        "base_model.model."
        + name.replace(".lora_A", ".lora_A.weight").replace(".lora_B", ".lora_B.weight")
        for name in tensors
    ]


def test_an_adapter_run_trains_bitwise_as_the_local_peft_loop(
    make_server, make_stub, tmp_path: Path
) -> None:
    folder = tiny_llama(tmp_path / "base")
    digest = load_pretrained("tiny", folder).digest
    server = make_server(base_models=(f"tiny={folder}",), checkpoint_dir=str(tmp_path / "saved"))
    stub = make_stub(server)
    info = _create(stub, "adapter").info
    assert (info.base_model, info.base_model_digest) == ("tiny", digest)
    assert info.loss == "cross_entropy" and list(info.input.shape) == [-1, -1]
    batches = _batches(4, 20)
    losses = []
    for inputs, targets in batches:
        losses.append(compute(stub, inputs, targets, run="adapter").loss)
        apply(stub, 0.01, run="adapter")
    local_losses, local_tensors = _local_loop(folder, 3, batches)
    assert losses == local_losses
    ours = _parameters(stub, "adapter")
    assert list(ours) == _peft_names(local_tensors)
    for mine, theirs in zip(ours.values(), local_tensors.values(), strict=True):
        assert torch.equal(mine, theirs)
    # Its checkpoint holds the adapter and its optimizer state, no base tensor.
    stub.SaveCheckpoint(pb.SaveCheckpointRequest(run="adapter", name="done"), timeout=TIMEOUT)
    saved = [p for p in (tmp_path / "saved").rglob("*.safetensors")]
    assert saved
    for path in saved:
        keys = list(load_file(str(path)))
        assert all("lora_" in key or key.startswith("optimizer") for key in keys), keys
    runs = {r.run: r for r in stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT).runs}
    assert (runs["adapter"].base_model, runs["adapter"].base_model_digest) == ("tiny", digest)


def test_an_adapter_run_trains_through_a_train_stream_bitwise(
    make_server, make_stub, tmp_path: Path
) -> None:
    folder = tiny_llama(tmp_path / "base")
    stub = make_stub(make_server(base_models=(f"tiny={folder}",)))
    _create(stub, "adapter")
    batches = _batches(8, 12)
    steps = [
        pb.TrainStep(
            batches=[pb.Batch(inputs=tensor_to_proto(x), targets=tensor_to_proto(y))],
            apply_update=True,
            learning_rate=0.01,
        )
        for x, y in batches
    ]
    requests = [
        pb.TrainRequest(run="adapter", steps=steps[:6]),
        pb.TrainRequest(run="adapter", steps=steps[6:]),
    ]
    responses = list(stub.Train(iter(requests), timeout=TIMEOUT))
    losses = [loss for response in responses for step in response.steps for loss in step.losses]
    local_losses, local_tensors = _local_loop(folder, 3, batches)
    assert losses == local_losses
    for mine, theirs in zip(
        _parameters(stub, "adapter").values(), local_tensors.values(), strict=True
    ):
        assert torch.equal(mine, theirs)


def test_a_fork_of_an_adapter_run_continues_it_bitwise(
    make_server, make_stub, tmp_path: Path
) -> None:
    folder = tiny_llama(tmp_path / "base")
    stub = make_stub(
        make_server(base_models=(f"tiny={folder}",), checkpoint_dir=str(tmp_path / "saved"))
    )
    _create(stub, "parent")
    batches = _batches(9, 6)
    for inputs, targets in batches[:3]:
        compute(stub, inputs, targets, run="parent")
        apply(stub, 0.01, run="parent")
    stub.SaveCheckpoint(pb.SaveCheckpointRequest(run="parent", name="half"), timeout=TIMEOUT)
    created = stub.CreateRun(
        pb.CreateRunRequest(
            run="child", from_checkpoint="parent/half", with_optimizer_state=True, seed=11
        ),
        timeout=TIMEOUT,
    )
    assert created.info.base_model == "tiny"
    for inputs, targets in batches[3:]:
        compute(stub, inputs, targets, run="child")
        apply(stub, 0.01, run="child")
    _, local_tensors = _local_loop(folder, 3, batches)
    for mine, theirs in zip(
        _parameters(stub, "child").values(), local_tensors.values(), strict=True
    ):
        assert torch.equal(mine, theirs)


def test_two_adapter_runs_on_one_base_each_train_as_their_own_loop(
    make_server, make_stub, tmp_path: Path
) -> None:
    folder = tiny_llama(tmp_path / "base")
    stub = make_stub(make_server(base_models=(f"tiny={folder}",)))
    _create(stub, "one", seed=1)
    _create(stub, "two", seed=2)
    first, second = _batches(5, 6), _batches(6, 6)
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        compute(stub, x1, y1, run="one")
        compute(stub, x2, y2, run="two")
        apply(stub, 0.01, run="one")
        apply(stub, 0.01, run="two")
    for run, seed, batches in (("one", 1, first), ("two", 2, second)):
        _, local_tensors = _local_loop(folder, seed, batches)
        ours = _parameters(stub, run)
        for mine, theirs in zip(ours.values(), local_tensors.values(), strict=True):
            assert torch.equal(mine, theirs)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"base_model": "other"}, "base_model"),
        ({"lora": pb.LoraSpec(rank=0, alpha=8)}, "lora.rank"),
        ({"lora": pb.LoraSpec(rank=4, alpha=-1)}, "lora.alpha"),
        ({"lora": pb.LoraSpec(rank=4, alpha=8, dropout=1.5)}, "lora.dropout"),
        ({"lora": pb.LoraSpec(rank=4, alpha=8, target_modules=["nope"])}, "lora.target_modules"),
        ({"model": "linear"}, "model"),
        ({"base_model": "", "model": "linear"}, "lora"),  # lora without a base
        ({"lora": None}, "lora"),  # a base without lora
    ],
)
def test_bad_adapter_runs_are_refused_naming_the_field(
    make_server,
    make_stub,
    tmp_path: Path,
    fields: dict,
    field: str,  # type: ignore[type-arg]
) -> None:
    folder = tiny_llama(tmp_path / "base")
    stub = make_stub(make_server(base_models=(f"tiny={folder}",)))
    with pytest.raises(grpc.RpcError) as caught:
        _create(stub, "bad", **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)
    names = [r.run for r in stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT).runs]
    assert "bad" not in names


def test_token_ids_out_of_the_vocabulary_are_refused(make_server, make_stub, tmp_path) -> None:
    folder = tiny_llama(tmp_path / "base")
    stub = make_stub(make_server(base_models=(f"tiny={folder}",)))
    _create(stub, "adapter")
    inputs = torch.zeros(2, 4, dtype=torch.int64)
    with pytest.raises(grpc.RpcError) as caught:
        compute(stub, inputs, torch.full((2, 4), VOCAB), run="adapter")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "targets.data" in field_violations(caught.value)


def test_an_adapter_run_resumes_bitwise_on_a_restarted_server_and_only_on_its_base(
    make_server, make_stub, tmp_path: Path
) -> None:
    folder = tiny_llama(tmp_path / "base")
    saved = str(tmp_path / "saved")
    first = make_server(base_models=(f"tiny={folder}",), checkpoint_dir=saved)
    stub = make_stub(first)
    _create(stub, "adapter")
    batches = _batches(7, 6)
    for inputs, targets in batches[:3]:
        compute(stub, inputs, targets, run="adapter")
        apply(stub, 0.01, run="adapter")
    first.stop(0)  # a graceful stop checkpoints every loaded run
    second = make_server(base_models=(f"tiny={folder}",), checkpoint_dir=saved)
    stub = make_stub(second)
    for inputs, targets in batches[3:]:
        compute(stub, inputs, targets, run="adapter")
        apply(stub, 0.01, run="adapter")
    _, local_tensors = _local_loop(folder, 3, batches)
    for mine, theirs in zip(
        _parameters(stub, "adapter").values(), local_tensors.values(), strict=True
    ):
        assert torch.equal(mine, theirs)
    second.stop(0)
    # The same name over other tensors: the run's checkpoint names its base by digest.
    other = tiny_llama(tmp_path / "other", seed=9)
    stub = make_stub(make_server(base_models=(f"tiny={other}",), checkpoint_dir=saved))
    with pytest.raises(grpc.RpcError) as caught:
        _parameters(stub, "adapter")
    assert "base_sha256" in (caught.value.details() or "")


def test_a_run_file_with_a_broken_adapter_is_skipped_at_start(
    make_server, make_stub, tmp_path: Path
) -> None:
    folder = tiny_llama(tmp_path / "base")
    saved = tmp_path / "saved"
    make_server(base_models=(f"tiny={folder}",), checkpoint_dir=str(saved)).stop(0)
    broken = saved / "runs" / "broken"
    broken.mkdir(parents=True)
    document = {
        "run": "broken",
        "owner": "",
        "model": "",
        "base_model": "tiny",
        "lora": {"rank": 4},
    }
    (broken / "run.json").write_text(json.dumps(document))
    stub = make_stub(make_server(base_models=(f"tiny={folder}",), checkpoint_dir=str(saved)))
    names = [r.run for r in stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT).runs]
    assert "broken" not in names


def test_the_run_file_keeps_the_adapter(make_server, make_stub, tmp_path: Path) -> None:
    folder = tiny_llama(tmp_path / "base")
    stub = make_stub(
        make_server(base_models=(f"tiny={folder}",), checkpoint_dir=str(tmp_path / "saved"))
    )
    _create(stub, "adapter")
    documents = [json.loads(p.read_text()) for p in (tmp_path / "saved").rglob("run.json")]
    (document,) = [d for d in documents if d["run"] == "adapter"]
    assert document["base_model"] == "tiny"
    assert document["lora"]["rank"] == 4


class _ServerProcess:
    """`python server/serve.py` with one base, durable (every answered update is on disk)."""

    def __init__(self, base: Path, directory: Path, log: Path) -> None:
        self.command = [
            sys.executable, str(ROOT / "server" / "serve.py"), "--port=0", "--metrics-port=0",
            f"--base-model=tiny={base}", f"--checkpoint-dir={directory}",
            "--durability=sync", "--torch-threads=1",
        ]  # fmt: skip
        self.log = log
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> str:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )  # fmt: skip
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("listening on "):
                return f"127.0.0.1:{line.rsplit(':', 1)[1].strip()}"
        raise AssertionError(f"server exited: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process.stdout.close()


@pytest.mark.slow
def test_an_adapter_run_resumes_bitwise_after_kill_9(tmp_path: Path) -> None:
    folder = tiny_llama(tmp_path / "base")
    server = _ServerProcess(folder, tmp_path / "saved", tmp_path / "server.log")
    batches = _batches(10, 6)
    try:
        for start, stop in ((0, 3), (3, 6)):
            channel = grpc.insecure_channel(server.start())
            stub = pb_grpc.GradientServiceStub(channel)
            if start == 0:
                _create(stub, "adapter")
            for inputs, targets in batches[start:stop]:
                compute(stub, inputs, targets, run="adapter")
                apply(stub, 0.01, run="adapter")  # answered once on disk (--durability sync)
            ours = _parameters(stub, "adapter")
            channel.close()
            server.kill()
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()
    _, local_tensors = _local_loop(folder, 3, batches)
    for mine, theirs in zip(ours.values(), local_tensors.values(), strict=True):
        assert torch.equal(mine, theirs)
