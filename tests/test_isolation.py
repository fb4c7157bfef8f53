"""Runs isolated for good (issue 23): a run is an incarnation, not a name; names are per
principal; handles survive the idle unloader; the header rule holds for a generated name; a
tokens file cannot take a bare token's principal. Names by fullmatch: tests/test_names.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch
from helpers import field_violations
from test_runs import batch, create, parameters, step, stub_for, wait_until

from gradserve.client.security import bearer_metadata
from gradserve.codec import tensor_to_proto
from gradserve.errors import InvalidArgumentError
from gradserve.server.runs.principals import derived_principal
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

TIMEOUT = 30
ROOT = Path(__file__).resolve().parent.parent
ALICE, BOB, ADMIN = "alice-token-5e1d", "bob-token-0c7a", "admin-token-93fb"


def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"alice {ALICE}\nbob {BOB}\nroot {ADMIN} admin\n")
    return path


def who(token: str) -> tuple[tuple[str, str], ...]:
    return tuple(bearer_metadata(token))


def refused(call, code: grpc.StatusCode) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == code, caught.value.details()
    return caught.value


def checkpoint_names(stub, run: str, metadata) -> list[str]:  # type: ignore[no-untyped-def]
    listed = stub.ListCheckpoints(
        pb.ListCheckpointsRequest(run=run), timeout=TIMEOUT, metadata=metadata
    )
    return [c.name for c in listed.checkpoints]


def run_names(stub, metadata) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.run for r in stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT,
                                          metadata=metadata).runs]  # fmt: skip


# -- a run is an incarnation (items 1, 5) ------------------------------------------------


def test_a_deleted_runs_checkpoints_reach_no_later_run_of_its_name(make_server, tmp_path) -> None:
    server = make_server(checkpoint_dir=str(tmp_path / "ckpt"),
                         auth_tokens_file=str(tokens_file(tmp_path)))  # fmt: skip
    alice, bob, root = who(ALICE), who(BOB), who(ADMIN)
    channel, stub, _ = stub_for(server)
    with channel:
        create(stub, "shared", alice, seed=1)
        step(stub, "shared", 0, 0.1, alice)
        secret = parameters(stub, "shared", alice)
        stub.SaveCheckpoint(pb.SaveCheckpointRequest(run="shared", name="alice-secret"),
                            timeout=TIMEOUT, metadata=alice)  # fmt: skip
        stub.DeleteRun(pb.DeleteRunRequest(run="shared"), timeout=TIMEOUT, metadata=alice)
        # Bob's "shared" and Alice's own new "shared": neither lists, loads, forks or
        # deletes the deleted run's checkpoint.
        for metadata in (bob, alice):
            create(stub, "shared", metadata, seed=2)
            assert checkpoint_names(stub, "shared", metadata) == []
            for call in (
                lambda m=metadata: stub.LoadCheckpoint(pb.LoadCheckpointRequest(
                    run="shared", name="alice-secret"), timeout=TIMEOUT, metadata=m),
                lambda m=metadata: stub.DeleteCheckpoint(pb.DeleteCheckpointRequest(
                    run="shared", name="alice-secret"), timeout=TIMEOUT, metadata=m),
                lambda m=metadata: create(stub, "fork", m, model="",
                                          from_checkpoint="shared/alice-secret"),
            ):  # fmt: skip
                refused(call, grpc.StatusCode.NOT_FOUND)
            assert not torch.equal(parameters(stub, "shared", metadata)["w"], secret["w"])
        # The deleted run is Alice's under a name no client can create: NAME@TAG.
        kept = [name for name in run_names(stub, alice) if name.startswith("shared@")]
        assert len(kept) == 1 and run_names(stub, bob) == ["", "shared"]
        (retired,) = kept
        assert checkpoint_names(stub, retired, alice) == ["alice-secret"]
        refused(lambda: checkpoint_names(stub, retired, bob), grpc.StatusCode.NOT_FOUND)
        assert checkpoint_names(stub, retired, root) == ["alice-secret"]
        refused(lambda: create(stub, retired, alice), grpc.StatusCode.INVALID_ARGUMENT)
        create(stub, "restored", alice, model="", from_checkpoint=f"{retired}/alice-secret")
        for key, value in secret.items():
            assert torch.equal(parameters(stub, "restored", alice)[key], value)
        # Kept checkpoints go only with delete_checkpoints.
        error = refused(
            lambda: stub.DeleteRun(pb.DeleteRunRequest(run=retired), timeout=TIMEOUT,
                                   metadata=alice),
            grpc.StatusCode.FAILED_PRECONDITION,
        )  # fmt: skip
        assert field_violations(error) == ["delete_checkpoints"]
        deleted = stub.DeleteRun(pb.DeleteRunRequest(run=retired, delete_checkpoints=True),
                                 timeout=TIMEOUT, metadata=alice)  # fmt: skip
        assert deleted.deleted_checkpoints == 1
        assert retired not in run_names(stub, alice)


def test_another_principals_runs_change_no_answer(make_server, tmp_path) -> None:
    """Names are per principal: CreateRun answers the same for a name another principal
    holds as for a free one, and a request id another principal used replays nothing."""
    server = make_server(auth_tokens_file=str(tokens_file(tmp_path)))
    alice, bob = who(ALICE), who(BOB)
    channel, stub, _ = stub_for(server)
    with channel:
        first = create(stub, "taken", alice, request_id="create-1")
        assert create(stub, "taken", bob, request_id="create-1").run == "taken"
        assert create(stub, "free", bob).run == "free"
        refused(lambda: create(stub, "taken", bob), grpc.StatusCode.ALREADY_EXISTS)  # his own
        # Alice's retry still gets her first answer, whatever Bob sent under the same id.
        again = create(stub, "taken", alice, request_id="create-1")
        assert again.run == first.run and again.info.model_version == 0
        step(stub, "taken", 0, 0.1, bob)
        assert stub.GetModelInfo(pb.GetModelInfoRequest(run="taken"), timeout=TIMEOUT,
                                 metadata=alice).model_version == 0  # fmt: skip


def test_an_admin_acts_on_a_principals_runs_with_gradserve_owner(make_server, tmp_path) -> None:
    server = make_server(auth_tokens_file=str(tokens_file(tmp_path)))
    alice, bob, root = who(ALICE), who(BOB), who(ADMIN)
    for_alice = (*root, ("gradserve-owner", "alice"))
    channel, stub, _ = stub_for(server)
    with channel:
        create(stub, "course", for_alice, seed=3)
        assert run_names(stub, alice) == ["", "course"] and run_names(stub, bob) == [""]
        assert run_names(stub, root) == ["", "course"]
        step(stub, "course", 0, 0.1, alice)
        assert stub.GetRun(pb.GetRunRequest(run="course"), timeout=TIMEOUT,
                           metadata=for_alice).owner == "alice"  # fmt: skip
        # Bob's gradserve-owner is no admin's: it reaches nothing of Alice's.
        refused(lambda: step(stub, "course", 0, 0.1, (*bob, ("gradserve-owner", "alice"))),
                grpc.StatusCode.NOT_FOUND)  # fmt: skip
        assert stub.GetModelInfo(pb.GetModelInfoRequest(run="course"), timeout=TIMEOUT,
                                 metadata=alice).model_version == 1  # fmt: skip


def test_an_admins_list_tells_two_principals_same_named_runs_apart(make_server, tmp_path) -> None:
    # Names are per principal: Alice's and Bob's "mine" are two runs, and the admin's ListRuns
    # (which shows every run) must say whose each is; a principal sees only its own owner.
    server = make_server(auth_tokens_file=str(tokens_file(tmp_path)))
    alice, bob, root = who(ALICE), who(BOB), who(ADMIN)
    channel, stub, _ = stub_for(server)
    with channel:
        create(stub, "mine", alice, seed=1)
        create(stub, "mine", bob, seed=2)
        listed = stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT, metadata=root).runs
        assert sorted((r.run, r.owner) for r in listed if r.run) == [
            ("mine", "alice"), ("mine", "bob")]  # fmt: skip
        for metadata, owner in ((alice, "alice"), (bob, "bob")):
            mine = stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT, metadata=metadata).runs
            assert [(r.run, r.owner) for r in mine if r.run] == [("mine", owner)]


class ServerProcess:
    """server/serve.py in a child process, so the test can kill -9 it."""

    def __init__(self, *arguments: str, log: Path) -> None:
        self.arguments, self.log = arguments, log
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> str:
        command = [sys.executable, str(ROOT / "server" / "serve.py"), "--port=0",
                   "--torch-threads=1", *self.arguments]  # fmt: skip
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT
            )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("listening on "):
                return line.split()[-1]
        raise AssertionError(f"server exited: {self.log.read_text()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None and self.process.stdout is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process.stdout.close()


def test_delete_recreate_kill_9_restart_restores_each_run_from_its_own_incarnation(
    tmp_path,
) -> None:
    arguments = (f"--checkpoint-dir={tmp_path / 'ckpt'}",
                 f"--auth-tokens-file={tokens_file(tmp_path)}")  # fmt: skip
    alice, bob = who(ALICE), who(BOB)

    def connect(address: str):  # type: ignore[no-untyped-def]
        channel = grpc.insecure_channel(address)
        return channel, pb_grpc.GradientServiceStub(channel)

    with ServerProcess(*arguments, log=tmp_path / "server.log") as address:
        channel, stub = connect(address)
        with channel:
            for name in ("shared", "other"):
                create(stub, name, alice, seed=1)
                step(stub, name, 0, 0.1, alice)
                if name == "shared":
                    secret = parameters(stub, name, alice)
                stub.SaveCheckpoint(pb.SaveCheckpointRequest(run=name, name="alice-secret"),
                                    timeout=TIMEOUT, metadata=alice)  # fmt: skip
                stub.DeleteRun(pb.DeleteRunRequest(run=name), timeout=TIMEOUT, metadata=alice)
            create(stub, "shared", bob, seed=5)
            create(stub, "other", bob, model="mlp:1-4-1", seed=5)
            fresh = parameters(stub, "shared", bob)
            assert not torch.equal(fresh["w"], secret["w"])
    with ServerProcess(*arguments, log=tmp_path / "server.log") as address:  # after kill -9
        channel, stub = connect(address)
        with channel:
            restored = parameters(stub, "shared", bob)
            for key, value in fresh.items():
                assert torch.equal(restored[key], value), key
            assert checkpoint_names(stub, "shared", bob) == []
            info = stub.GetModelInfo(pb.GetModelInfoRequest(run="other"), timeout=TIMEOUT,
                                     metadata=bob)  # fmt: skip
            assert info.model == "mlp" and info.model_version == 0
            assert set(parameters(stub, "other", bob)) == {
                "0.weight",
                "0.bias",
                "2.weight",
                "2.bias",
            }
            kept = sorted(n for n in run_names(stub, alice) if "@" in n)
            assert [n.partition("@")[0] for n in kept] == ["other", "shared"]
            assert checkpoint_names(stub, kept[1], alice) == ["alice-secret"]
            for key, value in secret.items():
                assert torch.equal(parameters(stub, kept[1], alice)[key], value)


def test_a_checkpoint_folder_from_before_incarnations_stays_its_runs(make_server, tmp_path):  # type: ignore[no-untyped-def]
    """runs/NAME/ with its run.json (the old layout) is read in place; runs/NAME/ without
    one (a run deleted back then) is no run's, and a new run NAME starts beside it fresh."""
    first = make_server(checkpoint_dir=str(tmp_path))
    channel, stub, _ = stub_for(first)
    with channel:
        create(stub, "old", seed=3)
        step(stub, "old", 0, 0.1)
        stub.SaveCheckpoint(pb.SaveCheckpointRequest(run="old", name="kept"), timeout=TIMEOUT)
        saved = parameters(stub, "old")
    first.stop(0)
    (folder,) = (tmp_path / "runs").iterdir()
    for name, with_run_file in (("old", True), ("orphan", False)):
        legacy = tmp_path / "runs" / name
        shutil.copytree(folder, legacy)
        document = (legacy / "run.json").read_text().replace(folder.name, name)
        (legacy / "run.json").write_text(document)
        if not with_run_file:
            (legacy / "run.json").unlink()
    shutil.rmtree(folder)
    second = make_server(checkpoint_dir=str(tmp_path))
    channel, stub, _ = stub_for(second)
    with channel:
        assert run_names(stub, ()) == ["", "old"]
        for key, value in saved.items():
            assert torch.equal(parameters(stub, "old")[key], value)
        create(stub, "orphan")
        assert checkpoint_names(stub, "orphan", ()) == []


# -- handles, the header rule, tokens-file principals (items 7, 8, 9) ---------------------


def test_the_idle_unloader_keeps_a_run_whose_output_handles_live(make_server, tmp_path) -> None:
    server = make_server(checkpoint_dir=str(tmp_path), run_idle_seconds=0.2,
                         output_handle_seconds=600.0)  # fmt: skip
    channel, stub, _ = stub_for(server)
    with channel:
        create(stub, "held")  # registered first: the unloader looks at it first in a round
        create(stub, "idle")
        x, y = batch(0)
        outputs = stub.ComputeOutputs(
            pb.ComputeOutputsRequest(run="held", inputs=tensor_to_proto(x)), timeout=TIMEOUT
        )
        stub.GetModelInfo(pb.GetModelInfoRequest(run="idle"), timeout=TIMEOUT)

        def loaded(name: str) -> bool:
            runs = stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT).runs
            return next(r for r in runs if r.run == name).loaded

        # "idle" was used after "held": once it is unloaded, "held" was idle long enough too.
        wait_until(lambda: not loaded("idle"))
        assert loaded("held")
        gradient = 2 * (torch.zeros_like(y) + 1) / y.numel()
        result = stub.BackwardOutputs(
            pb.BackwardOutputsRequest(run="held", handle=outputs.handle, loss=1.0,
                                      output_gradients=tensor_to_proto(gradient)),
            timeout=TIMEOUT,
        )  # fmt: skip
        assert result.accumulated_batches == 1


def test_an_empty_name_create_under_a_header_naming_a_run_is_refused(make_server) -> None:
    server = make_server()
    channel, stub, _ = stub_for(server)
    with channel:
        error = refused(lambda: create(stub, "", (("gradserve-run", "placed"),)),
                        grpc.StatusCode.INVALID_ARGUMENT)  # fmt: skip
        assert field_violations(error) == ["run"]
        assert run_names(stub, ()) == [""]
        assert create(stub, "").run.startswith("run-")  # without a header: a generated name


def test_a_tokens_file_cannot_take_a_principal_name_the_server_gives(make_server, tmp_path) -> None:
    bare = "bare-token-6b0e"
    for name in (derived_principal(bare).name, "token-00000000", "anonymous", "a\u202eb"):
        path = tmp_path / "tokens"
        path.write_text(f"{bare}\n{name} thief-token-1\n")
        with pytest.raises(InvalidArgumentError) as caught:
            make_server(auth_tokens_file=str(path))
        assert "line 2" in caught.value.message and "\n" not in caught.value.message
    # Through serve.py: one line on stderr and exit 2.
    path.write_text(f"{bare}\n{derived_principal(bare).name} thief-token-1\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "server" / "serve.py"), "--port=0",
         f"--auth-tokens-file={path}"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "token-<8 hex>" in done.stderr
