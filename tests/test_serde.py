"""gradserve.serde: every x_to_proto / x_from_proto pair gives back what it was given, through
the wire bytes, and unknown enum values are errors that name their field."""

from __future__ import annotations

import pytest
import torch

from gradserve import serde, serde_datasets, serde_graph, serde_parameters, serde_runs
from gradserve.codec import dtype_to_proto
from gradserve.errors import InvalidArgumentError
from gradserve.graph_types import Graph, GraphDescription, GraphEdge, GraphNode, NodeKind
from gradserve.run_types import (
    CheckpointSummary,
    LoadResult,
    LoraRequest,
    RunRequest,
    RunSummary,
    SavedCheckpoint,
    StateDigest,
)
from gradserve.types import (
    DatasetUploadHeader,
    DeclaredTensor,
    DiscardResult,
    EvaluationResult,
    GradientResult,
    ModelInfo,
    Reduction,
    SetResult,
    StepResult,
    TensorSpec,
    TrainResult,
    TrainStep,
    UpdateResult,
)
from gradserve.v1 import gradserve_pb2 as pb


def through_wire(message):  # type: ignore[no-untyped-def]
    return type(message).FromString(message.SerializeToString())


def test_reduction_round_trip_and_unknown_values() -> None:
    for reduction in Reduction:
        assert serde.reduction_from_proto(serde.reduction_to_proto(reduction)) is reduction
    assert serde.reduction_from_proto(pb.REDUCTION_UNSPECIFIED) is Reduction.SUM
    with pytest.raises(InvalidArgumentError) as caught:
        serde.reduction_from_proto(7, "steps[2].reduction")
    assert caught.value.field == "steps[2].reduction"


def test_reduction_parse_refuses_typos() -> None:
    assert Reduction.parse("mean") is Reduction.MEAN
    assert Reduction.parse(Reduction.SUM) is Reduction.SUM
    with pytest.raises(ValueError, match="'maen'"):
        Reduction.parse("maen")


def test_model_info_round_trip() -> None:
    info = ModelInfo(
        model="mlp",
        model_spec="mlp:4-8-2",
        parameters=(
            TensorSpec("0.weight", torch.float32, (8, 4)),
            TensorSpec("0.bias", torch.float64, (8,)),
        ),
        parameter_count=40,
        input=TensorSpec("inputs", torch.float32, (-1, 4)),
        target=TensorSpec("targets", torch.int64, (-1,)),
        loss="cross_entropy",
        optimizer="adam",
        model_version=3,
        accumulated_batches=2,
        accumulated_samples=20,
        max_batch_elements=1000,
        max_message_bytes=4096,
        base_model="tiny",
        base_model_digest="0b" * 32,
    )
    assert serde.model_info_from_proto(through_wire(serde.model_info_to_proto(info))) == info


def test_model_info_round_trip_with_buffers() -> None:
    info = ModelInfo(
        model="mlp",
        model_spec="mlp:4-8-2:batchnorm",
        parameters=(TensorSpec("0.weight", torch.float32, (8, 4)),),
        parameter_count=32,
        input=TensorSpec("inputs", torch.float32, (-1, 4)),
        target=TensorSpec("targets", torch.int64, (-1,)),
        loss="cross_entropy",
        optimizer="sgd",
        model_version=0,
        accumulated_batches=0,
        accumulated_samples=0,
        buffers=(
            TensorSpec("1.running_mean", torch.float32, (8,)),
            TensorSpec("1.running_var", torch.float32, (8,)),
            TensorSpec("1.num_batches_tracked", torch.int64, ()),
        ),
    )
    back = serde.model_info_from_proto(through_wire(serde.model_info_to_proto(info)))
    assert back == info and back.buffers[2].shape == ()


def test_gradient_result_round_trip_with_gradients() -> None:
    gradients = {"w": torch.randn(3, 2), "b": torch.tensor([0.5], dtype=torch.float64)}
    result = GradientResult(1.25, 10, 2, 20, 7, gradients)
    back = serde.gradient_result_from_proto(through_wire(serde.gradient_result_to_proto(result)))
    assert (back.loss, back.batch_size, back.accumulated_batches) == (1.25, 10, 2)
    assert (back.accumulated_samples, back.model_version) == (20, 7)
    assert back.gradients.keys() == gradients.keys()
    for name, gradient in gradients.items():
        assert torch.equal(back.gradients[name], gradient)
        assert back.gradients[name].dtype == gradient.dtype
    back.gradients["w"].add_(1)  # a writable copy, not a view of the message


def test_update_and_evaluation_round_trip() -> None:
    update = UpdateResult(model_version=4, applied_batches=3, applied_samples=30, gradient_norm=2.5)
    assert serde.update_result_from_proto(through_wire(serde.update_result_to_proto(update))) == (
        update
    )
    for loss, predictions in ((None, None), (0.0, torch.arange(6.0).reshape(3, 2))):
        result = EvaluationResult(loss, 3, 9, predictions)
        back = serde.evaluation_result_from_proto(
            through_wire(serde.evaluation_result_to_proto(result))
        )
        assert (back.loss, back.batch_size, back.model_version) == (loss, 3, 9)
        if predictions is None:
            assert back.predictions is None
        else:
            assert back.predictions is not None and torch.equal(back.predictions, predictions)


@pytest.mark.parametrize("update", [False, True])
def test_train_step_round_trip(update: bool) -> None:
    batches = ((torch.randn(4, 1), torch.randn(4, 1)), (torch.randn(2, 1), torch.randn(2, 1)))
    step = TrainStep.of(
        batches,
        learning_rate=0.01 if update else None,
        reduction="mean",
        expected_version=5 if update else None,
    )
    back = serde.train_step_from_proto(through_wire(serde.train_step_to_proto(step)))
    assert (back.apply_update, back.learning_rate, back.reduction) == (update, step.learning_rate,
                                                                       Reduction.MEAN)  # fmt: skip
    assert back.expected_version == step.expected_version
    assert len(back.batches) == 2
    for (inputs, targets), (sent_inputs, sent_targets) in zip(back.batches, batches, strict=True):
        assert torch.equal(inputs, sent_inputs) and torch.equal(targets, sent_targets)


def test_train_step_of_refuses_unknown_reductions() -> None:
    with pytest.raises(ValueError, match="reduction"):
        TrainStep.of([], learning_rate=0.1, reduction="avg")


def test_train_step_from_proto_names_the_batch_field() -> None:
    message = serde.train_step_to_proto(TrainStep.of([(torch.zeros(2, 1), torch.zeros(2, 1))]))
    message.batches[0].targets.data = b"\x00"
    with pytest.raises(InvalidArgumentError) as caught:
        serde.train_step_from_proto(message, "steps[3]")
    assert caught.value.field is not None
    assert caught.value.field.startswith("steps[3].batches[0].targets")


def test_train_result_round_trip() -> None:
    result = TrainResult(
        (
            StepResult((1.0, 0.5), 0, 2),
            StepResult((0.25,), 1, 0, applied=True, applied_batches=3, gradient_norm=0.75),
        )
    )
    message = serde.train_result_to_proto(result, request_id="r-1")
    assert message.request_id == "r-1"
    assert serde.train_result_from_proto(through_wire(message)) == result


def test_graph_description_round_trip() -> None:
    gradient = torch.tensor([[0.25]])
    graph = Graph(
        nodes=(
            GraphNode(0, NodeKind.BACKWARD, "MseLossBackward0", (), torch.float32, True),
            GraphNode(1, NodeKind.PARAMETER, "w", (1, 1), torch.float32, True, gradient),
            GraphNode(2, NodeKind.INPUT, "targets", (10, 1), torch.float32, False),
            GraphNode(3, NodeKind.BACKWARD, "ViewBackward0", (2,), None, True),
        ),
        edges=(GraphEdge(0, 1, 0), GraphEdge(0, 2, -1, carries_gradient=False)),
        root=0,
        loss=0.5,
    )
    description = GraphDescription(graph, batch_size=10, model_version=2, max_nodes=64)
    back = serde_graph.graph_description_from_proto(
        through_wire(serde_graph.graph_description_to_proto(description))
    )
    assert back.graph.edges == graph.edges
    assert (back.graph.root, back.graph.loss) == (0, 0.5)
    assert (back.batch_size, back.model_version, back.max_nodes) == (10, 2, 64)
    for node, sent in zip(back.graph.nodes, graph.nodes, strict=True):
        assert (node.id, node.kind, node.name, node.shape) == (sent.id, sent.kind, sent.name,
                                                               sent.shape)  # fmt: skip
        assert (node.dtype, node.requires_grad) == (sent.dtype, sent.requires_grad)
    assert back.graph.node("w").gradient is not None
    assert torch.equal(back.graph.node("w").gradient, gradient)
    assert [child.name for _, child in back.graph.children(0)] == ["w", "targets"]


def test_graph_node_unknown_kind_names_the_field() -> None:
    message = pb.GraphNode(id=0, kind=99)
    with pytest.raises(InvalidArgumentError) as caught:
        serde_graph.graph_node_from_proto(message, "nodes[4]")
    assert caught.value.field == "nodes[4].kind"


RUN_TYPES = [
    (
        RunSummary(
            "alice-1", "mlp:4-8-2", "sgd:momentum=0.9", 7, True, 160, "tiny", "0a" * 32, "alice"
        ),
        serde_runs.run_summary_to_proto,
        serde_runs.run_summary_from_proto,
    ),
    (
        SavedCheckpoint("best", 9, 2, "ab" * 32),
        serde_runs.saved_checkpoint_to_proto,
        serde_runs.saved_checkpoint_from_proto,
    ),
    (
        CheckpointSummary("checkpoint-0000000003-v9", 9, 1, "cd" * 32, 1722.5),
        serde_runs.checkpoint_summary_to_proto,
        serde_runs.checkpoint_summary_from_proto,
    ),
    (
        LoadResult(12, 9, 2, 1, True, 3, "ef" * 32),
        serde_runs.load_result_to_proto,
        serde_runs.load_result_from_proto,
    ),
    (
        StateDigest("01" * 32, 12),
        serde_runs.state_digest_to_proto,
        serde_runs.state_digest_from_proto,
    ),
    (
        RunRequest(
            "bob-3",
            "mlp:4-8-2",
            "mse",
            "adam",
            5,
            "bob-2/best",
            True,
            "req-1",
            "tiny",
            LoraRequest(8, 16.0, ("q_proj", "v_proj"), 0.1),
        ),
        serde_runs.run_request_to_proto,
        serde_runs.run_request_from_proto,
    ),
    (
        SetResult(4),
        serde_parameters.set_result_to_proto,
        serde_parameters.set_result_from_proto,
    ),
    (
        SetResult(6),
        serde_parameters.uploaded_parameters_to_proto,
        serde_parameters.uploaded_parameters_from_proto,
    ),
    (
        DiscardResult(3, 8),
        serde_parameters.discard_result_to_proto,
        serde_parameters.discard_result_from_proto,
    ),
]


@pytest.mark.parametrize(("value", "to_proto", "from_proto"), RUN_TYPES)
def test_run_types_round_trip_with_every_field_set(value, to_proto, from_proto) -> None:  # type: ignore[no-untyped-def]
    message = to_proto(value)
    # Every field of the message carries a non-default value: none is dropped on the way.
    assert len(message.ListFields()) == len(message.DESCRIPTOR.fields), message
    assert from_proto(through_wire(message)) == value


def test_created_run_round_trip() -> None:
    info = ModelInfo(
        model="linear",
        model_spec="linear",
        parameters=(TensorSpec("w", torch.float32, (1,)), TensorSpec("b", torch.float32, (1,))),
        parameter_count=2,
        input=TensorSpec("inputs", torch.float32, (-1, 1)),
        target=TensorSpec("targets", torch.float32, (-1, 1)),
        loss="mse",
        optimizer="sgd",
        model_version=0,
        accumulated_batches=0,
        accumulated_samples=0,
        run="bob-2",
    )
    message = through_wire(serde_runs.created_run_to_proto("bob-2", info))
    assert serde_runs.created_run_from_proto(message) == ("bob-2", info)


@pytest.mark.parametrize("seed", [None, 0])
def test_run_request_tells_an_absent_seed_from_seed_zero(seed: int | None) -> None:
    request = RunRequest(model="linear", seed=seed)
    assert (
        serde_runs.run_request_from_proto(through_wire(serde_runs.run_request_to_proto(request)))
        == request
    )
    # An adapter over every linear layer (no target names) keeps its LoraSpec present.
    adapter = RunRequest(base_model="tiny", lora=LoraRequest(4, 8.0), seed=seed)
    assert (
        serde_runs.run_request_from_proto(through_wire(serde_runs.run_request_to_proto(adapter)))
        == adapter
    )


def test_upload_header_and_data_from_the_messages_an_upload_sends() -> None:
    inputs, targets = torch.zeros(3, 2), torch.ones(3, 1, dtype=torch.int64)
    first, *rest = serde_datasets.upload_requests(
        "squares", inputs, targets, run="bob-2", replace=True
    )
    header = serde_datasets.upload_header_from_proto(through_wire(first))
    assert header == DatasetUploadHeader(
        "bob-2",
        "squares",
        DeclaredTensor(dtype_to_proto(torch.float32), (3, 2)),
        DeclaredTensor(dtype_to_proto(torch.int64), (3, 1)),
        replace=True,
        digest=first.digest,
    )
    data = b"".join(serde_datasets.upload_data_from_proto(first, iter(rest)))
    assert data == inputs.numpy().tobytes() + targets.numpy().tobytes()


def test_upload_data_refuses_a_header_field_after_the_first_message() -> None:
    first, *rest = serde_datasets.upload_requests("squares", torch.zeros(2, 1), torch.zeros(2, 1))
    late = pb.UploadDatasetRequest(name="other", data=b"\0")
    with pytest.raises(InvalidArgumentError) as caught:
        list(serde_datasets.upload_data_from_proto(first, iter([*rest, late])))
    assert caught.value.field == "name"
