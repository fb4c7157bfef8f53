"""`gradserve sample` in process against a real server: its answer is GradientClient.sample's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sampling_factories import EOS
from test_sampling_engine import PROMPT

from gradserve.client.cli.main import main as gradserve_main
from gradserve.client.cli.output import plain
from gradserve.client.gradient_client import GradientClient
from gradserve.sampling_types import SamplingParams
from tests.conftest import ServerFactory

FACTORY = ("tinylm=sampling_factories:tiny_llama",)
ARGS = ("--num-samples", "3", "--max-tokens", "9", "--temperature", "0.8", "--top-k", "20")
MORE = ("--top-p", "0.9", "--stop", f"{EOS},7", "--seed", "13", "--prompt-logprobs")
PARAMS = SamplingParams(
    num_samples=3,
    max_tokens=9,
    temperature=0.8,
    top_k=20,
    top_p=0.9,
    stop_token_ids=(EOS, 7),
    seed=13,
    prompt_logprobs=True,
)


def test_sample_answers_what_the_client_answers(
    make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = make_server(model="tinylm", model_factories=FACTORY)
    prompt = ",".join(str(token) for token in PROMPT)
    common = ("--server", server.address, "--prompt-tokens", prompt, *ARGS, *MORE)
    with GradientClient(server.address) as client:
        expected = client.sample(PROMPT, PARAMS)
    assert gradserve_main(["sample", "", *common, "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert json.loads(out) == {"run": "", **plain(expected)}
    assert expected.prompt_logprobs is not None and len(expected.samples) == 3

    assert gradserve_main(["sample", "", *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SAMPLE", "VERSION", "STOP", "TOKENS", "LOGPROBS"]
    assert lines[1].split() == [
        "prompt",
        "0",
        prompt,
        ",".join(f"{v:.4f}" for v in expected.prompt_logprobs),
    ]
    for line, sample in zip(lines[2:], expected.samples, strict=True):
        assert sample.stop_reason is not None
        assert line.split()[2:] == [
            sample.stop_reason.value,
            ",".join(str(token) for token in sample.tokens),
            ",".join(f"{value:.4f}" for value in sample.logprobs),
        ]


def test_sample_reads_a_named_checkpoint(
    make_server: ServerFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server = make_server(model="tinylm", model_factories=FACTORY, checkpoint_dir=str(tmp_path))
    prompt = ",".join(str(token) for token in PROMPT)
    common = ("--server", server.address, "--prompt-tokens", prompt, *ARGS, *MORE, "--json")
    with GradientClient(server.address) as client:
        client.save_checkpoint("zero")
        _, values = client.get_parameters()
        client.set_parameters({name: value + 0.1 for name, value in values.items()})
        expected = client.sample(PROMPT, PARAMS, checkpoint="zero")
    assert gradserve_main(["sample", "", *common, "--checkpoint", "zero"]) == 0
    assert json.loads(capsys.readouterr().out) == {"run": "", **plain(expected)}
    assert expected.model_version == 0
    assert gradserve_main(["sample", "", *common, "--checkpoint", "none"]) == 1
    assert "checkpoint" in capsys.readouterr().err


def test_refusals_and_bad_usage_have_the_commands_exit_codes(
    make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = make_server(model="tinylm", model_factories=FACTORY)
    refused = [
        "sample",
        "",
        "--server",
        server.address,
        "--prompt-tokens",
        "1",
        "--max-tokens",
        "0",
    ]
    assert gradserve_main(refused) == 1
    assert "the server refused: INVALID_ARGUMENT (max_tokens)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        gradserve_main(["sample", "", "--server", server.address, "--prompt-tokens", "1,x"])
    assert usage.value.code == 2
    assert "--prompt-tokens" in capsys.readouterr().err
