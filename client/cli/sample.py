"""`gradserve sample RUN --prompt-tokens 1,2,3 ...`: a quick look at a run's samples (docs/sampling.md)."""

from __future__ import annotations

import argparse
from typing import Any

from gradserve.sampling_types import SamplingParams

from ..gradient_client import GradientClient
from .output import Answer, plain


def token_ids(text: str) -> tuple[int, ...]:
    """'1,2,3' as token ids; argparse turns the error into a usage error naming the flag."""
    try:
        return tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated token ids: {text!r}") from None


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    sample = commands.add_parser(
        "sample", parents=[common], help="sample completions of a prompt from a run's weights"
    )
    sample.add_argument("run", metavar="RUN", help="the run ('' : the default run)")
    sample.add_argument("--prompt-tokens", type=token_ids, required=True, metavar="IDS")
    sample.add_argument("--num-samples", type=int, default=1)
    sample.add_argument("--max-tokens", type=int, default=16)
    sample.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    sample.add_argument("--top-k", type=int, default=0, help="0: off")
    sample.add_argument("--top-p", type=float, default=1.0, help="1: off")
    sample.add_argument("--stop", type=token_ids, default=(), metavar="IDS", help="stop token ids")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument(
        "--prompt-logprobs", action="store_true", help="also the prompt's log-probabilities"
    )
    sample.add_argument(
        "--checkpoint", default="", help="sample this checkpoint of the run (default: its weights)"
    )
    sample.set_defaults(handler=sample_run)


def params_from_args(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        num_samples=args.num_samples,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop_token_ids=args.stop,
        seed=args.seed,
        prompt_logprobs=args.prompt_logprobs,
    )


def _joined(values: Any, fmt: str) -> str:
    return ",".join(format(value, fmt) for value in values)


def sample_run(client: GradientClient, args: argparse.Namespace) -> Answer:
    result = client.for_run(args.run).sample(
        args.prompt_tokens, params_from_args(args), checkpoint=args.checkpoint
    )
    rows: list[tuple[object, ...]] = []
    if result.prompt_logprobs is not None:
        # The first prompt token has no log-probability: nothing precedes it.
        rows.append(
            (
                "prompt",
                result.model_version,
                "",
                _joined(args.prompt_tokens, "d"),
                _joined(result.prompt_logprobs, ".4f"),
            )
        )
    for index, sample in enumerate(result.samples):
        reason = sample.stop_reason.value if sample.stop_reason is not None else ""
        rows.append(
            (
                str(index),
                result.model_version,
                reason,
                _joined(sample.tokens, "d"),
                _joined(sample.logprobs, ".4f"),
            )
        )
    return Answer(
        {"run": args.run, **plain(result)},
        ("SAMPLE", "VERSION", "STOP", "TOKENS", "LOGPROBS"),
        rows,
    )
