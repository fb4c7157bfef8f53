"""A CNN with dropout trained through GradientClient with seeds, per-step rates and parameter
groups is bitwise its local twin: torch.manual_seed(seed) under fork_rng before the forward."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from gradserve.client import train
from gradserve.client.gradient_client import GradientClient
from gradserve.client.step_seeds import base_seed
from gradserve.errors import InvalidArgumentError
from gradserve.pass_types import DatasetPass
from gradserve.types import TrainStep

TIMEOUT = 30
SPEC = "cnn:1x6x6-3:channels=4:dropout=0.5"
STEPS = 6


def local_cnn() -> nn.Sequential:
    # networks.build_cnn for SPEC, written out: conv, relu, pool, flatten, dropout, linear.
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4 * 3 * 3, 3),
    )


def batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    return [
        (
            torch.randn(5, 1, 6, 6, generator=generator),
            torch.randint(0, 3, (5,), generator=generator),
        )
        for _ in range(count)
    ]


def rate(step: int) -> float:
    # A cosine schedule's per-step rate: the client sends each step's own.
    return 0.5 * 0.1 * (1 + math.cos(math.pi * step / STEPS))


def twin(client: GradientClient) -> nn.Sequential:
    module = local_cnn()
    _, parameters = client.get_parameters()
    module.load_state_dict(parameters)
    return module


def seeded_forward_backward(module: nn.Module, batch, seed: int) -> float:
    """What the server does with a seeded batch (docs/models-and-data.md)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loss = nn.functional.cross_entropy(module(batch[0]), batch[1])
    loss.backward()
    return loss.item()


def assert_bitwise(client: GradientClient, module: nn.Module) -> None:
    _, remote = client.get_parameters()
    for name, value in module.state_dict().items():
        assert torch.equal(remote[name], value), name


@pytest.mark.parametrize("unary", [True, False], ids=["unary", "stream"])
def test_seeded_dropout_steps_are_bitwise_the_local_twin(make_server, unary: bool) -> None:
    # Two batches per step: a Train step's batch j is seeded with the step's seed + j, as two
    # ComputeGradients calls with those seeds are.
    server = make_server()
    with GradientClient(server.address, timeout=TIMEOUT) as root:
        root.create_run("drop", model=SPEC, optimizer="sgd:momentum=0.9", seed=3)
        client = root.for_run("drop")
        module = twin(client)
        optimizer = torch.optim.SGD(module.parameters(), lr=0.0, momentum=0.9)
        data = batches(2 * STEPS)
        pairs = [data[2 * i : 2 * i + 2] for i in range(STEPS)]
        if unary:
            remote_losses = []
            for i, pair in enumerate(pairs):
                for j, batch in enumerate(pair):
                    remote_losses.append(
                        client.compute_gradients(*batch, seed=100 + 2 * i + j).loss
                    )
                client.apply_update(rate(i))
        else:
            steps = [TrainStep.of(pair, rate(i), seed=100 + 2 * i) for i, pair in enumerate(pairs)]
            results = [r for group in client.train_stream([steps[:2], steps[2:]]) for r in group]
            remote_losses = [loss for result in results for loss in result.losses]
        torch.manual_seed(999)  # the twin's own stream must not matter either
        local_losses = []
        for i, pair in enumerate(pairs):
            for j, batch in enumerate(pair):
                local_losses.append(seeded_forward_backward(module, batch, 100 + 2 * i + j))
            for group in optimizer.param_groups:
                group["lr"] = rate(i)
            optimizer.step()
            optimizer.zero_grad()
        assert remote_losses == local_losses
        assert_bitwise(client, module)


def test_without_seeds_the_masks_are_not_the_twins(make_server) -> None:
    # The proof that the seed is what makes them equal: unseeded, the server draws its own.
    server = make_server()
    with GradientClient(server.address, timeout=TIMEOUT) as root:
        root.create_run("drop", model=SPEC, seed=3)
        client = root.for_run("drop")
        module = twin(client)
        data = batches(4)
        remote = [client.compute_gradients(*batch).loss for batch in data]
        local = [seeded_forward_backward(module, batch, 100 + i) for i, batch in enumerate(data)]
        assert remote != local


GROUPS = "adamw:weight_decay=0.05;group=*.bias:weight_decay=0;group=0.*:lr_scale=0.5;group=5.weight:frozen=true"


def test_parameter_groups_with_seeds_and_schedule_are_bitwise(make_server) -> None:
    server = make_server()
    with GradientClient(server.address, timeout=TIMEOUT) as root:
        root.create_run("groups", model=SPEC, optimizer=GROUPS, seed=4)
        client = root.for_run("groups")
        module = twin(client)
        named = dict(module.named_parameters())
        before = {name: value.detach().clone() for name, value in named.items()}
        # Default group: nothing left (every parameter matches a group), so it is left out.
        groups = [
            {"params": [named["0.bias"], named["5.bias"]], "weight_decay": 0.0, "scale": 1.0},
            {"params": [named["0.weight"]], "scale": 0.5},
            {"params": [named["5.weight"]], "scale": 0.0},
        ]
        optimizer = torch.optim.AdamW(
            [{k: v for k, v in g.items() if k != "scale"} for g in groups],
            lr=0.0,
            weight_decay=0.05,
        )
        data = batches(STEPS)
        steps = [TrainStep.of([batch], rate(i), seed=i) for i, batch in enumerate(data)]
        list(client.train_stream([steps[:3], steps[3:]]))
        for i, batch in enumerate(data):
            seeded_forward_backward(module, batch, i)
            for group, settings in zip(optimizer.param_groups, groups, strict=True):
                group["lr"] = rate(i) * settings["scale"]
            optimizer.step()
            optimizer.zero_grad()
        assert_bitwise(client, module)
        # frozen=true kept its layer; the others moved.
        assert torch.equal(named["5.weight"], before["5.weight"])
        assert not torch.equal(named["0.weight"], before["0.weight"])


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("adam;group=nothing.*:lr_scale=2", "matches no parameter"),
        ("adam;group=*.bias:momentum=0.9", "no option 'momentum'"),
        ("adam;grup=*.bias", "expected group=GLOB"),
        ("adam;group=*.bias:lr_scale=-1", "lr_scale"),
    ],
)
def test_bad_groups_name_the_optimizer_field(make_server, spec: str, words: str) -> None:
    server = make_server()
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        with pytest.raises(InvalidArgumentError) as raised:
            client.create_run("bad", model=SPEC, optimizer=spec)
        assert words in str(raised.value)
        assert "optimizer" in str(raised.value)
        assert [run.run for run in client.list_runs() if run.run == "bad"] == []


def test_seeded_dataset_pass_is_bitwise_the_local_twin(make_server) -> None:
    # A DatasetPass's step i (one batch) is seeded with the pass's seed + i.
    server = make_server()
    with GradientClient(server.address, timeout=TIMEOUT) as root:
        root.create_run("pass", model=SPEC, seed=5)
        client = root.for_run("pass")
        module = twin(client)
        data = batches(4)
        inputs, targets = torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])
        client.upload_dataset("train", inputs, targets)
        descriptor = DatasetPass("train", batch_size=5, learning_rate=0.05, count=20, seed=77)
        remote = client.train_pass(descriptor)
        local = []
        for i, batch in enumerate(data):
            local.append(seeded_forward_backward(module, batch, 77 + i))
            with torch.no_grad():
                for parameter in module.parameters():
                    # The run's `sgd`: the seed's arithmetic, `p -= lr * p.grad`.
                    parameter.sub_(0.05 * parameter.grad)
                    parameter.grad = None
        assert list(remote.losses) == local
        assert_bitwise(client, module)


def test_trainer_with_a_seed_is_bitwise_its_local_twin(tmp_path, capsys) -> None:
    # gradserve-train's --seed drives every step's seed (client/step_seeds.py): a local loop
    # seeding batch j of step i with base_seed(S) + i * K + j is its twin, dropout included.
    generator = torch.Generator().manual_seed(11)
    rows = torch.randn(12, 3, generator=generator)
    csv = tmp_path / "rows.csv"
    csv.write_text("".join(",".join(f"{v:.6f}" for v in row.tolist()) + "\n" for row in rows))
    flags = "--model mlp:2-8-1:dropout=0.5 --loss mse --seed 3 --epochs 2 --batch-size 4"
    flags += " --accumulation-steps 2 --lr 0.05 --metrics-port 0 --progress never --json"
    code = train.main([*flags.split(), "--csv", str(csv)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])

    torch.manual_seed(3)  # the embedded server draws the initial parameters so
    module = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 1))
    values = torch.tensor(
        [[float(v) for v in line.split(",")] for line in csv.read_text().splitlines()]
    )
    epoch = [(values[k : k + 4, :2], values[k : k + 4, 2:]) for k in range(0, 12, 4)]
    step = 0
    for _ in range(2):
        for group in (epoch[:2], epoch[2:]):
            for j, (inputs, targets) in enumerate(group):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(base_seed(3) + step * 2 + j)
                    loss = ((module(inputs) - targets) ** 2).mean()
                loss.backward()
            with torch.no_grad():
                for parameter in module.parameters():
                    parameter.sub_(0.05 * parameter.grad)
                    parameter.grad = None
            step += 1
    for name, value in module.state_dict().items():
        remote = torch.tensor(summary["parameters"][name], dtype=torch.float32)
        assert torch.equal(remote, value.flatten()), name


def test_a_seed_is_part_of_a_request_ids_payload(make_server) -> None:
    server = make_server()
    with GradientClient(server.address, timeout=TIMEOUT) as root:
        root.create_run("ids", model=SPEC, seed=6)
        client = root.for_run("ids")
        (batch,) = batches(1)
        first = client.compute_gradients(*batch, seed=1, request_id="same")
        again = client.compute_gradients(*batch, seed=1, request_id="same")
        assert (again.loss, again.accumulated_batches) == (first.loss, 1)
        with pytest.raises(InvalidArgumentError, match="request_id"):
            client.compute_gradients(*batch, seed=2, request_id="same")
        with pytest.raises(InvalidArgumentError, match="request_id"):
            client.compute_gradients(*batch, request_id="same")
