"""The Tinker API's keys, isolation between principals, limits and refusals, over plain HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TIMEOUT
from tinker_helpers import datum, post, sdk_garbage, sequences, service, start  # noqa: F401

from gradserve.v1 import gradserve_pb2 as pb

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning"),
]


def _tokens(tmp_path: Path) -> str:
    path = tmp_path / "tokens"
    path.write_text("alice tml-alice\nbob tml-bob\n")
    return str(path)


def test_another_key_never_sees_or_touches_a_run(make_server, make_stub, tmp_path: Path) -> None:
    running, url = start(make_server, tmp_path, auth_tokens_file=_tokens(tmp_path))
    alice = (
        service(url, "tml-alice")
        .create_lora_training_client(base_model="tiny", rank=4, seed=1)
        .result()
    )
    model = alice.model_id
    session = model.split(":")[0]
    status, future = post(url, "/api/v1/optim_step", {"model_id": model, "seq_id": 1,
                                                      "adam_params": {"learning_rate": 0.1}}, "tml-alice")  # fmt: skip
    assert status == 200

    # Bob: every way in is NOT_FOUND (or a finished session), as for a run that does not exist.
    assert post(url, "/api/v1/get_info", {"model_id": model}, "tml-bob")[0] == 404
    assert post(url, "/api/v1/optim_step", {"model_id": model, "seq_id": 2,
                                            "adam_params": {"learning_rate": 9.0}}, "tml-bob")[0] == 404  # fmt: skip
    assert (
        post(url, "/api/v1/retrieve_future", {"request_id": future["request_id"]}, "tml-bob")[0]
        == 404
    )
    assert post(url, "/api/v1/create_model", {"session_id": session, "model_seq_id": 5,
                                              "base_model": "tiny"}, "tml-bob")[0] == 404  # fmt: skip
    assert post(url, "/api/v1/session_heartbeat", {"session_id": session}, "tml-bob")[0] == 410
    # Without a key, or with one the server does not know: 401 before anything is read.
    assert post(url, "/api/v1/create_session", {}, "tml-mallory")[0] == 401
    assert post(url, "/api/v1/get_info", {"model_id": model}, "")[0] == 401

    # Alice's own optim_step failed only because nothing was accumulated: her answer, her run.
    status, answer = post(
        url, "/api/v1/retrieve_future", {"request_id": future["request_id"]}, "tml-alice"
    )
    assert status == 200 and answer["category"] == "user" and "accumulated" in answer["error"]

    # Over gRPC the run is alice's ordinary run, and bob's list does not hold it.
    def runs(token: str) -> list[str]:
        listed = make_stub(running).ListRuns(
            pb.ListRunsRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=TIMEOUT
        )
        return [entry.run for entry in listed.runs]

    assert model.replace(":", "-") in runs("tml-alice")
    assert model.replace(":", "-") not in runs("tml-bob")


def test_limits_answer_the_sdks_retryable_and_final_codes(make_server, tmp_path: Path) -> None:
    _, url = start(
        make_server,
        tmp_path,
        tinker_max_sessions=1,
        tinker_max_futures=1,
        tinker_max_body_bytes=4096,
    )
    status, session = post(url, "/api/v1/create_session", {"tags": [], "sdk_version": "x"})
    assert status == 200
    # Sessions: 429, which the SDK retries with backoff.
    assert post(url, "/api/v1/create_session", {"tags": []})[0] == 429
    # Bodies over the limit: 413, shown at once.
    assert post(url, "/api/v1/get_info", None, raw=b"{" + b" " * 5000 + b"}")[0] == 413
    status, created = post(url, "/api/v1/create_model", {"session_id": session["session_id"],
                                                         "model_seq_id": 0, "base_model": "tiny"})  # fmt: skip
    assert status == 200
    for _ in range(100):  # the create answers (a long poll; no sleep)
        status, done = post(url, "/api/v1/retrieve_future", {"request_id": created["request_id"]})
        if "model_id" in done:
            break
    model = done["model_id"]
    # seq_id 3 waits for 1 and 2: it holds the one future allowed, so the next is 429.
    step = {"model_id": model, "seq_id": 3, "adam_params": {"learning_rate": 0.1}}
    assert post(url, "/api/v1/optim_step", step)[0] == 200
    assert post(url, "/api/v1/optim_step", step | {"seq_id": 4})[0] == 429
    # A retry of seq_id 3 (same body) is the same future; another body under it is refused.
    assert post(url, "/api/v1/optim_step", step)[0] == 200
    changed = step | {"adam_params": {"learning_rate": 0.2}}
    status, refusal = post(url, "/api/v1/optim_step", changed)
    assert status == 400 and refusal["field"] == "seq_id"


def test_bad_input_and_unserved_calls_are_refused_naming_what(make_server, tmp_path: Path) -> None:
    _, url = start(make_server, tmp_path)
    status, refusal = post(url, "/api/v1/copy_weights", {})
    assert status == 404 and "copy_weights" in refusal["detail"]
    status, refusal = post(url, "/api/v1/create_session", None, raw=b"not json")
    assert status == 400 and refusal["field"] == "body"
    client = service(url).create_lora_training_client(base_model="tiny", rank=4, seed=1).result()
    tokens = sequences(1, 1)[0]
    bad = datum(tokens, weights=torch.ones(len(tokens)))  # one weight too many
    with pytest.raises(Exception, match=r"weights\.shape"):
        client.forward_backward([bad], "cross_entropy").result(timeout=30)
    status, refusal = post(url, "/api/v1/optim_step", {"model_id": client.model_id, "seq_id": 9,
                                                       "adam_params": {"learning_rate": "fast"}})  # fmt: skip
    assert status == 400 and refusal["field"] == "adam_params.learning_rate"
    assert (
        post(
            url,
            "/api/v1/create_model",
            {"session_id": "s0", "model_seq_id": 0, "base_model": "tiny"},
        )[0]
        == 404
    )
