"""Sampling bounds: each refusal names its field, memory from the config equals the cache's."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import threading
from pathlib import Path

import pytest
import torch
from test_sampling_engine import PROMPT, tiny_model

from gradserve.errors import GradserveError, InvalidArgumentError, ResourceExhaustedError
from gradserve.sampling_types import SamplingParams
from gradserve.server.config import SamplingLimits, ServerConfig
from gradserve.server.flags import parse_args
from gradserve.server.models.sampling_limits import (
    FLAGS,
    LanguageModelShape,
    SamplingAdmission,
    check_request,
    kv_cache_bytes,
    request_bytes,
    shape_of,
)

LIMITS = SamplingLimits(
    max_prompt_tokens=16, max_tokens=20, max_samples=8, max_concurrent=2, max_memory_bytes=1 << 20
)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_kv_cache_bytes_from_the_config_are_the_cache_it_fills(kind: str, tmp_path: Path) -> None:
    model = tiny_model(kind, tmp_path / kind)
    shape = shape_of(model.config, element_bytes=4)
    with torch.no_grad():
        cache = model(input_ids=torch.ones(3, 11, dtype=torch.long), use_cache=True).past_key_values
    filled = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert kv_cache_bytes(shape, rows=3, positions=11) == filled


def shape_for_tests(tmp_path: Path) -> LanguageModelShape:
    return shape_of(tiny_model("llama", tmp_path / "llama").config, element_bytes=4)


@pytest.mark.parametrize(
    ("prompt", "changes", "error", "field"),
    [
        ([], {}, InvalidArgumentError, "prompt_tokens"),
        (list(range(17)), {}, ResourceExhaustedError, "prompt_tokens"),
        ([3, 61], {}, InvalidArgumentError, "prompt_tokens"),
        ([3, -1], {}, InvalidArgumentError, "prompt_tokens"),
        (PROMPT, {"num_samples": 0}, InvalidArgumentError, "num_samples"),
        (PROMPT, {"num_samples": 9}, ResourceExhaustedError, "num_samples"),
        (PROMPT, {"max_tokens": 0}, InvalidArgumentError, "max_tokens"),
        (PROMPT, {"max_tokens": 21}, ResourceExhaustedError, "max_tokens"),
        (PROMPT, {"temperature": -0.5}, InvalidArgumentError, "temperature"),
        (PROMPT, {"temperature": float("nan")}, InvalidArgumentError, "temperature"),
        (PROMPT, {"top_k": -1}, InvalidArgumentError, "top_k"),
        (PROMPT, {"top_p": 0.0}, InvalidArgumentError, "top_p"),
        (PROMPT, {"top_p": 1.5}, InvalidArgumentError, "top_p"),
        (PROMPT, {"stop_token_ids": (61,)}, InvalidArgumentError, "stop_token_ids"),
        (PROMPT, {"stop_token_ids": tuple(range(65))}, ResourceExhaustedError, "stop_token_ids"),
    ],
)
def test_each_refusal_names_its_field(
    tmp_path: Path,
    prompt: list[int],
    changes: dict[str, object],
    error: type[GradserveError],
    field: str,
) -> None:
    params = SamplingParams(**{"num_samples": 2, "max_tokens": 4, **changes})  # type: ignore[arg-type]
    with pytest.raises(error) as refused:
        check_request(prompt, params, shape_for_tests(tmp_path), LIMITS)
    assert refused.value.field == field
    assert field in str(refused.value)


def test_the_context_length_bounds_prompt_plus_max_tokens(tmp_path: Path) -> None:
    shape = shape_for_tests(tmp_path)  # 64 positions
    roomy = SamplingLimits(max_prompt_tokens=64, max_tokens=64)
    check_request(list(range(44)), SamplingParams(1, 20), shape, roomy)
    with pytest.raises(InvalidArgumentError) as refused:
        check_request(list(range(45)), SamplingParams(1, 20), shape, roomy)
    assert refused.value.field == "max_tokens"


def test_memory_is_refused_before_work_and_counted_in_bytes(tmp_path: Path) -> None:
    shape = shape_for_tests(tmp_path)
    params = SamplingParams(num_samples=8, max_tokens=20, prompt_logprobs=True)
    needed = request_bytes(shape, len(PROMPT), params)
    assert needed == kv_cache_bytes(shape, 8, len(PROMPT) + 20) + len(PROMPT) * 61 * 4
    tight = SamplingLimits(max_tokens=20, max_memory_bytes=needed - 1)
    with pytest.raises(ResourceExhaustedError) as refused:
        check_request(PROMPT, params, shape, tight)
    assert refused.value.field == "num_samples"
    assert check_request(PROMPT, params, shape, SamplingLimits(max_memory_bytes=needed)) == needed


def test_admission_bounds_requests_and_bytes_and_frees_both() -> None:
    admission = SamplingAdmission(SamplingLimits(max_concurrent=2, max_memory_bytes=100))
    with admission.admitted(60):
        with pytest.raises(ResourceExhaustedError) as refused, admission.admitted(41):
            pass
        assert refused.value.field == "sampling_memory_bytes"
        with admission.admitted(40):
            assert admission.running == (2, 100)
            with pytest.raises(ResourceExhaustedError) as refused, admission.admitted(0):
                pass
            assert refused.value.field == "max_concurrent_samples"
    assert admission.running == (0, 0)
    with pytest.raises(RuntimeError), admission.admitted(100):
        raise RuntimeError("the request failed")
    assert admission.running == (0, 0)


def test_admission_holds_under_threads() -> None:
    admission = SamplingAdmission(SamplingLimits(max_concurrent=3, max_memory_bytes=1 << 40))
    inside = threading.Barrier(4)  # three holders and this thread
    release = threading.Event()
    refused: list[str] = []

    def hold() -> None:
        with admission.admitted(1):
            inside.wait()
            release.wait()

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        inside.wait()
        with pytest.raises(ResourceExhaustedError) as over, admission.admitted(1):
            pass
        refused.append(str(over.value.field))
    finally:
        release.set()
        for thread in threads:
            thread.join()
    assert refused == ["max_concurrent_samples"]
    assert admission.running == (0, 0)


def test_the_limits_are_server_flags_and_environment() -> None:
    config = parse_args(
        [
            "--max-sample-prompt-tokens=7",
            "--max-sample-tokens=9",
            "--max-samples-per-request=3",
            "--max-concurrent-samples=2",
        ],
        environ={"GRADSERVE_MAX_SAMPLING_MEMORY_BYTES": "12345"},
    )
    assert config.sampling == SamplingLimits(
        max_prompt_tokens=7, max_tokens=9, max_samples=3, max_concurrent=2, max_memory_bytes=12345
    )
    assert parse_args([], environ={}).sampling == SamplingLimits()


@pytest.mark.parametrize("flag", [flag for flag, _, _ in FLAGS.values()])
def test_a_limit_below_one_is_refused_naming_its_flag(flag: str) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        ServerConfig.from_flat(**{flag: 0})
    assert refused.value.field == flag
