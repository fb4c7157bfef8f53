"""Shared by the Tinker API tests: a server with a tiny base and the Tinker port, the SDK's
datums, and the same steps over gRPC."""

from __future__ import annotations

import gc
import json
import os
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TIMEOUT
from llm_bases import VOCAB, tiny_llama

from gradserve.codec import tensor_to_proto
from gradserve.v1 import gradserve_pb2 as pb

# The SDK reports usage to its own service unless told not to; nothing leaves loopback here.
os.environ.setdefault("TINKER_TELEMETRY", "0")

import tinker
from tinker import types

# What create_lora_training_client's defaults (train_mlp, train_attn, train_unembed) select
# on a Llama-style base: every projection and the output layer.
LLAMA_TARGETS = [
    "down_proj",
    "gate_proj",
    "k_proj",
    "lm_head",
    "o_proj",
    "q_proj",
    "up_proj",
    "v_proj",
]
ADAM = {"beta1": 0.9, "beta2": 0.95, "eps": 1e-12, "weight_decay": 0.0}


@pytest.fixture(autouse=True)
def sdk_garbage() -> Iterator[None]:
    """tinker 0.38.0 fetches its client config over a connection pool it never closes
    (InternalClientHolder._fetch_client_config): that client socket is collected unclosed,
    a ResourceWarning of the SDK's, not the server's. Collected here, that warning ignored."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def start(make_server: Any, tmp_path: Path, **settings: object) -> tuple[Any, str]:
    """A server over a tiny Llama base with the Tinker API on a free loopback port."""
    folder = tiny_llama(tmp_path / "base")
    running = make_server(base_models=(f"tiny={folder}",), tinker_port=0, **settings)
    return running, running.tinker.url


def service(url: str, key: str = "tml-test") -> tinker.ServiceClient:
    return tinker.ServiceClient(base_url=url, api_key=key)


def sequences(seed: int, count: int) -> list[list[int]]:
    """Token sequences of a few lengths (the datums of one step are ragged)."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, VOCAB, (7 + i % 3,), generator=generator).tolist() for i in range(count)
    ]


def weights_for(tokens: list[int], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(len(tokens) - 1, generator=generator) * 2
    weights[0] = 0.0  # a masked token
    return weights


def datum(tokens: list[int], **per_token: torch.Tensor) -> types.Datum:
    """Next-token datum: inputs tokens[:-1], target_tokens tokens[1:], per-token tensors."""
    inputs = {"target_tokens": types.TensorData.from_torch(torch.tensor(tokens[1:]))}
    inputs |= {name: types.TensorData.from_torch(t) for name, t in per_token.items()}
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


def grpc_adapter_run(stub: Any, run: str, seed: int, rank: int = 32) -> None:
    """The run create_lora_training_client makes, created over gRPC."""
    stub.CreateRun(
        pb.CreateRunRequest(
            run=run,
            base_model="tiny",
            lora=pb.LoraSpec(rank=rank, alpha=32, target_modules=LLAMA_TARGETS),
            optimizer="adamw",
            seed=seed,
        ),
        timeout=TIMEOUT,
    )


def grpc_forward_backward(
    stub: Any, run: str, tokens: list[int], loss: str = "cross_entropy", **per_token: torch.Tensor
) -> pb.ComputeGradientsResponse:
    fields: dict[str, Any] = {
        "inputs": tensor_to_proto(torch.tensor([tokens[:-1]])),
        "targets": tensor_to_proto(torch.tensor([tokens[1:]])),
        "loss": pb.LossSpec(name=loss),
        "return_logprobs": True,
    }
    for name, tensor in per_token.items():
        fields["sample_weights" if name == "weights" else name] = tensor_to_proto(tensor[None])
    return stub.ComputeGradients(pb.ComputeGradientsRequest(run=run, **fields), timeout=TIMEOUT)


def grpc_optim_step(
    stub: Any, run: str, learning_rate: float, clip: float = 0.0
) -> pb.ApplyUpdateResponse:
    request = pb.ApplyUpdateRequest(run=run, learning_rate=learning_rate, hyperparameters=ADAM)
    if clip > 0:
        request.max_grad_norm = clip
    return stub.ApplyUpdate(request, timeout=TIMEOUT)


def digest(stub: Any, run: str) -> tuple[str, int]:
    answer = stub.GetStateDigest(pb.GetStateDigestRequest(run=run), timeout=TIMEOUT)
    return answer.digest, answer.model_version


def post(
    url: str,
    path: str,
    body: object,
    key: str = "tml-test",
    raw: bytes | None = None,
    encoding: str = "",
) -> tuple[int, Any]:
    """One plain HTTP call to the Tinker API (an attacker needs no SDK): (status, JSON)."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path, data=data, method="POST",
        headers={"X-API-Key": key, "Content-Type": "application/json"}
        | ({"Content-Encoding": encoding} if encoding else {}),
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
