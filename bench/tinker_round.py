"""The Tinker API's own cost: one SDK forward_backward + optim_step round against the same step
over gRPC (ComputeGradients per datum, then ApplyUpdate), on one server process.

Both clients drive a run each, created with the same seed, step for step on the same batches
(4 sequences of 128 tokens over a 4-layer Llama-style base, rank-32 adapter, AdamW): the
difference is the HTTP front (JSON and protobuf bodies, futures and their long-polled
retrieval, the SDK's own machinery) against gRPC's unary calls. Each repeat measures the two
paths interleaved; at the end of every repeat the two runs' losses and state digests must be
bitwise equal. Goal: the SDK round at most 1.2x the gRPC step.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import grpc
import torch

from bench.processes import TORCH_THREADS, ServerProcess
from bench.rows import Row
from bench.workloads import Settings
from gradserve.codec import tensor_to_proto
from gradserve.defaults import channel_options
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

VOCAB, TOKENS, DATUMS, RANK = 1000, 128, 4, 32
TARGETS = ["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj", "up_proj", "v_proj"]
ADAM = {"beta1": 0.9, "beta2": 0.95, "eps": 1e-12, "weight_decay": 0.0}
LEARNING_RATE = 1e-3


def _base(folder: Path) -> Path:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: PLC0415

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
        bos_token_id=0, eos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    return folder


def _sequences(step: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(step)
    return [
        torch.randint(0, VOCAB, (TOKENS + 1,), generator=generator).tolist() for _ in range(DATUMS)
    ]


def tinker_round(settings: Settings) -> list[Row]:
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    import tinker  # noqa: PLC0415
    from tinker import types  # noqa: PLC0415

    row = Row(
        "tinker",
        "Tinker SDK forward_backward + optim_step round",
        "ms/step",
        "the same step over gRPC",
        target="≤ 1.2x",
        check=lambda ours, ratio: ratio <= 1.2,
        notes=f"{DATUMS} x {TOKENS} tokens, 4-layer hidden-256 Llama base, rank {RANK}",
    )
    steps = 5 if settings.quick else 20
    with tempfile.TemporaryDirectory() as scratch:
        base = _base(Path(scratch) / "base")
        args = ["--metrics-port", "0", "--log-level", "WARNING", "--base-model", f"bench={base}"]
        args += ["--torch-threads", str(TORCH_THREADS), "--tinker-port", "0"]
        with ServerProcess("server/serve.py", args) as server:
            channel = grpc.insecure_channel(server.address, options=channel_options(64 << 20))
            stub = pb_grpc.GradientServiceStub(channel)
            client = tinker.ServiceClient(base_url=server.tinker_url, api_key="tml-bench")
            training = client.create_lora_training_client("bench", rank=RANK, seed=1).result()
            stub.CreateRun(pb.CreateRunRequest(
                run="grpc", base_model="bench", optimizer="adamw", seed=1,
                lora=pb.LoraSpec(rank=RANK, alpha=32, target_modules=TARGETS),
            ), timeout=60)  # fmt: skip
            step = 0
            for _ in range(settings.repeats + 1):  # the first repeat warms both paths up
                sdk_ms, grpc_ms, same = [], [], True
                for _ in range(steps):
                    batch = _sequences(step)
                    step += 1
                    data = [
                        types.Datum(
                            model_input=types.ModelInput.from_ints(tokens[:-1]),
                            loss_fn_inputs={
                                "target_tokens": types.TensorData.from_torch(
                                    torch.tensor(tokens[1:])
                                ),
                                "weights": types.TensorData.from_torch(torch.ones(TOKENS)),
                            },
                        )
                        for tokens in batch
                    ]
                    started = time.perf_counter()
                    forward = training.forward_backward(data, "cross_entropy")
                    update = training.optim_step(types.AdamParams(learning_rate=LEARNING_RATE))
                    sdk_loss = forward.result().metrics["loss:sum"]
                    update.result()
                    sdk_ms.append((time.perf_counter() - started) * 1000)

                    started = time.perf_counter()
                    grpc_loss = 0.0
                    for tokens in batch:
                        grpc_loss += stub.ComputeGradients(pb.ComputeGradientsRequest(
                            run="grpc", inputs=tensor_to_proto(torch.tensor([tokens[:-1]])),
                            targets=tensor_to_proto(torch.tensor([tokens[1:]])),
                            sample_weights=tensor_to_proto(torch.ones(1, TOKENS)),
                            loss=pb.LossSpec(name="cross_entropy"),
                        ), timeout=60).loss  # fmt: skip
                    stub.ApplyUpdate(pb.ApplyUpdateRequest(
                        run="grpc", learning_rate=LEARNING_RATE, hyperparameters=ADAM
                    ), timeout=60)  # fmt: skip
                    grpc_ms.append((time.perf_counter() - started) * 1000)
                    same = same and sdk_loss == grpc_loss
                run = training.model_id.replace(":", "-")
                digests = [
                    stub.GetStateDigest(pb.GetStateDigestRequest(run=r), timeout=60).digest
                    for r in (run, "grpc")
                ]
                if step > steps:  # past the warm-up repeat
                    row.ours.append(sorted(sdk_ms)[len(sdk_ms) // 2])
                    row.baseline.append(sorted(grpc_ms)[len(grpc_ms) // 2])
                    row.bitwise.append(same and digests[0] == digests[1])
            channel.close()
    return [row]
