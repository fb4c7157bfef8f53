"""Names by fullmatch (issue 23 item 4): one grammar for runs, checkpoints, datasets and
checkpoint folders, and every RPC field that takes a name refuses a hostile one with
INVALID_ARGUMENT naming the field, changing nothing."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from helpers import field_violations
from hypothesis import given, settings
from hypothesis import strategies as st
from test_isolation import checkpoint_names, run_names
from test_runs import batch, stub_for

from gradserve.codec import tensor_to_proto
from gradserve.errors import InvalidArgumentError
from gradserve.names import check_name, is_name
from gradserve.server.checkpoints.names import check_checkpoint_name, parse_folder
from gradserve.server.runs.names import check_run_name
from gradserve.v1 import gradserve_pb2 as pb

TIMEOUT = 30

HOSTILE = ["..", "/", "a/b", "a\x00b", "\n", "a\n", "a\rb", "a\tb", "a\u202eb", "\uff41\uff42\uff43",
           "a" * 65, "a" * 64 + "\n", "a@b", "-a", "a b"]  # fmt: skip


def named_calls(stub, bad: str):  # type: ignore[no-untyped-def]
    """(call, field) for every RPC field that takes a name, `bad` in it."""
    x, y = batch(0)
    inputs, targets = tensor_to_proto(x), tensor_to_proto(y)
    on_run = [
        (stub.GetModelInfo, pb.GetModelInfoRequest(run=bad)),
        (stub.GetRun, pb.GetRunRequest(run=bad)),
        (stub.ComputeGradients, pb.ComputeGradientsRequest(run=bad, inputs=inputs,
                                                           targets=targets)),
        (stub.ApplyUpdate, pb.ApplyUpdateRequest(run=bad, learning_rate=0.1)),
        (stub.Evaluate, pb.EvaluateRequest(run=bad, inputs=inputs, targets=targets)),
        (stub.GetParameters, pb.GetParametersRequest(run=bad)),
        (stub.SetParameters, pb.SetParametersRequest(run=bad)),
        (stub.DiscardGradients, pb.DiscardGradientsRequest(run=bad)),
        (stub.DescribeGraph, pb.DescribeGraphRequest(run=bad, inputs=inputs,
                                                     targets=targets)),
        (stub.SaveCheckpoint, pb.SaveCheckpointRequest(run=bad)),
        (stub.DeleteRun, pb.DeleteRunRequest(run=bad, delete_checkpoints=True)),
        (stub.ListCheckpoints, pb.ListCheckpointsRequest(run=bad)),
        (stub.LoadCheckpoint, pb.LoadCheckpointRequest(run=bad, name="a")),
        (stub.DeleteCheckpoint, pb.DeleteCheckpointRequest(run=bad, name="a")),
        (stub.GetStateDigest, pb.GetStateDigestRequest(run=bad)),
        (stub.ComputeOutputs, pb.ComputeOutputsRequest(run=bad, inputs=inputs)),
        (stub.BackwardOutputs, pb.BackwardOutputsRequest(run=bad, handle="h",
                                                         output_gradients=targets)),
        (stub.ListDatasets, pb.ListDatasetsRequest(run=bad)),
        (stub.DeleteDataset, pb.DeleteDatasetRequest(run=bad, name="a")),
        (stub.CreateRun, pb.CreateRunRequest(run=bad, model="linear")),
    ]  # fmt: skip
    calls = [(lambda c=c, r=r: c(r, timeout=TIMEOUT), "run") for c, r in on_run]
    streams = [
        (stub.Train, pb.TrainRequest(run=bad)),
        (stub.StreamParameters, pb.StreamParametersRequest(run=bad)),
    ]
    calls += [(lambda c=c, r=r: list(c(r, timeout=TIMEOUT)), "run") for c, r in streams[1:]]
    calls.append((lambda: list(stub.Train(iter([streams[0][1]]), timeout=TIMEOUT)), "run"))
    calls.append((lambda: stub.UploadParameters(iter([pb.UploadParametersRequest(run=bad)]),
                                                timeout=TIMEOUT), "run"))  # fmt: skip
    slice_ = pb.DatasetSlice(dataset=bad, start=0, count=1)
    named = [
        (stub.SaveCheckpoint, pb.SaveCheckpointRequest(name=bad), "name"),
        (stub.LoadCheckpoint, pb.LoadCheckpointRequest(name=bad), "name"),
        (stub.DeleteCheckpoint, pb.DeleteCheckpointRequest(name=bad), "name"),
        (stub.DeleteDataset, pb.DeleteDatasetRequest(name=bad), "name"),
        (stub.ComputeGradients, pb.ComputeGradientsRequest(dataset=slice_), "dataset.dataset"),
        (stub.CreateRun, pb.CreateRunRequest(run="ok", from_checkpoint=f"{bad}/a"),
         "from_checkpoint"),
        (stub.CreateRun, pb.CreateRunRequest(run="ok", from_checkpoint=f"/{bad}"),
         "from_checkpoint"),
        (stub.CreateRun, pb.CreateRunRequest(run="ok", model=f"file:{bad}"), "model"),
    ]  # fmt: skip
    calls += [(lambda c=c, r=r: c(r, timeout=TIMEOUT), f) for c, r, f in named]
    upload = pb.UploadDatasetRequest(name=bad)
    calls.append((lambda: stub.UploadDataset(iter([upload]), timeout=TIMEOUT), "name"))
    return calls


@pytest.mark.parametrize("bad", HOSTILE, ids=[ascii(b)[:20] for b in HOSTILE])
def test_every_name_field_refuses_a_hostile_name_and_changes_nothing(
    make_server, tmp_path, bad: str
) -> None:
    server = make_server(checkpoint_dir=str(tmp_path / "ckpt"), model_dir=str(tmp_path))
    channel, stub, _ = stub_for(server)
    with channel:
        stub.SaveCheckpoint(pb.SaveCheckpointRequest(name="before"), timeout=TIMEOUT)
        digest = stub.GetStateDigest(pb.GetStateDigestRequest(), timeout=TIMEOUT).digest
        files = sorted(str(p) for p in (tmp_path / "ckpt").rglob("*"))
        for call, field in named_calls(stub, bad):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            error = caught.value
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, error.details())
            assert field_violations(error) == [field], error.details()
        assert run_names(stub, ()) == [""]
        assert checkpoint_names(stub, "", ()) == ["before"]
        assert stub.GetStateDigest(pb.GetStateDigestRequest(), timeout=TIMEOUT).digest == digest
        assert sorted(str(p) for p in (tmp_path / "ckpt").rglob("*")) == files
        listed = stub.ListDatasets(pb.ListDatasetsRequest(), timeout=TIMEOUT)
        assert list(listed.datasets) == []


ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70) | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,70}\n?", fullmatch=True))
def test_the_one_grammar_accepts_exactly_its_names(text: str) -> None:
    """Runs, checkpoints, datasets and checkpoint folders all answer by the one grammar."""
    expected = 1 <= len(text) <= 64 and text[0] not in "._-" and all(c in ALLOWED for c in text)
    assert is_name(text) == expected
    for check in (
        lambda: check_run_name(text, new=True),
        lambda: check_checkpoint_name(text, new=False),
        lambda: check_name(text, "name", "a dataset name"),
    ):
        try:
            check()
        except InvalidArgumentError:
            assert not expected
        else:
            assert expected
    folder = parse_folder(Path(f"checkpoint-0000000001-{text}-v3"))
    assert (folder is not None and folder.given_name == text) == expected
