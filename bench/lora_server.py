"""Issue 25's rows through a real server: RSS of 16 adapter runs on one base, a LoRA step's tokens/s.

Both over gRPC to a `server/serve.py --base-model` process (bench/lora_adapters.py measures the
same on the model layer alone, in process):
1. memory: VmRSS of the server with 16 rank-8 all-linear adapter runs on one base (hidden 512,
   4 layers, vocabulary 16,000), each stepped once with AdamW (4x64 tokens, one Train stream
   each), against the same process's VmRSS with the base only plus 16 x (adapter + Adam state)
   bytes; goal at most 1.25x that plus 200 MB.
2. speed: tokens/s of LoRA steps (4x64 tokens, token cross-entropy, AdamW) over one Train stream
   (10 steps a request) on a small base (hidden 128, 2 layers, vocabulary 2,000), against the
   local peft + torch.optim.AdamW loop on the same batches, interleaved repeat by repeat; goal
   >= 0.9x. The final adapters are checked bitwise equal to peft's.
Each row runs twice: with glibc's defaults (as the server runs), and with the mmap threshold
fixed at 128 KiB in the server's environment (MALLOC_MMAP_THRESHOLD_=131072), an operator's
choice that trades step speed for RSS (bench/README.md has the figures and the cause).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from bench.processes import ROOT, gradserve_server
from bench.rows import Row
from bench.workloads import Settings

RUNS = 16
RANK = 8
ALPHA = 16.0
LEARNING_RATE = 1e-3
STEPS = 20
STEPS_PER_REQUEST = 10
MB = 1e6


def _adapter_steps(batches: list, steps_per_request: int) -> list:  # type: ignore[type-arg]
    """TrainSteps of one batch each with an AdamW update, in requests of `steps_per_request`."""
    from gradserve.types import TrainStep  # noqa: PLC0415

    steps = [
        TrainStep(((b.inputs, b.targets),), apply_update=True, learning_rate=LEARNING_RATE)
        for b in batches
    ]
    return [steps[i : i + steps_per_request] for i in range(0, len(steps), steps_per_request)]


# glibc's mmap threshold fixed by the operator (the server leaves glibc's defaults: this costs
# LoRA steps speed, bench/README.md): each large temporary mmapped and returned when freed.
FIXED_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def memory(settings: Settings, folder: Path, batch: object, env: dict[str, str]) -> Row:
    from gradserve.client.gradient_client import GradientClient  # noqa: PLC0415
    from gradserve.run_types import LoraRequest  # noqa: PLC0415

    row = Row(
        "lora",
        f"server RSS, {RUNS} rank-{RANK} adapter runs on one base (each 1 AdamW step)"
        + (", MALLOC_MMAP_THRESHOLD_=131072" if env else ""),
        "MB",
        f"RSS with the base + {RUNS} x (adapter + Adam)",
        target="≤ 1.25x + 200 MB",
        check=lambda ours, ratio: ours <= 1.25 * ours / ratio + 200,
    )
    notes = []
    for _ in range(1 if settings.quick else min(settings.repeats, 3)):
        with (
            gradserve_server("linear", "--base-model", f"bench={folder}", env=env) as server,
            GradientClient(server.address, timeout=120) as client,
        ):
            client.wait_until_ready(60)
            base_only = server.rss_bytes()
            per_run = 0
            for run in range(RUNS):
                name = f"adapter-{run}"
                _, info = client.create_run(
                    name,
                    base_model="bench",
                    lora=LoraRequest(RANK, ALPHA),
                    optimizer="adamw",
                    seed=run,
                )
                # The adapter's float32 tensors and AdamW's exp_avg and exp_avg_sq of each.
                per_run = 3 * sum(4 * _numel(p.shape) for p in info.parameters)
                list(client.for_run(name).train_stream(_adapter_steps([batch], 1)))
                if run == 0:
                    # The first step's one-time costs (autograd's engine, kernels, threads).
                    after_first = server.rss_bytes()
            after = server.rss_bytes()
        expected = base_only + RUNS * per_run
        row.ours.append(after / MB)
        row.baseline.append(expected / MB)
        notes.append(
            f"base only {base_only / MB:.0f} MB, the first run {(after_first - base_only) / MB:.0f}"
            f" MB, all runs {(after - base_only) / MB:.0f} MB "
            f"for {RUNS * per_run / MB:.1f} MB of adapters and Adam state"
        )
    row.notes = "; ".join(notes)
    return row


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def speed(settings: Settings, folder: Path, batches: list, env: dict[str, str]) -> Row:  # type: ignore[type-arg]
    import torch  # noqa: PLC0415
    from llm_bases import peft_model  # noqa: PLC0415
    from lora_adapters import _step  # noqa: PLC0415

    from gradserve.client.gradient_client import GradientClient  # noqa: PLC0415
    from gradserve.run_types import LoraRequest  # noqa: PLC0415

    row = Row(
        "lora",
        f"LoRA step tokens/s over gRPC (rank {RANK}, 4x64 tokens, AdamW)"
        + (", MALLOC_MMAP_THRESHOLD_=131072" if env else ""),
        "tokens/s",
        "local peft + AdamW",
        target="≥ 0.9x",
        check=lambda ours, ratio: ratio >= 0.9,
    )
    tokens = sum(b.targets.numel() for b in batches)
    requests = _adapter_steps(batches, STEPS_PER_REQUEST)
    with (
        gradserve_server("linear", "--base-model", f"bench={folder}", env=env) as server,
        GradientClient(server.address, timeout=120) as client,
    ):
        client.wait_until_ready(60)
        for repeat in range(settings.repeats):
            name = f"speed-{repeat}"
            lora = LoraRequest(RANK, ALPHA)
            client.create_run(name, base_model="bench", lora=lora, optimizer="adamw", seed=0)
            run = client.for_run(name)
            local = peft_model(folder, RANK, ALPHA, "all-linear", seed=0).train()
            trained = [p for p in local.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trained, lr=LEARNING_RATE)

            def remote(run: GradientClient = run) -> None:
                for _ in run.train_stream(requests):
                    pass

            def locally(
                model: torch.nn.Module = local, optimizer: torch.optim.Optimizer = optimizer
            ) -> None:
                for batch in batches:
                    _step(lambda x: model(input_ids=x).logits, optimizer, batch)

            timed = {}
            # Alternate which goes first, so that drift in the machine's load hits both alike.
            for label, loop in [("ours", remote), ("peft", locally)][
                :: 1 if repeat % 2 == 0 else -1
            ]:
                started = time.perf_counter()
                loop()
                timed[label] = tokens / (time.perf_counter() - started)
            row.ours.append(timed["ours"])
            row.baseline.append(timed["peft"])
            _, served = run.get_parameters()
            row.bitwise.append(all(map(torch.equal, served.values(), trained)))
            client.delete_run(name)
    return row


def lora(settings: Settings) -> list[Row]:
    """The two rows; bases are random Llama-style models saved into a temporary folder."""
    # bench/lora_adapters.py (its bases and batches) and tests/llm_bases.py (the peft loop).
    for folder in (ROOT / "bench", ROOT / "tests"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    os.environ["HF_HUB_OFFLINE"] = "1"
    from lora_adapters import _batches, _save_base  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as scratch:
        large = _save_base(Path(scratch) / "large", hidden=512, layers=4, vocab=16_000)
        batch = _batches(16_000, 1)[0]
        rows = [memory(settings, large, batch, env) for env in ({}, FIXED_THRESHOLD)]
        small = _save_base(Path(scratch) / "small", hidden=128, layers=2, vocab=2_000)
        batches = _batches(2_000, STEPS)
        rows += [speed(settings, small, batches, env) for env in ({}, FIXED_THRESHOLD)]
    return rows
