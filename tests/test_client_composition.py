"""GradientClient as one class over composed call groups: its methods hand each call to a
group that takes exactly what it takes, every public method is documented, and the groups of
a client made by `for_run` name its run. A real server on port 0."""

from __future__ import annotations

import inspect

import pytest
import torch
from helpers import linear_batch

from gradserve.client.call_channel import CallChannel
from gradserve.client.custom_loss import CustomLosses
from gradserve.client.dataset_calls import DatasetCalls
from gradserve.client.gradient_client import GradientClient
from gradserve.client.parameter_transfer import ParameterTransfer
from gradserve.client.run_calls import RunCalls
from gradserve.client.sampling_calls import SamplingCalls
from gradserve.client.step_calls import StepCalls
from gradserve.client.train_calls import TrainCalls

GROUPS = {
    "steps": StepCalls,
    "stream": TrainCalls,
    "losses": CustomLosses,
    "runs": RunCalls,
    "datasets": DatasetCalls,
    "parameters": ParameterTransfer,
    "sampling": SamplingCalls,
}


def public_methods(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in vars(cls).items()
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, property))
    }


def test_gradient_client_is_one_class_not_a_stack_of_mixins() -> None:
    assert GradientClient.__mro__ == (GradientClient, object)
    for group in (*GROUPS.values(), CallChannel):
        assert group.__mro__ == (group, object), group


@pytest.mark.parametrize("attribute", sorted(GROUPS))
def test_each_group_method_is_a_client_method_with_the_same_signature(attribute: str) -> None:
    for name, method in public_methods(GROUPS[attribute]).items():
        delegation = getattr(GradientClient, name)
        assert inspect.signature(delegation) == inspect.signature(method), name


def test_every_public_method_and_property_has_a_docstring() -> None:
    undocumented = [
        f"{cls.__name__}.{name}"
        for cls in (GradientClient, CallChannel, *GROUPS.values())
        for name, member in public_methods(cls).items()
        if not inspect.getdoc(member)
    ]
    assert undocumented == []


def test_the_groups_of_a_run_client_name_its_run_and_leave_the_channel_open(make_server) -> None:
    server = make_server()
    with GradientClient(server.address, timeout=10.0) as client:
        client.create_run("beta", model="linear", seed=2)
        with client.for_run("beta") as beta:
            assert beta.run == "beta"
            assert beta.target == client.target
            assert beta.steps.model_info().run == "beta"
            beta.steps.compute_gradients(*linear_batch(8, torch.Generator().manual_seed(0)))
            assert beta.apply_update(0.1).model_version == 1
            version, values = beta.parameters.get_parameters()
            assert version == 1
            assert values.keys() == {spec.name for spec in beta.model_info().parameters}
            assert [run.run for run in beta.runs.list_runs()] == ["", "beta"]
        # The default run's client, on the channel `beta` did not close, saw none of it.
        assert (client.run, client.model_info().run, client.model_info().model_version) == (
            "",
            "",
            0,
        )
