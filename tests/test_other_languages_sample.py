"""Sample from another language: examples/node/sample.js streams a run's tokens and answers
what the Python client answers for the same request, tokens and log-probabilities bitwise.
Beside tests/test_other_languages.py (whose `node` fixture skips only when Node.js or the
example's node_modules are missing), which is at the module size limit."""

from __future__ import annotations

import json
import subprocess

from test_other_languages import CLIENT_TIMEOUT_S, NODE_DIR, ROOT, node  # noqa: F401
from test_sampling_engine import PROMPT

from gradserve.client.gradient_client import GradientClient
from gradserve.sampling_types import SamplingParams
from tests.conftest import ServerFactory

FACTORY = ("tinylm=sampling_factories:tiny_llama",)


def test_node_sample_streams_what_the_python_client_answers(
    node: str,  # noqa: F811
    make_server: ServerFactory,
) -> None:
    server = make_server(model="tinylm", model_factories=FACTORY)
    params = SamplingParams(num_samples=3, max_tokens=6, temperature=0.9, top_k=20, seed=5)
    with GradientClient(server.address) as client:
        expected = client.sample(PROMPT, params)
    command = [node, str(NODE_DIR / "sample.js"), "--address", server.address]
    command += ["--prompt", ",".join(map(str, PROMPT)), "--num-samples", "3", "--max-tokens", "6"]
    command += ["--temperature", "0.9", "--top-k", "20", "--seed", "5"]
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, cwd=ROOT, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    *steps, last = run.stdout.splitlines()
    # One line per step as the stream delivered it, then the whole answer.
    assert steps == [
        f"step {step}: " + " ".join(f"{i}:{s.tokens[step]}" for i, s in enumerate(expected.samples))
        for step in range(6)
    ]
    answer = json.loads(last)
    assert answer["model_version"] == expected.model_version == 0
    assert [s["tokens"] for s in answer["samples"]] == [s.tokens for s in expected.samples]
    assert [s["logprobs"] for s in answer["samples"]] == [s.logprobs for s in expected.samples]
    assert {s["stop"] for s in answer["samples"]} == {"STOP_REASON_MAX_TOKENS"}


def test_node_sample_reports_a_refusal(node: str, make_server: ServerFactory) -> None:  # noqa: F811
    server = make_server(model="tinylm", model_factories=FACTORY)
    command = [node, str(NODE_DIR / "sample.js"), "--address", server.address]
    run = subprocess.run(
        [*command, "--prompt", "3,99"],
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, cwd=ROOT, check=False,
    )  # fmt: skip
    assert run.returncode == 1
    assert "INVALID_ARGUMENT" in run.stderr and "prompt_tokens" in run.stderr
