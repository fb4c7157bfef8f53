"""Fine-tune a small causal LM with LoRA through gradserve, export the adapter, reload it with peft.

    python finetune.py                             # a tiny random byte-level model, embedded server
    python finetune.py --base-dir /models/qwen     # a model you downloaded (its tokenizer too)
    python finetune.py --server 127.0.0.1:50051 --base-name qwen --base-dir /models/qwen

The server holds the base (loaded once, frozen) and the run's adapter and AdamW state; this
script holds the text and the loop: it cuts corpus.txt into windows, sends each step over one
Train stream with token cross-entropy weighted per token, prints the loss, then writes the
adapter with `gradserve export` and loads it with `peft.PeftModel.from_pretrained` over its own
copy of the base, whose logits it compares with the server's (Evaluate).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

# Local files only: neither the base nor its tokenizer is ever downloaded by this script.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from gradserve.client.cli.main import main as gradserve_main
from gradserve.client.gradient_client import GradientClient
from gradserve.run_types import LoraRequest
from gradserve.server.app import create_server
from gradserve.server.config import ModelConfig, NetworkConfig, RuntimeConfig, ServerConfig
from gradserve.types import BatchLoss, TrainStep, WeightedReduction

HERE = Path(__file__).resolve().parent
RUN = "lamplighter"
# Byte-level vocabulary of the tiny model: token id = byte value.
BYTES = 256


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="HOST:PORT of a gradserve-server (default: embedded)")
    parser.add_argument("--base-dir", type=Path, help="a local Hugging Face model folder")
    parser.add_argument("--base-name", default="base", help="its --base-model NAME on --server")
    parser.add_argument("--text", type=Path, default=HERE / "corpus.txt")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8, help="windows per step")
    parser.add_argument("--window", type=int, default=64, help="tokens per window")
    parser.add_argument("--context", type=int, default=8, help="first tokens weighted 0")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--out", type=Path, help="the exported adapter's folder")
    parser.add_argument("--device", default="cpu", help="the embedded server's: cpu, cuda[:N]")
    parser.add_argument("--json", action="store_true", help="end with a JSON summary line")
    return parser.parse_args(argv)


def build_tiny_base(folder: Path) -> Path:
    """A 2-layer Llama-style model over bytes, random from seed 0, saved as a local HF folder."""
    from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: PLC0415

    config = LlamaConfig(
        vocab_size=BYTES,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    return folder


def encode(text: str, base_dir: Path, tiny: bool) -> torch.Tensor:
    """The text's token ids: its UTF-8 bytes for the tiny model, else the base's tokenizer."""
    if tiny:
        return torch.tensor(list(text.encode()), dtype=torch.int64)
    from transformers import AutoTokenizer  # noqa: PLC0415

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.int64)


def windows(
    ids: torch.Tensor, args: argparse.Namespace
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per step: inputs and next-token targets [batch, window] from random places in the
    text, and weights that leave each window's first `context` targets out of the loss."""
    generator = torch.Generator().manual_seed(0)
    weights = torch.ones(args.batch, args.window)
    weights[:, : args.context] = 0.0
    for _ in range(args.steps):
        starts = torch.randint(0, len(ids) - args.window - 1, (args.batch,), generator=generator)
        rows = torch.stack([ids[s : s + args.window + 1] for s in starts.tolist()])
        yield rows[:, :-1].contiguous(), rows[:, 1:].contiguous(), weights


def train(client: GradientClient, ids: torch.Tensor, args: argparse.Namespace) -> list[float]:
    """One Train stream; each step one weighted batch and an AdamW update. Per-token losses."""
    batches = list(windows(ids, args))
    steps = [
        [
            TrainStep(
                batches=((inputs, targets),),
                apply_update=True,
                learning_rate=args.lr,
                batch_losses=(BatchLoss(None, weights, WeightedReduction.SUM),),
            )
        ]
        for inputs, targets, weights in batches
    ]
    losses = []
    for step, (results, (_, _, weights)) in enumerate(
        zip(client.train_stream(steps), batches, strict=True)
    ):
        # The server's loss is the weighted sum; per weighted token it reads as nats.
        per_token = results[0].losses[0] / float(weights.sum())
        losses.append(per_token)
        print(f"step {step:3d}  loss {per_token:.4f} nats/token", flush=True)
    return losses


def reload_with_peft(
    client: GradientClient, base_dir: Path, adapter_dir: Path, inputs: torch.Tensor
) -> float:
    """Largest |logit difference| between the server's run and peft over the exported files."""
    from peft import PeftModel  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    served = client.evaluate(inputs, inputs, return_predictions=True).predictions
    assert served is not None
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), local_files_only=True)
    local = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.no_grad():
        logits = local(input_ids=inputs).logits
    return float((logits - served).abs().max())


def run(args: argparse.Namespace, base_dir: Path, tiny: bool, out: Path) -> dict[str, object]:
    ids = encode(args.text.read_text(), base_dir, tiny)
    embedded = None
    target = args.server
    if target is None:
        base_models = (f"{args.base_name}={base_dir}",)
        embedded = create_server(
            ServerConfig(
                network=NetworkConfig(host="127.0.0.1", port=0, metrics_port=0),
                model=ModelConfig(base_models=base_models, device=args.device),
                runtime=RuntimeConfig(shutdown_grace_seconds=1.0),
            )
        )
        target = embedded.address
    try:
        with GradientClient(target, run=RUN, timeout=120.0) as client:
            client.wait_until_ready(30.0)
            lora = LoraRequest(rank=args.rank, alpha=args.alpha)  # all linear layers
            client.create_run(RUN, base_model=args.base_name, lora=lora, optimizer="adamw", seed=0)
            losses = train(client, ids, args)
            # `gradserve export RUN --out DIR`, the command, in this process.
            exported = gradserve_main(["export", RUN, "--out", str(out), "--server", target])
            if exported != 0:
                raise SystemExit(f"gradserve export failed ({exported})")
            sample = next(windows(ids, args))[0][:2]
            difference = reload_with_peft(client, base_dir, out, sample)
            client.delete_run(RUN, delete_checkpoints=True)
    finally:
        if embedded is not None:
            embedded.stop(0)
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} nats/token over {len(losses)} steps")
    print(f"adapter in {out}; peft's logits vs the server's: max |diff| {difference:.3g}")
    return {"losses": losses, "max_logit_difference": difference, "adapter": str(out)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    from transformers.utils import logging  # noqa: PLC0415

    logging.disable_progress_bar()  # loading bars for a model of kilobytes
    tiny = args.base_dir is None
    if tiny and args.server is not None:
        print("--server needs --base-dir: the server must serve that base", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lora-finetune-") as scratch:
        base_dir = build_tiny_base(Path(scratch) / "tiny-base") if tiny else args.base_dir
        summary = run(args, base_dir, tiny, args.out or Path(scratch) / "adapter")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
