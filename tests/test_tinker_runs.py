"""A model made through the Tinker API is an ordinary run: exported for peft, and the other way."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TIMEOUT
from llm_bases import VOCAB, load_local
from tinker import types
from tinker_helpers import (
    datum,
    digest,
    grpc_adapter_run,
    sdk_garbage,  # noqa: F401 - an autouse fixture
    sequences,
    service,
    start,
    weights_for,
)

from gradserve.client.cli.main import main as gradserve_main
from gradserve.codec import tensor_from_proto, tensor_to_proto
from gradserve.v1 import gradserve_pb2 as pb

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning"),
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]


def test_the_export_of_an_sdk_trained_run_loads_with_peft_and_gives_the_servers_logits(
    make_server, make_stub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from peft import PeftModel  # noqa: PLC0415

    running, url = start(make_server, tmp_path)
    stub = make_stub(running)
    client = service(url).create_lora_training_client(base_model="tiny", rank=32, seed=4).result()
    batch = sequences(12, 2)
    for _ in range(3):
        client.forward_backward(
            [datum(t, weights=weights_for(t, 1)) for t in batch], "cross_entropy"
        )
        client.optim_step(types.AdamParams(learning_rate=0.05)).result()
    run = client.model_id.replace(":", "-")

    out = tmp_path / "exported"
    code = gradserve_main(["export", run, "--out", str(out), "--server", running.address, "--json"])
    assert code == 0, capsys.readouterr()
    loaded = PeftModel.from_pretrained(load_local(tmp_path / "base"), str(out)).eval()
    probe = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    evaluated = stub.Evaluate(
        pb.EvaluateRequest(run=run, inputs=tensor_to_proto(probe), return_predictions=True),
        timeout=TIMEOUT,
    )
    with torch.no_grad():
        theirs = loaded(input_ids=probe).logits
    assert torch.equal(theirs, tensor_from_proto(evaluated.predictions))


def test_a_grpc_run_trains_on_through_the_sdk_from_its_checkpoint(
    make_server, make_stub, tmp_path: Path
) -> None:
    running, url = start(make_server, tmp_path, checkpoint_dir=str(tmp_path / "checkpoints"))
    stub = make_stub(running)
    grpc_adapter_run(stub, "mine", seed=2, rank=4)
    stub.SaveCheckpoint(pb.SaveCheckpointRequest(run="mine", name="start"), timeout=TIMEOUT)
    client = (
        service(url)
        .create_training_client_from_state_with_optimizer("tinker://mine/weights/start")
        .result()
    )
    assert digest(stub, client.model_id.replace(":", "-"))[0] == digest(stub, "mine")[0]
    tokens = sequences(2, 1)[0]
    client.forward_backward([datum(tokens, weights=weights_for(tokens, 0))], "cross_entropy")
    assert client.optim_step(types.AdamParams(learning_rate=0.05)).result().metrics["grad_norm"] > 0
