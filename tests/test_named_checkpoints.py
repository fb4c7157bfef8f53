"""Named checkpoints at run time (save, list, load, delete) and the state digest: a load gives
back the saved state exactly, and the digest recomputes from a checkpoint's files alone."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import grpc
import pytest
import torch

from gradserve.codec import tensor_from_proto, tensor_to_proto
from gradserve.v1 import gradserve_pb2 as pb

TIMEOUT = 30


def batch(seed: int, size: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(size, 1, generator=generator)
    return x, 2 * x + 1 + 0.1 * torch.randn(size, 1, generator=generator)


def accumulate(stub, seed: int, run: str = "") -> None:  # type: ignore[no-untyped-def]
    x, y = batch(seed)
    stub.ComputeGradients(
        pb.ComputeGradientsRequest(run=run, inputs=tensor_to_proto(x), targets=tensor_to_proto(y)),
        timeout=TIMEOUT,
    )


def step(stub, seed: int, run: str = "") -> None:  # type: ignore[no-untyped-def]
    accumulate(stub, seed, run)
    stub.ApplyUpdate(pb.ApplyUpdateRequest(run=run, learning_rate=0.05), timeout=TIMEOUT)


def parameters(stub, run: str = "") -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    response = stub.GetParameters(pb.GetParametersRequest(run=run), timeout=TIMEOUT)
    return {t.name: tensor_from_proto(t).clone() for t in response.parameters}


def digest(stub, run: str = "") -> pb.GetStateDigestResponse:  # type: ignore[no-untyped-def]
    return stub.GetStateDigest(pb.GetStateDigestRequest(run=run), timeout=TIMEOUT)


def save(stub, name: str = "", run: str = "") -> pb.SaveCheckpointResponse:  # type: ignore[no-untyped-def]
    return stub.SaveCheckpoint(pb.SaveCheckpointRequest(run=run, name=name), timeout=TIMEOUT)


def listed(stub, run: str = "") -> list[pb.CheckpointSummary]:  # type: ignore[no-untyped-def]
    return list(
        stub.ListCheckpoints(pb.ListCheckpointsRequest(run=run), timeout=TIMEOUT).checkpoints
    )


def load(stub, name: str, **fields) -> pb.LoadCheckpointResponse:  # type: ignore[no-untyped-def]
    return stub.LoadCheckpoint(pb.LoadCheckpointRequest(name=name, **fields), timeout=TIMEOUT)


def refused(call) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_save_train_load_returns_the_digest_of_the_save(make_server, make_stub, tmp_path) -> None:
    stub = make_stub(make_server(checkpoint_dir=str(tmp_path), optimizer="adam"))
    for seed in range(3):
        step(stub, seed)
    accumulate(stub, 3)  # held by the save, not covered by the digest
    saved = save(stub, "before")
    at_save = parameters(stub)
    assert saved.name == "before" and saved.model_version == 3
    assert saved.accumulated_batches == 1
    assert saved.digest == digest(stub).digest and len(saved.digest) == 64
    for seed in range(4, 8):
        step(stub, seed)
    accumulate(stub, 8)
    assert digest(stub).digest != saved.digest

    loaded = load(stub, "before", with_optimizer_state=True)
    assert (loaded.model_version, loaded.checkpoint_version) == (8, 3)
    assert (loaded.restored_parameters, loaded.restored_buffers) == (2, 0)
    assert loaded.restored_optimizer_state and loaded.discarded_batches == 1
    assert loaded.digest == saved.digest
    after = digest(stub)
    assert (after.digest, after.model_version) == (saved.digest, 8)
    assert all(torch.equal(value, at_save[name]) for name, value in parameters(stub).items())
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
    assert info.accumulated_batches == 0


def test_load_without_optimizer_state_keeps_the_live_optimizer(
    make_server, make_stub, tmp_path
) -> None:
    stub = make_stub(make_server(checkpoint_dir=str(tmp_path), optimizer="adam"))
    step(stub, 0)
    saved = save(stub, "one")
    step(stub, 1)
    loaded = load(stub, "one")
    assert not loaded.restored_optimizer_state
    assert loaded.digest != saved.digest  # Adam's moments and step are the live ones


def test_digest_recomputes_from_the_checkpoint_files_alone(
    make_server, make_stub, tmp_path
) -> None:
    """The reference in docs/protocol.md, written again here with json, struct and hashlib:
    a model with buffers (batch norm) and Adam's state."""
    server = make_server(checkpoint_dir=str(tmp_path), model="mlp:1-4-1:batchnorm", loss="mse",
                         optimizer="adam")  # fmt: skip
    stub = make_stub(server)
    for seed in range(2):
        step(stub, seed)
    saved = save(stub, "files")
    (folder,) = [p for p in tmp_path.iterdir() if p.name.endswith("-files-v2")]
    assert recompute(folder) == saved.digest == digest(stub).digest
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["state_digest"] == saved.digest and manifest["name"] == "files"


def recompute(folder: Path) -> str:
    data = (folder / "tensors.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    body = data[8 + size :]
    sha = hashlib.sha256(b"gradserve-state-digest-v1\n")

    def framed(text: str) -> bytes:
        return struct.pack("<I", len(text.encode())) + text.encode()

    for group in ("parameters.", "buffers.", "optimizer."):
        keys = sorted((k for k in header if k.startswith(group)), key=str.encode)
        assert keys, f"no {group} tensors in the file"
        for key in keys:
            entry = header[key]
            start, end = entry["data_offsets"]
            sha.update(
                framed(key) + framed(entry["dtype"]) + struct.pack("<I", len(entry["shape"]))
            )
            sha.update(b"".join(struct.pack("<Q", n) for n in entry["shape"]))
            sha.update(struct.pack("<Q", end - start) + body[start:end])
    return sha.hexdigest()


def test_named_checkpoints_are_never_pruned_and_names_are_unique(
    make_server, make_stub, tmp_path
) -> None:
    stub = make_stub(make_server(checkpoint_dir=str(tmp_path), checkpoint_keep=1))
    step(stub, 0)
    kept = save(stub, "keep-me")
    for seed in range(1, 4):
        step(stub, seed)
        last = save(stub)
    assert last.name.startswith("checkpoint-") and last.name.endswith("-v4")
    shown = listed(stub)
    assert [c.name for c in shown] == ["keep-me", last.name]  # oldest first, one periodic
    assert [c.model_version for c in shown] == [1, 4]
    assert shown[0].digest == kept.digest and shown[0].saved_at <= shown[1].saved_at
    assert refused(lambda: save(stub, "keep-me")).code() == grpc.StatusCode.ALREADY_EXISTS
    for bad in ("no/slash", "checkpoint-0000000009-v1", "-dash", "x" * 65):
        error = refused(lambda bad=bad: save(stub, bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in error.details()
    assert [c.name for c in listed(stub)] == ["keep-me", last.name]


def test_delete_and_unknown_names_change_nothing(make_server, make_stub, tmp_path) -> None:
    stub = make_stub(make_server(checkpoint_dir=str(tmp_path)))
    step(stub, 0)
    save(stub, "gone")
    stub.DeleteCheckpoint(pb.DeleteCheckpointRequest(name="gone"), timeout=TIMEOUT)
    assert listed(stub) == []
    before = digest(stub)
    for call in (
        lambda: load(stub, "gone"),
        lambda: stub.DeleteCheckpoint(pb.DeleteCheckpointRequest(name="gone"), timeout=TIMEOUT),
    ):
        assert refused(call).code() == grpc.StatusCode.NOT_FOUND
    assert refused(lambda: load(stub, "")).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert digest(stub) == before


def test_a_retried_load_is_answered_once(make_server, make_stub, tmp_path) -> None:
    stub = make_stub(make_server(checkpoint_dir=str(tmp_path)))
    step(stub, 0)
    save(stub, "base")
    first = load(stub, "base", request_id="load-1")
    again = load(stub, "base", request_id="load-1")
    assert first == again and digest(stub).model_version == 2


def test_checkpoint_rpcs_without_a_directory(server, stub) -> None:
    assert listed(stub) == []
    for call in (lambda: save(stub, "x"), lambda: load(stub, "x")):
        assert refused(call).code() == grpc.StatusCode.FAILED_PRECONDITION
    assert digest(stub).model_version == 0
