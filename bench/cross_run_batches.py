"""Workload `batching` (issue 28): K adapter runs on one small base, small batches each.

    .venv/bin/python bench/run.py --only batching            # 3 repeats
    .venv/bin/python bench/cross_run_batches.py --quick      # this workload alone, 1 repeat

For K = 1, 4, 16 runs (rank-8 adapters on q_proj and v_proj, PEFT's default for Llama, over
one 4-layer Llama-style base, hidden 256, vocabulary 1024), K client threads each step their
own run: ComputeGradients of one [1, 16] token batch, then ApplyUpdate (AdamW). Three servers, each its own process on
loopback, measured in the same repeat:
- batched: one server, --batch-window-seconds 0.05 (docs/batching.md);
- one at a time: one server, batching off (every request its own forward, under its run's lock);
- K processes: K single-run servers, one per client (what K users would run alone).
Rows: tokens/s (input tokens of ComputeGradients per second of wall time, all clients) and
p99 step latency (ComputeGradients + ApplyUpdate) against one at a time; tokens/s and
server memory (VmRSS, summed over the K processes) against K processes. And the profile that
splits the end-to-end figure: in this process, the K requests' forward and backward alone
(the adapter's forward, the loss, autograd.grad, one after another) against one cross-run
batch of them (server/models/batched_lora.py), no gRPC, no optimizer step. One torch thread
per server. The base is random, built from a config into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `gradserve` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ["HF_HUB_OFFLINE"] = "1"

import grpc
import torch

from bench.processes import ServerProcess, gradserve_server
from bench.rows import Row
from bench.workloads import Settings
from gradserve.codec import tensor_to_proto
from gradserve.defaults import channel_options
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

COUNTS = (1, 4, 16)
VOCAB = 1024
BATCH, LENGTH = 1, 16
WINDOW = "0.05"


def save_base(folder: Path, hidden: int = 256) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: PLC0415 (llm extra)

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    return folder


def _server(base: Path, *extra: str) -> ServerProcess:
    return gradserve_server("linear", "--base-model", f"small={base}", "--workers", "40", *extra)


def _client(
    address: str, run: str, steps: int, barrier: threading.Barrier, out: list[float]
) -> None:
    """Create the run, warm it up, then `steps` steps after the barrier; step latencies out."""
    channel = grpc.insecure_channel(address, options=channel_options(64 << 20))
    stub = pb_grpc.GradientServiceStub(channel)
    lora = pb.LoraSpec(rank=8, alpha=16, target_modules=["q_proj", "v_proj"])
    stub.CreateRun(
        pb.CreateRunRequest(run=run, base_model="small", lora=lora, optimizer="adamw"),
        timeout=60,
    )
    generator = torch.Generator().manual_seed(int(run[1:]))
    tokens = torch.randint(0, VOCAB, (BATCH, LENGTH + 1), generator=generator)
    request = pb.ComputeGradientsRequest(
        run=run, inputs=tensor_to_proto(tokens[:, :-1]), targets=tensor_to_proto(tokens[:, 1:])
    )
    update = pb.ApplyUpdateRequest(run=run, learning_rate=1e-3)
    for step in range(-2, steps):
        if step == 0:
            barrier.wait(timeout=300)
        started = time.perf_counter()
        stub.ComputeGradients(request, timeout=60)
        stub.ApplyUpdate(update, timeout=60)
        if step >= 0:
            out.append(time.perf_counter() - started)
    stub.DeleteRun(pb.DeleteRunRequest(run=run), timeout=60)
    channel.close()


def _measure(addresses: Sequence[str], count: int, steps: int) -> tuple[float, float]:
    """(tokens/s, p99 step latency in ms) of `count` clients, client i on addresses[i % n]."""
    barrier = threading.Barrier(count + 1)
    latencies: list[list[float]] = [[] for _ in range(count)]
    threads = [
        threading.Thread(
            target=_client,
            args=(addresses[i % len(addresses)], f"r{i}", steps, barrier, latencies[i]),
        )
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    barrier.wait(timeout=300)
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    every = sorted(latency for own in latencies for latency in own)
    if len(every) != count * steps:
        raise RuntimeError(f"{count * steps - len(every)} steps failed")
    p99 = every[min(len(every) - 1, round(0.99 * (len(every) - 1)))]
    return count * steps * BATCH * LENGTH / elapsed, p99 * 1000


def batching(settings: Settings, counts: Sequence[int] = COUNTS) -> list[Row]:
    repeats = 1 if settings.quick else min(settings.repeats, 3)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as scratch:
        base = save_base(Path(scratch) / "base")
        for count in counts:
            steps = (10 if settings.quick else 30) * (2 if count == 1 else 1)
            rows.extend(_rows(base, count, steps, repeats))
    return rows


def _rows(base: Path, count: int, steps: int, repeats: int) -> list[Row]:
    name = f"{count} run{'s' if count > 1 else ''}"
    big = count == 16
    rate = Row(
        "batching",
        f"{name}: tokens/s, batched",
        "tokens/s",
        "one at a time",
        target="≥ 2x" if big else "",
        check=(lambda _, ratio: ratio >= 2.0) if big else None,
    )
    p99 = Row("batching", f"{name}: p99 step latency, batched", "ms", "one at a time p99")
    apart = Row("batching", f"{name}: tokens/s, one batched server", "tokens/s", "K processes")
    memory = Row("batching", f"{name}: server memory", "MB", "K processes, summed")
    compute = Row("batching", f"{name}: forward+backward in process", "ms", "one at a time")
    for _ in range(repeats):
        together, alone_ms = _in_process(base, count)
        compute.ours.append(together)
        compute.baseline.append(alone_ms)
        with _server(base, "--batch-window-seconds", WINDOW) as batched:
            tokens, latency = _measure([batched.address], count, steps)
            rss = batched.rss_bytes()
        with _server(base) as alone:
            alone_tokens, alone_latency = _measure([alone.address], count, steps)
        with ExitStack() as stack:
            servers = _started([_server(base) for _ in range(count)], stack)
            separate_tokens, _ = _measure([s.address for s in servers], count, steps)
            separate_rss = sum(s.rss_bytes() for s in servers)
        rate.ours.append(tokens)
        rate.baseline.append(alone_tokens)
        p99.ours.append(latency)
        p99.baseline.append(alone_latency)
        apart.ours.append(tokens)
        apart.baseline.append(separate_tokens)
        memory.ours.append(rss / 2**20)
        memory.baseline.append(separate_rss / 2**20)
    return [rate, p99, apart, memory, compute]


def _started(servers: list[ServerProcess], stack: ExitStack) -> list[ServerProcess]:
    """The servers started in groups of 4 (16 at once on 2 loaded cores ran past a start's
    60 s), each stopped when `stack` closes."""
    for server in servers:
        stack.callback(server.close)
    for first in range(0, len(servers), 4):
        threads = [threading.Thread(target=s.__enter__) for s in servers[first : first + 4]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if not all(server.address for server in servers):
        raise RuntimeError("a single-run server did not start")
    return servers


def _in_process(base: Path, count: int, rounds: int = 5) -> tuple[float, float]:
    """(ms of one cross-run batch of `count` requests, ms of the same one at a time): the
    fastest of `rounds`, interleaved."""
    from gradserve.server.models.adapter_models import token_cross_entropy  # noqa: PLC0415
    from gradserve.server.models.bases import load_pretrained  # noqa: PLC0415
    from gradserve.server.models.batched_lora import MemberBatch, batched_gradients  # noqa: PLC0415
    from gradserve.server.models.lora import LoraAdapter, LoraConfig  # noqa: PLC0415

    module = load_pretrained("small", base).module
    generator = torch.Generator().manual_seed(0)
    members = []
    for index in range(count):
        adapter = LoraAdapter(module, LoraConfig(8, 16, ("q_proj", "v_proj"), seed=index))
        tokens = torch.randint(0, VOCAB, (BATCH, LENGTH + 1), generator=generator)
        parameters = list(adapter.parameters())
        batch = (tokens[:, :-1], tokens[:, 1:], None, token_cross_entropy)
        members.append(MemberBatch(adapter, parameters, *batch))

    def one_at_a_time() -> None:
        for member in members:
            loss = member.loss(member.adapter(member.inputs), member.targets)
            torch.autograd.grad(loss, member.parameters)

    timings: dict[str, list[float]] = {"together": [], "alone": []}
    for _ in range(rounds):
        for kind, work in (
            ("together", lambda: batched_gradients(module, members)),
            ("alone", one_at_a_time),
        ):
            started = time.perf_counter()
            work()
            timings[kind].append((time.perf_counter() - started) * 1000)
    return min(timings["together"]), min(timings["alone"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for count in args.counts:  # each count's rows as soon as they are measured
        rows += batching(Settings(quick=args.quick, repeats=args.repeats), [count])
        _print(rows[-5:])
    if args.json is not None:
        args.json.write_text(json.dumps([row.to_json() for row in rows], indent=2))
    return 0


def _print(rows: Sequence[Row]) -> None:
    for row in rows:
        ratios = row.ratios()
        print(
            f"{row.name:45} {statistics.median(row.ours):10.1f} {row.unit:9} "
            f"{row.baseline_name}: {statistics.median(row.baseline):10.1f}  "
            f"{statistics.median(ratios):.2f}x {row.target}",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
