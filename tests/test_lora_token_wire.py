"""Token losses over the wire: per-token weights, importance_sampling and ppo on adapter runs."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch
from helpers import TIMEOUT, apply, compute, decoded, field_violations
from llm_bases import VOCAB, peft_adapter_tensors, peft_model, tiny_llama

from gradserve.codec import tensor_to_proto
from gradserve.v1 import gradserve_pb2 as pb

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)
TARGETS = ["q_proj", "v_proj"]
CLIPS = {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}
Batch = dict[str, torch.Tensor]


def _create(stub, run: str) -> None:  # type: ignore[no-untyped-def]
    stub.CreateRun(
        pb.CreateRunRequest(
            run=run,
            base_model="tiny",
            lora=pb.LoraSpec(rank=4, alpha=8, target_modules=TARGETS),
            optimizer="adamw:weight_decay=0.01",
            seed=3,
        ),
        timeout=TIMEOUT,
    )


def _batches(loss: str, seed: int, count: int, masked: bool = False) -> list[Batch]:
    """Token batches with the per-token tensors `loss` takes (weights with zeros that mask);
    `masked`: left padding, the padded positions out of the attention and weighted 0."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        tokens = torch.randint(0, VOCAB, (2, 9), generator=generator)
        batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
        if masked:
            mask = torch.ones(2, 8, dtype=torch.int64)
            mask[1, :3] = 0
            batch["attention_mask"] = mask
        if loss == "cross_entropy":
            weights = torch.rand(2, 8, generator=generator) * 2
            weights[torch.rand(2, 8, generator=generator) < 0.3] = 0.0
            batch["sample_weights"] = weights if not masked else weights * mask
        else:
            # The sampler's log-probabilities near the model's (about -log VOCAB).
            batch["logprobs"] = -4.1 + 0.3 * torch.randn(2, 8, generator=generator)
            batch["advantages"] = torch.randn(2, 8, generator=generator)
        batches.append(batch)
    return batches


def _logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    mask = batch.get("attention_mask")
    return model(input_ids=batch["inputs"], attention_mask=mask).logits  # type: ignore[no-any-return]


def _fields(loss: str, batch: Batch) -> dict[str, object]:
    fields: dict[str, object] = {name: tensor_to_proto(t) for name, t in batch.items()}
    fields["loss"] = pb.LossSpec(name=loss, options=CLIPS if loss == "ppo" else {})
    return fields


def _local_loss(loss: str, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """docs/adapters.md's formulas, written out."""
    lp = torch.log_softmax(logits, -1).gather(-1, batch["targets"].unsqueeze(-1)).squeeze(-1)
    if loss == "cross_entropy":
        return -(lp * batch["sample_weights"]).sum()
    ratio = torch.exp(lp - batch["logprobs"])
    advantages = batch["advantages"]
    if loss == "importance_sampling":
        return -(ratio * advantages).sum()
    clipped = torch.clamp(ratio, CLIPS["clip_low_threshold"], CLIPS["clip_high_threshold"])
    return -torch.min(ratio * advantages, clipped * advantages).sum()


def _local_loop(folder: Path, loss: str, batches: list[Batch]) -> tuple[list[float], dict]:  # type: ignore[type-arg]
    local = peft_model(folder, 4, 8, TARGETS, seed=3).train()
    optimizer = torch.optim.AdamW(
        [p for p in local.parameters() if p.requires_grad], lr=0.01, weight_decay=0.01
    )
    losses = []
    for batch in batches:
        value = _local_loss(loss, _logits(local, batch), batch)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    return losses, peft_adapter_tensors(local)


def _assert_adapter_is(stub, run: str, tensors: dict) -> None:  # type: ignore[no-untyped-def,type-arg]
    response = stub.GetParameters(pb.GetParametersRequest(run=run), timeout=TIMEOUT)
    ours = decoded(response.parameters)
    assert len(ours) == len(tensors)
    for mine, theirs in zip(ours.values(), tensors.values(), strict=True):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize(
    ("loss", "masked"),
    [
        ("cross_entropy", False),
        ("cross_entropy", True),
        ("importance_sampling", False),
        ("ppo", True),
    ],
)
def test_twenty_steps_of_a_named_token_loss_are_bitwise_the_local_peft_loop(
    make_server, make_stub, tmp_path: Path, loss: str, masked: bool
) -> None:
    folder = tiny_llama(tmp_path / "base")
    stub = make_stub(make_server(base_models=(f"tiny={folder}",)))
    _create(stub, "adapter")
    info = stub.GetModelInfo(pb.GetModelInfoRequest(run="adapter"), timeout=TIMEOUT)
    listed = {entry.name: list(entry.options) for entry in info.losses}
    assert listed == {
        "cross_entropy": [],
        "importance_sampling": [],
        "ppo": ["clip_low_threshold", "clip_high_threshold"],
    }
    batches = _batches(loss, 4, 20, masked)
    losses = []
    for batch in batches:
        request = pb.ComputeGradientsRequest(run="adapter", **_fields(loss, batch))  # type: ignore[arg-type]
        losses.append(stub.ComputeGradients(request, timeout=TIMEOUT).loss)
        apply(stub, 0.01, run="adapter")
    local_losses, local_tensors = _local_loop(folder, loss, batches)
    assert losses == local_losses
    _assert_adapter_is(stub, "adapter", local_tensors)


def test_ppo_batches_train_through_a_train_stream_bitwise(
    make_server, make_stub, tmp_path: Path
) -> None:
    folder = tiny_llama(tmp_path / "base")
    stub = make_stub(make_server(base_models=(f"tiny={folder}",)))
    _create(stub, "adapter")
    batches = _batches("ppo", 8, 8, masked=True)
    steps = [
        pb.TrainStep(
            batches=[pb.Batch(**_fields("ppo", batch))],  # type: ignore[arg-type]
            apply_update=True,
            learning_rate=0.01,
        )
        for batch in batches
    ]
    responses = list(
        stub.Train(iter([pb.TrainRequest(run="adapter", steps=steps)]), timeout=TIMEOUT)
    )
    losses = [loss for response in responses for step in response.steps for loss in step.losses]
    local_losses, local_tensors = _local_loop(folder, "ppo", batches)
    assert losses == local_losses
    _assert_adapter_is(stub, "adapter", local_tensors)


def _bad(loss: str, change: str) -> dict[str, object]:
    batch = _batches("cross_entropy" if loss == "cross_entropy" else "ppo", 1, 1, True)[0]
    options = dict(CLIPS) if loss == "ppo" else {}
    if change == "short weights":
        batch["sample_weights"] = batch["sample_weights"][:, :-1]
    elif change == "float64 logprobs":
        batch["logprobs"] = batch["logprobs"].double()
    elif change == "no advantages":
        del batch["advantages"]
    elif change == "vocabulary":
        batch["inputs"] = batch["inputs"].clone()
        batch["inputs"][0, 0] = VOCAB
    elif change == "weights with ppo":
        batch["sample_weights"] = torch.ones(2, 8)
    elif change == "low clip":
        options["clip_low_threshold"] = 1.5
    elif change == "mask shape":
        batch["attention_mask"] = batch["attention_mask"][:1]
    elif change == "mask values":
        batch["attention_mask"] = batch["attention_mask"] * 2
    elif change == "nan advantages":
        batch["advantages"] = batch["advantages"].clone()
        batch["advantages"][1, 1] = float("nan")
    fields: dict[str, object] = {name: tensor_to_proto(t) for name, t in batch.items()}
    fields["loss"] = pb.LossSpec(name=loss, options=options)
    if change in ("normalized", "zero weights"):
        fields["weighted_reduction"] = pb.WEIGHTED_REDUCTION_NORMALIZED
    if change == "zero weights":
        fields["sample_weights"] = tensor_to_proto(torch.zeros(2, 8))
    return fields


@pytest.mark.parametrize(
    ("loss", "change", "field"),
    [
        ("cross_entropy", "short weights", "sample_weights.shape"),
        ("ppo", "normalized", "weighted_reduction"),
        ("cross_entropy", "zero weights", "sample_weights.data"),
        ("cross_entropy", "vocabulary", "inputs.data"),
        ("ppo", "float64 logprobs", "logprobs.dtype"),
        ("ppo", "no advantages", "advantages"),
        ("importance_sampling", "no advantages", "advantages"),
        ("ppo", "weights with ppo", "sample_weights"),
        ("ppo", "low clip", "loss.options.clip_low_threshold"),
        ("ppo", "nan advantages", "advantages.data"),
        ("ppo", "mask shape", "attention_mask.shape"),
        ("cross_entropy", "mask values", "attention_mask.data"),
        ("huber", "none", "loss.name"),
    ],
)
def test_bad_token_batches_are_refused_naming_the_field_and_change_nothing(
    make_server, make_stub, tmp_path: Path, loss: str, change: str, field: str
) -> None:
    folder = tiny_llama(tmp_path / "base")
    stub = make_stub(make_server(base_models=(f"tiny={folder}",)))
    _create(stub, "adapter")
    before = stub.GetParameters(pb.GetParametersRequest(run="adapter"), timeout=TIMEOUT)
    request = pb.ComputeGradientsRequest(run="adapter", **_bad(loss, change))  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as caught:
        stub.ComputeGradients(request, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)
    info = stub.GetModelInfo(pb.GetModelInfoRequest(run="adapter"), timeout=TIMEOUT)
    assert (info.accumulated_batches, info.model_version) == (0, 0)
    after = stub.GetParameters(pb.GetParametersRequest(run="adapter"), timeout=TIMEOUT)
    assert before == after
    # The run still trains after a refusal: the same batch made right is taken.
    good = _batches("ppo", 1, 1)[0]
    assert compute(stub, good["inputs"], good["targets"], run="adapter").batch_size == 2


def test_evaluate_answers_the_targets_logprobs_without_the_logits(
    make_server, make_stub, tmp_path: Path
) -> None:
    folder = tiny_llama(tmp_path / "base")
    stub = make_stub(make_server(base_models=(f"tiny={folder}",)))
    _create(stub, "adapter")
    batches = _batches("ppo", 6, 4)
    for batch in batches[:3]:
        request = pb.ComputeGradientsRequest(run="adapter", **_fields("ppo", batch))  # type: ignore[arg-type]
        stub.ComputeGradients(request, timeout=TIMEOUT)
        apply(stub, 0.01, run="adapter")
    last = batches[3]
    response = stub.Evaluate(
        pb.EvaluateRequest(
            run="adapter",
            inputs=tensor_to_proto(last["inputs"]),
            targets=tensor_to_proto(last["targets"]),
            return_logprobs=True,
        ),
        timeout=TIMEOUT,
    )
    assert not response.HasField("predictions")  # the logits stay on the server
    ours = decoded([response.logprobs])[""]
    local = peft_model(folder, 4, 8, TARGETS, seed=3).train()
    optimizer = torch.optim.AdamW(
        [p for p in local.parameters() if p.requires_grad], lr=0.01, weight_decay=0.01
    )
    for batch in batches[:3]:
        optimizer.zero_grad()
        _local_loss("ppo", local(input_ids=batch["inputs"]).logits, batch).backward()
        optimizer.step()
    with torch.no_grad():
        logits = local.eval()(input_ids=last["inputs"]).logits
    theirs = torch.log_softmax(logits, -1).gather(-1, last["targets"].unsqueeze(-1)).squeeze(-1)
    assert ours.dtype == torch.float32 and ours.shape == (2, 8)
    assert torch.equal(ours, theirs)
    assert response.loss == -theirs.sum().item()


@pytest.mark.parametrize(
    ("run", "targets", "field"), [("adapter", False, "targets"), ("", True, "return_logprobs")]
)
def test_logprobs_are_refused_without_targets_or_on_a_model_without_tokens(
    make_server, make_stub, tmp_path: Path, run: str, targets: bool, field: str
) -> None:
    folder = tiny_llama(tmp_path / "base")
    stub = make_stub(make_server(base_models=(f"tiny={folder}",)))
    _create(stub, "adapter")
    info = stub.GetModelInfo(pb.GetModelInfoRequest(run=run), timeout=TIMEOUT)
    if run:
        inputs = torch.zeros(2, 4, dtype=torch.int64)
        target = inputs
    else:  # the default run's own batch
        inputs = torch.zeros(2, *info.input.shape[1:])
        target = torch.zeros(2, *info.target.shape[1:])
    request = pb.EvaluateRequest(run=run, inputs=tensor_to_proto(inputs), return_logprobs=True)
    if targets:
        request.targets.CopyFrom(tensor_to_proto(target))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(request, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)


def test_per_token_tensors_on_a_model_without_tokens_are_refused_not_ignored(
    make_server, make_stub
) -> None:
    stub = make_stub(make_server())
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
    inputs = torch.zeros(2, *info.input.shape[1:])
    targets = torch.zeros(2, *info.target.shape[1:])
    with pytest.raises(grpc.RpcError) as caught:
        compute(stub, inputs, targets, advantages=tensor_to_proto(torch.ones(2, 1)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "advantages" in field_violations(caught.value)
    after = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
    assert after.accumulated_batches == 0


def test_a_retried_ppo_batch_replays_and_the_same_id_with_other_advantages_is_refused(
    make_server, make_stub, tmp_path: Path
) -> None:
    folder = tiny_llama(tmp_path / "base")
    stub = make_stub(make_server(base_models=(f"tiny={folder}",)))
    _create(stub, "adapter")
    batch = _batches("ppo", 2, 1, masked=True)[0]
    request = pb.ComputeGradientsRequest(run="adapter", request_id="b1", **_fields("ppo", batch))  # type: ignore[arg-type]
    first = stub.ComputeGradients(request, timeout=TIMEOUT)
    assert stub.ComputeGradients(request, timeout=TIMEOUT) == first
    for name in ("advantages", "attention_mask"):
        other = dict(batch)
        other[name] = batch[name].clone()
        other[name][0, -1] = 0
        changed = pb.ComputeGradientsRequest(
            run="adapter", request_id="b1", **_fields("ppo", other)
        )  # type: ignore[arg-type]
        with pytest.raises(grpc.RpcError) as caught:
            stub.ComputeGradients(changed, timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request_id" in field_violations(caught.value)
    info = stub.GetModelInfo(pb.GetModelInfoRequest(run="adapter"), timeout=TIMEOUT)
    assert info.accumulated_batches == 1
