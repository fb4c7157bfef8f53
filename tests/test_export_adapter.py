"""`gradserve export` of an adapter run writes PEFT's layout; peft loads it over the same base
and answers the logits of the run's own adapter (trained remotely, bitwise the local peft loop)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import apply, compute
from llm_bases import VOCAB, load_local, peft_model, tiny_llama

from gradserve.client.cli.main import main as gradserve_main
from gradserve.v1 import gradserve_pb2 as pb

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)
TARGETS = ["q_proj", "v_proj"]


def test_export_of_an_adapter_run_loads_with_peft_and_gives_its_logits(
    make_server, make_stub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from peft import PeftModel  # noqa: PLC0415

    folder = tiny_llama(tmp_path / "base")
    server = make_server(base_models=(f"tiny={folder}",))
    stub = make_stub(server)
    stub.CreateRun(
        pb.CreateRunRequest(
            run="tuned",
            base_model="tiny",
            lora=pb.LoraSpec(rank=4, alpha=8, target_modules=TARGETS),
            optimizer="adamw",
            seed=3,
        ),
        timeout=30,
    )
    local = peft_model(folder, 4, 8, TARGETS, seed=3).train()
    optimizer = torch.optim.AdamW([p for p in local.parameters() if p.requires_grad], lr=0.01)
    generator = torch.Generator().manual_seed(9)
    for _ in range(3):
        tokens = torch.randint(0, VOCAB, (2, 9), generator=generator)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        compute(stub, inputs, targets, run="tuned")
        apply(stub, 0.01, run="tuned")
        logits = local(input_ids=inputs).logits
        torch.nn.functional.cross_entropy(
            logits.reshape(-1, VOCAB), targets.reshape(-1), reduction="sum"
        ).backward()
        optimizer.step()
        optimizer.zero_grad()

    out = tmp_path / "exported"
    code = gradserve_main(
        ["export", "tuned", "--out", str(out), "--server", server.address, "--json"]
    )
    assert code == 0, capsys.readouterr()
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (4, 8.0, "LORA")
    assert not (out / "model.safetensors").exists()

    loaded = PeftModel.from_pretrained(load_local(folder), str(out)).eval()
    probe = torch.randint(0, VOCAB, (3, 7), generator=generator)
    with torch.no_grad():
        theirs = loaded(input_ids=probe).logits
        ours = local.eval()(input_ids=probe).logits
    assert torch.equal(theirs, ours)
