"""GetRun: one run's summary, owner, base, checkpoints and datasets, for the caller who may
see it; another principal learns nothing, not even that the name exists. Real server on
port 0; the figures it answers are compared with what the test made."""

from __future__ import annotations

import grpc
import pytest
import torch

from gradserve.client.gradient_client import GradientClient
from gradserve.client.security import bearer_metadata
from gradserve.errors import GradserveError, InvalidArgumentError, NotFoundError
from tests.test_runs import batch, wait_until


def test_get_run_answers_what_the_run_holds(make_server, tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice alice-token-1\n")
    server = make_server(checkpoint_dir=str(tmp_path / "checkpoints"), auth_tokens_file=str(tokens))
    metadata = bearer_metadata("alice-token-1")
    with GradientClient(server.address, run="mine", metadata=metadata) as client:
        client.create_run("mine", model="linear", loss="l1", optimizer="adam", seed=3)
        client.compute_gradients(*batch(0))
        client.apply_update(0.1)
        client.save_checkpoint("first")
        client.save_checkpoint("second")
        inputs, targets = torch.randn(7, 1), torch.randn(7, 1)
        client.upload_dataset("train", inputs, targets)

        details = client.get_run("mine")

    listed = details.summary
    assert (listed.run, listed.model_spec, listed.model_version, listed.loaded) == (
        "mine",
        "linear",
        1,
        True,
    )
    assert listed.optimizer.startswith("adam")
    assert listed.parameter_bytes == 2 * 4
    assert (details.owner, details.base_model, details.loss) == ("alice", "", "l1")
    assert details.checkpoints == 2
    assert (details.datasets, details.dataset_bytes) == (1, 2 * 7 * 4)


def test_the_default_run_has_no_owner_and_no_checkpoints_without_a_directory(
    make_server,
) -> None:
    server = make_server()
    with GradientClient(server.address) as client:
        details = client.get_run("")
    assert (details.summary.run, details.owner, details.checkpoints, details.datasets) == (
        "",
        "",
        0,
        0,
    )


def _refusal(client: GradientClient, run: str) -> GradserveError:
    with pytest.raises(GradserveError) as raised:
        client.get_run(run)
    return raised.value


def test_another_principal_gets_the_answer_of_a_name_that_does_not_exist(
    make_server, tmp_path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice alice-token-1\nbob bob-token-2\n")
    server = make_server(auth_tokens_file=str(tokens))
    with (
        GradientClient(server.address, metadata=bearer_metadata("alice-token-1")) as alice,
        GradientClient(server.address, metadata=bearer_metadata("bob-token-2")) as bob,
    ):
        alice.create_run("secret", model="linear")
        theirs = _refusal(bob.for_run("secret"), "secret")
        nobodys = _refusal(bob.for_run("nobody"), "nobody")
    assert isinstance(theirs, NotFoundError) and isinstance(nobodys, NotFoundError)
    assert str(theirs).replace("secret", "NAME") == str(nobodys).replace("nobody", "NAME")


@pytest.mark.parametrize("name", ["../x", "a/b", "a\x00", "a" * 200])
def test_a_bad_name_is_refused_naming_the_run_field(make_server, name: str) -> None:
    server = make_server()
    with GradientClient(server.address) as client:
        error = _refusal(client, name)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.field == "run"


def test_a_run_header_for_another_run_is_refused(make_server) -> None:
    server = make_server()
    with GradientClient(server.address, run="placed") as client:
        client.create_run("placed", model="linear")
        client.create_run("other", model="linear")
        error = _refusal(client, "other")
    assert isinstance(error, InvalidArgumentError)
    assert error.field == "run"


def test_get_run_reads_an_idle_run_without_loading_it(make_server, tmp_path) -> None:
    server = make_server(checkpoint_dir=str(tmp_path), run_idle_seconds=0.2)
    with GradientClient(server.address, run="sleepy") as client:
        client.create_run("sleepy", model="linear")
        client.compute_gradients(*batch(0))
        client.apply_update(0.1)
        wait_until(lambda: not client.get_run("sleepy").summary.loaded)
        details = client.get_run("sleepy")
        listed = next(run for run in client.list_runs() if run.run == "sleepy")
    assert (details.summary.loaded, details.summary.model_version) == (False, 1)
    assert not listed.loaded
    # The unload wrote the checkpoint it is loaded back from.
    assert details.checkpoints >= 1
