"""LoRA adapters over one base, in process: memory of 16 runs and a step's tokens/s vs peft.

    .venv/bin/python bench/lora_adapters.py                 # 5 repeats, medians
    .venv/bin/python bench/lora_adapters.py --json out.json # every repeat's figures too

Issue 25's two rows, measured on the model layer (server/models/lora.py) without gRPC:
1. memory: VmRSS growth from before the base loads to after 16 rank-8 all-linear adapters
   have each taken one AdamW step (Adam state allocated), against one base's tensor bytes plus
   16 x (adapter + Adam state) bytes; goal at most 1.25x that plus 200 MB.
2. speed: tokens/s of a LoRA step (forward, token cross-entropy, backward, AdamW) through the
   shared base's hooks, against the local peft + torch.optim.AdamW loop on the same batches,
   interleaved repeat by repeat; goal >= 0.9x. The final adapters are checked bitwise equal.
One torch thread. The tiny models are random, built from a config into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and tests' helpers importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

os.environ["HF_HUB_OFFLINE"] = "1"

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from gradserve.server.models.bases import load_pretrained
from gradserve.server.models.lora import ALL_LINEAR, LoraAdapter, LoraConfig
from gradserve.server.models.token_losses import TokenBatch, causal_lm_loss

RUNS = 16
RANK = 8
STEPS = 20
MB = 1 << 20


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _save_base(folder: Path, hidden: int, layers: int, vocab: int) -> Path:
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    return folder


def _batches(vocab: int, steps: int) -> list[TokenBatch]:
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(steps):
        tokens = torch.randint(0, vocab, (4, 65), generator=generator)
        batches.append(TokenBatch(tokens[:, :-1], tokens[:, 1:], weights=torch.ones(4, 64)))
    return batches


def _step(forward: object, optimizer: torch.optim.Optimizer, batch: TokenBatch) -> torch.Tensor:
    logits = forward(batch.inputs)  # type: ignore[operator]
    loss, _ = causal_lm_loss(logits, batch, "cross_entropy", {})
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def memory(folder: Path) -> dict[str, float]:
    before = _rss()
    base = load_pretrained("bench", folder)
    base_bytes = sum(t.numel() * t.element_size() for t in base.module.state_dict().values())
    batch = _batches(base.vocab_size or 0, 1)[0]
    with torch.no_grad():
        base.module(batch.inputs)  # first forward: lazy imports and kernels, once per process
    after_base = _rss()
    adapters = []
    for run in range(RUNS):
        adapter = LoraAdapter(base.module, LoraConfig(RANK, 16, ALL_LINEAR, seed=run))
        optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-3)
        _step(adapter, optimizer, batch)
        adapters.append((adapter, optimizer))
    after_runs = _rss()
    # Adapter tensors + AdamW's exp_avg and exp_avg_sq of each (its step counters are 0-d);
    # the gradients, kept until the next zero_grad, are one adapter more.
    per_run = 3 * adapters[0][0].nbytes()
    expected = base_bytes + RUNS * per_run
    grown = after_runs - before
    return {
        "rss_growth_mb": grown / MB,
        "base_rss_mb": (after_base - before) / MB,
        "base_tensors_mb": base_bytes / MB,
        "runs_rss_mb": (after_runs - after_base) / MB,
        "runs_expected_mb": RUNS * per_run / MB,
        "expected_mb": expected / MB,
        "goal_mb": (1.25 * expected + 200 * MB) / MB,
        "met": grown <= 1.25 * expected + 200 * MB,
    }


def speed(folder: Path, repeats: int) -> dict[str, object]:
    from llm_bases import peft_model  # noqa: PLC0415 (tests' helper: the local loop)

    base = load_pretrained("bench", folder)
    batches = _batches(base.vocab_size or 0, STEPS)
    tokens = sum(b.targets.numel() for b in batches)
    ours_rates, peft_rates, bitwise = [], [], []
    for repeat in range(repeats):
        adapter = LoraAdapter(base.module, LoraConfig(RANK, 16, ALL_LINEAR, seed=0))
        local = peft_model(folder, RANK, 16, ALL_LINEAR, seed=0).train()
        ours_optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-3)
        local_optimizer = torch.optim.AdamW(
            [p for p in local.parameters() if p.requires_grad], lr=1e-3
        )
        loops = [
            (ours_rates, adapter, ours_optimizer),
            (peft_rates, lambda x, m=local: m(input_ids=x).logits, local_optimizer),
        ]
        # Alternate which goes first, so that drift in the machine's load hits both alike.
        for rates, forward, optimizer in loops if repeat % 2 == 0 else loops[::-1]:
            started = time.perf_counter()
            for batch in batches:
                _step(forward, optimizer, batch)
            rates.append(tokens / (time.perf_counter() - started))
        theirs = [p for p in local.parameters() if p.requires_grad]
        bitwise.append(all(map(torch.equal, adapter.parameters(), theirs)))
    ratios = [o / p for o, p in zip(ours_rates, peft_rates, strict=True)]
    return {
        "ours_tokens_per_s": statistics.median(ours_rates),
        "peft_tokens_per_s": statistics.median(peft_rates),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "bitwise": all(bitwise),
        "repeats": {"ours": ours_rates, "peft": peft_rates},
    }


def _memory_in_child(folder: Path, environment: dict[str, str]) -> dict[str, float]:
    """memory() in a fresh process (nothing else loaded), under the given allocator settings."""
    completed = subprocess.run(
        [sys.executable, "-W", "ignore", __file__, "--memory-of", str(folder)],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--memory-of", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.memory_of is not None:
        print(json.dumps(memory(args.memory_of)))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        large = _save_base(Path(scratch) / "large", hidden=512, layers=4, vocab=16_000)
        results: dict[str, object] = {
            "memory_glibc_default": _memory_in_child(large, {}),
            # A fixed mmap threshold: glibc's growing one leaves each step's large temporaries
            # resident between the runs' small persistent tensors (bench/README.md).
            "memory_mmap_threshold_128k": _memory_in_child(
                large, {"MALLOC_MMAP_THRESHOLD_": "131072"}
            ),
        }
        small = _save_base(Path(scratch) / "small", hidden=128, layers=2, vocab=2_000)
        results["speed"] = speed(small, args.repeats)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
