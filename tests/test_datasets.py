"""Datasets kept on the server: batches that name samples (indices, slices) give bitwise the
results of the same batches sent inline; uploads are checked once, bounded by the byte budget
and owned by the run; bad names change nothing. The trainer's side: test_datasets_trainer.py."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
import torch
from helpers import TIMEOUT, Snapshot, field_violations

from gradserve.client.data import seed_data
from gradserve.client.gradient_client import GradientClient
from gradserve.client.security import bearer_metadata
from gradserve.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from gradserve.serde import train_step_from_proto, train_step_to_proto
from gradserve.serde_datasets import upload_requests
from gradserve.server.config import DatasetsConfig
from gradserve.server.datasets.registry import DatasetRegistry, StoredDataset
from gradserve.server.store.request_ids import fingerprint
from gradserve.types import DatasetBatch, TrainStep
from gradserve.v1 import gradserve_pb2 as pb


def held(server) -> float:  # type: ignore[no-untyped-def]
    return server.metrics.registry.get_sample_value("gradserve_dataset_bytes")  # type: ignore[no-any-return]


def test_an_mlp_trains_bitwise_from_indices_and_slices(server) -> None:
    """Gathered (index_select) and sliced (a view at an offset) batches give the matmuls the
    same operands as inline ones."""
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(96, 8, generator=generator)
    targets = torch.randint(0, 4, (96,), generator=generator)
    order = torch.randperm(96, generator=generator)
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        for run in ("named", "inline"):
            client.create_run(run, model="mlp:8-16-4", seed=5)
        named, inline = client.for_run("named"), client.for_run("inline")
        named.upload_dataset("digits", inputs, targets)
        steps_named, steps_inline = [], []
        for start in range(0, 96, 16):
            index = order[start : start + 16]
            steps_named.append(TrainStep(
                (), True, 0.1, dataset_batches=(
                    DatasetBatch("digits", tuple(index.tolist())),
                    DatasetBatch("digits", start=start, count=16),
                ),
            ))  # fmt: skip
            steps_inline.append(TrainStep.of(
                [(inputs[index], targets[index]),
                 (inputs[start : start + 16], targets[start : start + 16])], 0.1,
            ))  # fmt: skip
        losses_named = [r.losses for r in next(iter(named.train_stream([steps_named])))]
        losses_inline = [r.losses for r in next(iter(inline.train_stream([steps_inline])))]
        assert losses_named == losses_inline
        one = named.compute_gradients(DatasetBatch("digits", (5, 1, 5)), return_gradients=True)
        two = inline.compute_gradients(inputs[[5, 1, 5]], targets[[5, 1, 5]], return_gradients=True)
        assert one.loss == two.loss
        for name, gradient in one.gradients.items():
            assert torch.equal(gradient, two.gradients[name]), name
        a, b = named.get_parameters()[1], inline.get_parameters()[1]
        assert all(torch.equal(a[name], b[name]) for name in a)


def test_uploads_are_checked_once_and_bounded(make_server) -> None:
    server = make_server(max_dataset_bytes=2000, max_datasets_per_run=2)
    seed = seed_data(0).dataset
    x, y = seed.inputs, seed.targets  # 800 bytes
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        assert client.model_info().dataset_bytes_available == 2000
        bad = [
            (x.double(), y, "inputs.dtype"),
            (x.reshape(100, 1, 1), y, "inputs.shape"),
            (x, y[:50], "targets.shape"),
            (torch.cat([x[:99], torch.tensor([[float("nan")]])]), y, "inputs.data"),
            (torch.zeros(0, 1), torch.zeros(0, 1), "inputs.shape"),
        ]
        for inputs, targets, field in bad:
            with pytest.raises(InvalidArgumentError) as refused:
                client.upload_dataset("bad", inputs, targets)
            assert refused.value.field == field, (field, refused.value)
        with pytest.raises(ResourceExhaustedError) as over:
            client.upload_dataset("big", torch.rand(300, 1), torch.rand(300, 1))
        assert over.value.field == "max_dataset_bytes"
        assert [v.subject for v in over.value.violations] == ["max_dataset_bytes"]  # QuotaFailure
        assert client.list_datasets() == ([], 2000)  # nothing kept, nothing reserved

        first = client.upload_dataset("a", x, y)
        assert (first.samples, first.bytes, first.unchanged) == (100, 800, False)
        assert client.upload_dataset("a", x, y).unchanged  # a repeat keeps no second copy
        with pytest.raises(AlreadyExistsError):
            client.upload_dataset("a", x, y + 1)
        assert client.upload_dataset("a", x, y + 1, replace=True).replaced
        assert held(server) == 800
        client.upload_dataset("b", x[:10], y[:10])
        with pytest.raises(ResourceExhaustedError) as count:
            client.upload_dataset("c", x[:10], y[:10])
        assert count.value.field == "max_datasets_per_run"
        assert [d.name for d in client.list_datasets()[0]] == ["a", "b"]
        assert client.delete_dataset("b") == 80
        assert client.list_datasets()[1] == 1200


def raw_upload(stub, messages) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as refused:
        stub.UploadDataset(iter(messages), timeout=TIMEOUT)
    return refused.value


def test_uploads_with_wrong_bytes_or_headers_keep_nothing(server, stub) -> None:
    x, y = torch.rand(10, 1), torch.rand(10, 1)
    header, *chunks = upload_requests("d", x, y)  # one chunk per tensor
    header.digest = ""
    assert field_violations(raw_upload(stub, [header, *chunks[:-1]])) == ["data"]  # short
    extra = pb.UploadDatasetRequest(data=b"\0" * 8)
    assert field_violations(raw_upload(stub, [header, *chunks, extra])) == ["data"]
    late = pb.UploadDatasetRequest(name="d", data=b"")
    assert field_violations(raw_upload(stub, [header, late])) == ["name"]
    wrong = pb.UploadDatasetRequest()
    wrong.CopyFrom(header)
    wrong.digest = "0" * 64
    assert field_violations(raw_upload(stub, [wrong, *chunks])) == ["digest"]
    tiny = [pb.UploadDatasetRequest(data=b"\0")] * 100
    assert field_violations(raw_upload(stub, [header, *tiny])) == ["data"]  # too many messages
    listed = stub.ListDatasets(pb.ListDatasetsRequest(), timeout=TIMEOUT)
    assert not listed.datasets and held(server) == 0


def test_bad_names_are_refused_naming_the_field_and_change_nothing(server, stub) -> None:
    seed = seed_data(0)
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        client.upload_dataset("seed", seed.dataset.inputs, seed.dataset.targets)
        client.compute_gradients(DatasetBatch("seed", start=0, count=10))
    before = Snapshot.take(server, stub)
    good = pb.DatasetSlice(dataset="seed", start=0, count=10)
    cases = {
        "dataset.indices": pb.DatasetSlice(dataset="seed", indices=[0, 100]),
        "dataset.count": pb.DatasetSlice(dataset="seed", start=0, count=0),
        "dataset.start": pb.DatasetSlice(dataset="seed", start=95, count=10),
        "dataset.dataset": pb.DatasetSlice(),
    }
    for field, named in cases.items():
        with pytest.raises(grpc.RpcError) as refused:
            stub.ComputeGradients(pb.ComputeGradientsRequest(dataset=named), timeout=TIMEOUT)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(refused.value) == [field]
    inline = pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[1, 1], data=bytes(4))
    both = pb.ComputeGradientsRequest(dataset=good, inputs=inline, targets=inline)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ComputeGradients(both, timeout=TIMEOUT)
    assert field_violations(refused.value) == ["dataset"]
    with pytest.raises(grpc.RpcError) as refused:
        unknown = pb.DatasetSlice(dataset="other", start=0, count=1)
        stub.ComputeGradients(pb.ComputeGradientsRequest(dataset=unknown), timeout=TIMEOUT)
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    # A Train request is checked whole: a bad name in its second step runs not even the first.
    steps = [
        pb.TrainStep(batches=[pb.Batch(dataset=good)], apply_update=True, learning_rate=0.1),
        pb.TrainStep(batches=[pb.Batch(dataset=cases["dataset.indices"])]),
    ]
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.Train(iter([pb.TrainRequest(steps=steps)]), timeout=TIMEOUT))
    assert field_violations(refused.value) == ["steps[1].batches[0].dataset.indices"]
    before.assert_same(Snapshot.take(server, stub))


def test_a_run_owns_its_datasets_and_takes_them_when_deleted(make_server, tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice alice-token-1\nbob bob-token-2\n")
    server = make_server(auth_tokens_file=str(tokens))
    x, y = torch.rand(20, 1), torch.rand(20, 1)

    def as_(token: str, run: str = "") -> GradientClient:
        return GradientClient(
            server.address, run=run, metadata=bearer_metadata(token), timeout=TIMEOUT
        )

    with as_("alice-token-1") as alice, as_("bob-token-2", "mine") as bob:
        alice.create_run("mine", model="linear")
        mine = alice.for_run("mine")
        mine.upload_dataset("d", x, y)
        for call in (
            lambda: bob.compute_gradients(DatasetBatch("d", start=0, count=5)),
            bob.list_datasets,
            lambda: bob.upload_dataset("d", x, y),
            lambda: bob.delete_dataset("d"),
        ):
            with pytest.raises(NotFoundError) as hidden:
                call()
            assert hidden.value.field == "run"
        # The default run has its own namespace.
        with pytest.raises(NotFoundError) as elsewhere:
            alice.compute_gradients(DatasetBatch("d", start=0, count=5))
        assert elsewhere.value.reason == "DATASET_NOT_FOUND"
        assert mine.compute_gradients(DatasetBatch("d", start=0, count=5)).batch_size == 5
        alice.delete_run("mine")
        assert held(server) == 0
        alice.create_run("mine", model="linear")
        assert mine.list_datasets()[0] == []


def test_train_steps_with_named_batches_round_trip() -> None:
    step = TrainStep(
        (), True, 0.5, dataset_batches=(DatasetBatch("d", (3, 1)), DatasetBatch("d", (), 4, 2))
    )
    assert train_step_from_proto(train_step_to_proto(step)) == step
    resolved = train_step_from_proto(
        train_step_to_proto(step), resolve=lambda batch, field: (torch.ones(1), torch.zeros(1))
    )
    assert len(resolved.batches) == 2 and resolved.dataset_batches == ()


def test_the_registry_reserves_before_keeping_and_releases_on_failure() -> None:
    """The domain object alone: a failed upload releases its reservation; an upload that ends
    after its run was deleted keeps nothing."""

    class Owner:
        pass

    registry = DatasetRegistry(DatasetsConfig(max_bytes=100))
    owner = Owner()
    dataset = StoredDataset("a", torch.zeros(8, 1), torch.zeros(8, 1), "digest")
    with pytest.raises(RuntimeError), registry.reserved(owner, "a", 64):
        assert registry.available() == 36
        raise RuntimeError("the client went away")
    assert registry.available() == 100
    with pytest.raises(ResourceExhaustedError):
        registry.reserved(owner, "a", 101).__enter__()
    with registry.reserved(owner, "a", dataset.bytes):
        registry.drop_owner(owner)
        with pytest.raises(NotFoundError):
            registry.store(owner, dataset)
    assert (registry.held_bytes(), registry.available()) == (0, 100)


def test_request_id_fingerprints_of_inline_steps_are_what_they_were() -> None:
    """Checkpoints keep request-id fingerprints: an inline step's must not change because
    TrainStep gained dataset_batches and seed (left out while empty), a named or seeded
    step's must differ."""
    fields = [
        (f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory))
        for f in dataclasses.fields(TrainStep)
        if f.name not in ("dataset_batches", "named_as", "seed")
    ]
    before = dataclasses.make_dataclass("TrainStep", fields, frozen=True)
    x, y = torch.rand(4, 1), torch.rand(4, 1)
    step = TrainStep.of([(x, y)], 0.1, expected_version=3)
    old = before(step.batches, True, 0.1, step.reduction, 3, {}, None, ())
    assert fingerprint(step) == fingerprint(old)
    named = TrainStep((), True, 0.1, dataset_batches=(DatasetBatch("d", start=0, count=4),))
    assert fingerprint(named) != fingerprint(TrainStep((), True, 0.1))
    assert fingerprint(TrainStep.of([(x, y)], 0.1, expected_version=3, seed=0)) != fingerprint(step)


def test_gathered_batches_are_fingerprinted_by_the_samples_they_name() -> None:
    """A server-side step fingerprints a gathered batch by its DatasetBatch, not its bytes
    (hashing a gathered MLP batch cost a tenth of the step); inline batches keep their bytes."""
    x, y = torch.rand(4, 1), torch.rand(4, 1)
    slice_ = DatasetBatch("d", start=0, count=4)
    gathered = TrainStep(((x, y),), True, 0.1, named_as=(slice_,))
    other_bytes = TrainStep(((x + 1, y),), True, 0.1, named_as=(slice_,))
    assert fingerprint(gathered) == fingerprint(other_bytes)
    other_samples = TrainStep(((x, y),), True, 0.1, named_as=(DatasetBatch("d", (0, 1, 2, 3)),))
    assert fingerprint(gathered) != fingerprint(other_samples)
    inline = TrainStep(((x, y),), True, 0.1)
    assert fingerprint(gathered) != fingerprint(inline)
    mixed = TrainStep(((x, y), (x, y)), True, 0.1, named_as=(None, slice_))
    mixed_other_inline = TrainStep(((x + 1, y), (x, y)), True, 0.1, named_as=(None, slice_))
    assert fingerprint(mixed) != fingerprint(mixed_other_inline)
