"""GradientClient bound to a run: every request names it, every call carries `gradserve-run`
(except for the default run), and the run RPCs come back as gradserve.types. Real servers on
port 0, local torch as the oracle.

The checkpoint, digest and fork tests skip while the server answers those RPCs UNIMPLEMENTED
(or refuses forks as "not served yet"); they run as they are once the server serves them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc
import pytest
import torch
from helpers import run_folder
from proxy import FaultyProxy

from gradserve.client.gradient_client import GradientClient, TrainStep
from gradserve.client.security import bearer_metadata
from gradserve.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    GradserveError,
    NotFoundError,
)
from tests.test_runs import batch, oracle

T = TypeVar("T")
PENDING = "lands with the server's ListCheckpoints/LoadCheckpoint/DeleteCheckpoint/GetStateDigest"


def served(call: Callable[[], T], what: str = PENDING) -> T:
    """The call's answer; the test skips while the server answers UNIMPLEMENTED."""
    try:
        return call()
    except GradserveError as error:
        if error.code is grpc.StatusCode.UNIMPLEMENTED:
            pytest.skip(f"the server answers UNIMPLEMENTED: {what}")
        raise


def train_steps(client: GradientClient, seeds: range, lr: float) -> None:
    for seed in seeds:
        client.compute_gradients(*batch(seed))
        client.apply_update(lr)


def test_a_run_client_names_its_run_in_every_request_and_call(make_server) -> None:
    server = make_server()
    with FaultyProxy(server.address) as proxy, GradientClient(proxy.address, run="alpha") as client:
        name, info = client.create_run("alpha", model="linear", seed=1)
        assert (name, info.run, info.model_version) == ("alpha", "alpha", 0)
        _, start = client.get_parameters()
        train_steps(client, range(5), 0.1)
        steps = [TrainStep.of([batch(seed)], 0.1) for seed in range(5, 10)]
        assert len(list(client.train_stream([steps]))) == 1
        _, streamed = client.stream_parameters()
        expected = oracle(start, range(10), 0.1)
        for key in ("w", "b"):
            assert torch.equal(streamed[key], expected[key]), key
        # The other calls reach run alpha too: its version moves, the default run's does not.
        client.compute_gradients(*batch(0))
        assert client.discard_gradients() == 1
        client.evaluate(*batch(0))
        client.describe_graph(*batch(0))
        assert client.upload_parameters(start) == 11
        assert client.set_parameters(start) == 12
        assert client.model_info().model_version == 12
        assert server.store.version == 0
        seen = [(method, metadata) for method, metadata in proxy.metadata_seen]
    called = {method for method, _ in seen}
    assert {"CreateRun", "Train", "StreamParameters", "UploadParameters", "Evaluate"} <= called
    assert all(metadata.get("gradserve-run") == "alpha" for _, metadata in seen), seen


def test_the_default_run_sends_no_run_metadata(make_server) -> None:
    server = make_server()
    with FaultyProxy(server.address) as proxy, GradientClient(proxy.address) as client:
        train_steps(client, range(2), 0.1)
        client.model_info()
        assert server.store.version == 2
        assert proxy.metadata_seen
        assert all("gradserve-run" not in metadata for _, metadata in proxy.metadata_seen)


def test_for_run_shares_the_channel_and_metadata_follows_the_named_run(make_server) -> None:
    server = make_server()
    with FaultyProxy(server.address) as proxy, GradientClient(proxy.address) as client:
        # Created from a default-run client: the metadata names the run the body names.
        client.create_run("beta", model="linear", seed=2)
        beta = client.for_run("beta")
        with beta:
            train_steps(beta, range(3), 0.05)
        # Closing the run client left the channel open for its parent.
        assert client.model_info().model_version == 0
        assert client.for_run("beta").model_info().model_version == 3
        create = [m for method, m in proxy.metadata_seen if method == "CreateRun"]
        assert create == [{**create[0], "gradserve-run": "beta"}]


def test_create_run_retried_after_a_lost_answer_is_answered_once(make_server) -> None:
    server = make_server()
    # The server creates the run, the proxy loses the answer: the retry, with the same
    # request_id, gets the first answer instead of ALREADY_EXISTS.
    with (
        FaultyProxy(server.address, methods={"CreateRun"}, drop_calls={1}) as proxy,
        GradientClient(proxy.address) as client,
    ):
        name, info = client.create_run("gamma", model="mlp:1-4-1", optimizer="adam", seed=3)
        assert (name, info.model_spec, proxy.calls["CreateRun"]) == ("gamma", "mlp:1-4-1:relu", 2)
        assert info.optimizer.startswith("adam")
        with pytest.raises(AlreadyExistsError):
            client.create_run("gamma", model="linear")
        generated, _ = client.create_run(model="linear")
        assert generated.startswith("run-")
        runs = client.list_runs()
        assert [r.run for r in runs] == sorted(["", "gamma", generated])
        gamma = next(r for r in runs if r.run == "gamma")
        assert (gamma.model_spec, gamma.model_version, gamma.loaded) == ("mlp:1-4-1:relu", 0, True)
        assert gamma.parameter_bytes == (4 + 4 + 4 + 1) * 4


def test_delete_run_and_ownership_through_the_typed_client(make_server, tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice alice-token-1\nbob bob-token-2\n")
    server = make_server(auth_tokens_file=str(tokens))

    def as_(token: str, run: str = "") -> GradientClient:
        return GradientClient(server.address, run=run, metadata=bearer_metadata(token))

    with as_("alice-token-1", "mine") as alice, as_("bob-token-2", "mine") as bob:
        alice.create_run("mine", model="linear")
        with pytest.raises(NotFoundError):
            bob.model_info()
        assert [r.run for r in bob.list_runs()] == [""]
        with pytest.raises(NotFoundError):
            bob.delete_run("mine")
        with pytest.raises(FailedPreconditionError):
            alice.delete_run("")
        assert alice.delete_run("mine") == 0
        with pytest.raises(NotFoundError):
            alice.model_info()


def test_save_checkpoint_answers_what_it_wrote(make_server, tmp_path) -> None:
    server = make_server(checkpoint_dir=str(tmp_path / "checkpoints"))
    with GradientClient(server.address, run="delta") as client:
        client.create_run("delta", model="linear")
        train_steps(client, range(2), 0.1)
        saved = client.save_checkpoint()
        assert (saved.model_version, saved.accumulated_batches) == (2, 0)
        assert (run_folder(tmp_path / "checkpoints", "delta") / saved.name).is_dir()


def test_named_checkpoints_list_load_delete_and_digests(make_server, tmp_path) -> None:
    server = make_server(checkpoint_dir=str(tmp_path / "checkpoints"))
    with GradientClient(server.address, run="eps") as client:
        client.create_run("eps", model="linear", optimizer="sgd:momentum=0.9", seed=4)
        train_steps(client, range(3), 0.05)
        digest = served(client.state_digest)
        assert digest.model_version == 3 and len(digest.digest) == 64
        saved = client.save_checkpoint("three")
        assert (saved.name, saved.model_version, saved.digest) == ("three", 3, digest.digest)
        with pytest.raises(AlreadyExistsError):
            client.save_checkpoint("three")
        train_steps(client, range(3, 6), 0.05)
        _, after_six = client.get_parameters()
        assert client.state_digest().digest != digest.digest
        listed = client.list_checkpoints()
        assert [(c.name, c.model_version, c.digest) for c in listed] == [
            ("three", 3, digest.digest)
        ]
        loaded = client.load_checkpoint("three", with_optimizer_state=True)
        assert (loaded.model_version, loaded.checkpoint_version) == (7, 3)
        assert loaded.restored_optimizer_state and loaded.restored_parameters == 2
        assert loaded.digest == client.state_digest().digest
        # With the momentum restored, the same three steps again give the same parameters.
        train_steps(client, range(3, 6), 0.05)
        _, again = client.get_parameters()
        for key in ("w", "b"):
            assert torch.equal(again[key], after_six[key]), key
        client.delete_checkpoint("three")
        assert client.list_checkpoints() == []
        with pytest.raises(NotFoundError):
            client.delete_checkpoint("three")
        with pytest.raises(NotFoundError):
            client.load_checkpoint("three")


def test_a_fork_continues_exactly_as_its_parent(make_server, tmp_path) -> None:
    server = make_server(checkpoint_dir=str(tmp_path / "checkpoints"))
    with GradientClient(server.address, run="parent") as parent:
        parent.create_run("parent", model="linear", optimizer="sgd:momentum=0.9", seed=5)
        train_steps(parent, range(3), 0.05)
        parent.save_checkpoint()
        checkpoint = served(parent.list_checkpoints)[-1]
        try:
            name, info = parent.create_run(
                "child", from_checkpoint=f"parent/{checkpoint.name}", with_optimizer_state=True
            )
        except FailedPreconditionError as error:
            if "not served yet" not in error.message:
                raise
            pytest.skip(f"the server refuses forks: {error.message}")
        assert (name, info.model_spec) == ("child", "linear")
        child = parent.for_run("child")
        _, at_fork = child.get_parameters()
        _, parent_now = parent.get_parameters()
        for key in ("w", "b"):
            assert torch.equal(at_fork[key], parent_now[key]), key
        child_digest, parent_digest = child.state_digest(), parent.state_digest()
        if child_digest.model_version == parent_digest.model_version:
            assert child_digest.digest == parent_digest.digest
        train_steps(parent, range(3, 6), 0.05)
        train_steps(child, range(3, 6), 0.05)
        _, parent_after = parent.get_parameters()
        _, child_after = child.get_parameters()
        for key in ("w", "b"):
            assert torch.equal(child_after[key], parent_after[key]), key
