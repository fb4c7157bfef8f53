"""Bounds on sampling: each request checked, and its memory admitted, before any forward runs.

A request is refused with its field named when it is malformed (INVALID_ARGUMENT) or over a
configured limit (RESOURCE_EXHAUSTED): prompt length, `max_tokens`, `num_samples`, stop ids.
Its memory is computed from the model's config before work starts: the key-value cache of
`num_samples` rows of prompt + max_tokens positions, plus the prompt's logits when prompt
log-probabilities are asked for. `SamplingAdmission` holds at most `max_concurrent` requests
and `max_memory_bytes` of that memory across them; one more is refused at once, not queued.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from gradserve.errors import InvalidArgumentError, ResourceExhaustedError
from gradserve.sampling_types import SamplingParams

from ..config import SamplingLimits

# Stop ids are compared every step; more than this is a mistake, not a use.
MAX_STOP_TOKEN_IDS = 64
FLOAT32_BYTES = 4


# A field of SamplingLimits (server/config.py, ServerConfig.sampling) -> (its flag, as
# ServerConfig's flat names spell it; its environment variable; the flag's help).
FLAGS: dict[str, tuple[str, str, str]] = {
    "max_prompt_tokens": (
        "max_sample_prompt_tokens",
        "GRADSERVE_MAX_SAMPLE_PROMPT_TOKENS",
        "Sample: prompt tokens of one request at most",
    ),
    "max_tokens": (
        "max_sample_tokens",
        "GRADSERVE_MAX_SAMPLE_TOKENS",
        "Sample: max_tokens (new tokens per sample) at most",
    ),
    "max_samples": (
        "max_samples_per_request",
        "GRADSERVE_MAX_SAMPLES_PER_REQUEST",
        "Sample: num_samples of one request at most",
    ),
    "max_concurrent": (
        "max_concurrent_samples",
        "GRADSERVE_MAX_CONCURRENT_SAMPLES",
        "Sample requests running at once; one more is refused RESOURCE_EXHAUSTED",
    ),
    "max_memory_bytes": (
        "max_sampling_memory_bytes",
        "GRADSERVE_MAX_SAMPLING_MEMORY_BYTES",
        "bytes of KV cache (and prompt logits, weight copies) across running Sample requests",
    ),
}


def add_sampling_flags(
    add: Callable[..., object], env_or: Callable[[str, object], str], default: dict[str, object]
) -> None:
    """The flags of SamplingLimits (server/flags.py calls this)."""
    for flag, variable, text in FLAGS.values():
        add(
            "--" + flag.replace("_", "-"),
            type=int,
            default=int(env_or(variable, default[flag])),
            help=f"{text} [{variable}]",
        )


@dataclass(frozen=True)
class LanguageModelShape:
    """What a causal LM's config says about the memory of its cache; read by `shape_of`."""

    layers: int
    key_value_heads: int
    head_dim: int
    vocab_size: int
    # Positions the model takes at most (max_position_embeddings); None when unbounded.
    context_length: int | None
    element_bytes: int


def shape_of(config: Any, element_bytes: int) -> LanguageModelShape:
    """A transformers config (GPT-2's names mapped by its attribute_map) -> its cache shape."""
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
    key_value_heads = getattr(config, "num_key_value_heads", None) or heads
    context = getattr(config, "max_position_embeddings", None)
    return LanguageModelShape(
        layers=int(config.num_hidden_layers),
        key_value_heads=int(key_value_heads),
        head_dim=int(head_dim),
        vocab_size=int(config.vocab_size),
        context_length=int(context) if context else None,
        element_bytes=element_bytes,
    )


def kv_cache_bytes(shape: LanguageModelShape, rows: int, positions: int) -> int:
    """Keys and values of every layer for `rows` sequences of `positions` tokens."""
    per_position = 2 * shape.layers * shape.key_value_heads * shape.head_dim * shape.element_bytes
    return rows * positions * per_position


def request_bytes(shape: LanguageModelShape, prompt_tokens: int, params: SamplingParams) -> int:
    """The memory one request holds while it runs (the cache at its longest)."""
    total = kv_cache_bytes(shape, params.num_samples, prompt_tokens + params.max_tokens)
    if params.prompt_logprobs:
        total += prompt_tokens * shape.vocab_size * FLOAT32_BYTES
    return total


def check_request(
    prompt: Sequence[int],
    params: SamplingParams,
    shape: LanguageModelShape,
    limits: SamplingLimits,
) -> int:
    """Refuse what is malformed or over a limit, naming the field; answer the request's bytes."""
    _check_range("prompt_tokens", len(prompt), 1, limits.max_prompt_tokens, "max_prompt_tokens")
    _check_tokens("prompt_tokens", prompt, shape.vocab_size)
    _check_range("num_samples", params.num_samples, 1, limits.max_samples, "max_samples")
    _check_range("max_tokens", params.max_tokens, 1, limits.max_tokens, "max_tokens")
    if shape.context_length is not None and len(prompt) + params.max_tokens > shape.context_length:
        raise InvalidArgumentError(
            f"max_tokens: {len(prompt)} prompt tokens + {params.max_tokens} exceed the model's "
            f"{shape.context_length} positions",
            field="max_tokens",
        )
    if not (math.isfinite(params.temperature) and params.temperature >= 0):
        raise InvalidArgumentError(
            f"temperature: {params.temperature} must be finite and >= 0", field="temperature"
        )
    if params.top_k < 0:
        raise InvalidArgumentError(f"top_k: {params.top_k} must be >= 0 (0: off)", field="top_k")
    if not 0 < params.top_p <= 1:
        raise InvalidArgumentError(f"top_p: {params.top_p} is not in (0, 1]", field="top_p")
    _check_range("stop_token_ids", len(params.stop_token_ids), 0, MAX_STOP_TOKEN_IDS, "")
    _check_tokens("stop_token_ids", params.stop_token_ids, shape.vocab_size)
    needed = request_bytes(shape, len(prompt), params)
    if needed > limits.max_memory_bytes:
        raise ResourceExhaustedError(
            f"num_samples: {params.num_samples} samples of {len(prompt)} + {params.max_tokens} "
            f"tokens need {needed} bytes of KV cache, over the server's {limits.max_memory_bytes} "
            "(--max-sampling-memory-bytes)",
            field="num_samples",
        )
    return needed


def _check_range(field: str, value: int, low: int, high: int, limit: str) -> None:
    """`limit`: the SamplingLimits field that sets `high` ("" for a fixed bound); the
    refusal names the request's field and the server flag the operator may raise."""
    if value < low:
        raise InvalidArgumentError(f"{field}: {value} is below {low}", field=field)
    if value > high:
        flag = f" (--{FLAGS[limit][0].replace('_', '-')})" if limit else ""
        raise ResourceExhaustedError(
            f"{field}: {value} is over the limit {high}{flag}", field=field
        )


def _check_tokens(field: str, tokens: Sequence[int], vocab_size: int) -> None:
    bad = [token for token in tokens if not 0 <= token < vocab_size]
    if bad:
        raise InvalidArgumentError(
            f"{field}: token id {bad[0]} is outside the vocabulary [0, {vocab_size})", field=field
        )


class SamplingAdmission:
    """At most `max_concurrent` sampling requests and `max_memory_bytes` of their memory."""

    def __init__(self, limits: SamplingLimits) -> None:
        self._limits = limits
        self._lock = threading.Lock()
        self._running = 0
        self._bytes = 0

    @property
    def running(self) -> tuple[int, int]:
        """(requests, bytes) admitted now."""
        with self._lock:
            return self._running, self._bytes

    @contextlib.contextmanager
    def admitted(self, nbytes: int) -> Iterator[None]:
        """Hold a place and `nbytes` for the block; refuse at once when either is full."""
        with self._lock:
            if self._running >= self._limits.max_concurrent:
                raise ResourceExhaustedError(
                    f"max_concurrent_samples: {self._running} sampling requests run already "
                    "(--max-concurrent-samples)",
                    field="max_concurrent_samples",
                    retry_delay=1.0,
                )
            if self._bytes + nbytes > self._limits.max_memory_bytes:
                raise ResourceExhaustedError(
                    f"sampling_memory_bytes: {nbytes} more bytes of KV cache would pass the "
                    f"server's {self._limits.max_memory_bytes} ({self._bytes} held; "
                    "--max-sampling-memory-bytes)",
                    field="sampling_memory_bytes",
                    retry_delay=1.0,
                )
            self._running += 1
            self._bytes += nbytes
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                self._bytes -= nbytes
