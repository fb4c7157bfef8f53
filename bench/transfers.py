"""Workload 3: a 33.6 M-parameter model's 134 MB in and out, against bare gRPC moving the same bytes."""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch

from bench.baselines import BareClient
from bench.processes import MALLOC_ENV, echo_server, gradserve_server
from bench.rows import Row
from gradserve.chunks import DEFAULT_CHUNK_BYTES
from gradserve.client.gradient_client import GradientClient

# 2 x 4096^2 + 4096 x 10 weights and their biases: 33,603,594 float32 = 134.4 MB.
BIG_MODEL = "mlp:4096-4096-4096-10"
LIMIT = 256 * 1024 * 1024


def params(settings: object) -> list[Row]:
    """Both allocator settings for the server processes: glibc's defaults and MALLOC_ENV."""
    repeats = getattr(settings, "repeats", 3)
    return [*_params(repeats, {}, ""), *_params(repeats, MALLOC_ENV, " [MALLOC_MMAP_MAX_=0]")]


def _params(repeats: int, env: Mapping[str, str], label: str) -> list[Row]:
    # Issue 5's for the stream; issue 18's for one message and for the upload.
    stream_target = "≥ 1 GB/s, ≥ 0.83 (≤ 1.2x bare time)"
    stream_get = Row(
        "params",
        f"StreamParameters 134 MB, 4 MiB chunks{label}",
        "GB/s",
        "bare stream, same chunks",
        target=stream_target,
        check=lambda ours, ratio: ours >= 1.0 and ratio >= 1 / 1.2,
    )
    unary_get = Row(
        "params",
        f"GetParameters 134 MB, one message (limit 256 MiB){label}",
        "GB/s",
        "bare one message",
        target="≥ 0.7x bare",
        check=lambda ours, ratio: ratio >= 0.7,
    )
    upload = Row(
        "params",
        f"UploadParameters 134 MB, 4 MiB chunks{label}",
        "GB/s",
        "bare stream, same chunks",
        target="≥ 0.9x bare",
        check=lambda ours, ratio: ratio >= 0.9,
    )
    with (
        gradserve_server(BIG_MODEL, "--max-message-bytes", str(LIMIT), env=env) as server,
        echo_server(env) as echo,
        GradientClient(server.address, timeout=120, max_message_bytes=LIMIT) as client,
    ):
        client.wait_until_ready(60)
        bare = BareClient(echo.address)
        _, values = client.stream_parameters()
        total = sum(v.numel() * v.element_size() for v in values.values())
        flat = torch.cat([v.reshape(-1) for v in values.values()])
        for _ in range(repeats):
            started = time.perf_counter()
            _, got = client.stream_parameters()
            stream_get.ours.append(total / (time.perf_counter() - started) / 1e9)
            stream_get.baseline.append(total / bare.download(total, DEFAULT_CHUNK_BYTES) / 1e9)
            del got
            started = time.perf_counter()
            _, got = client.get_parameters()
            unary_get.ours.append(total / (time.perf_counter() - started) / 1e9)
            unary_get.baseline.append(total / bare.download_one_message(total) / 1e9)
            del got
            started = time.perf_counter()
            client.upload_parameters(values)
            upload.ours.append(total / (time.perf_counter() - started) / 1e9)
            upload.baseline.append(total / bare.upload(flat, DEFAULT_CHUNK_BYTES) / 1e9)
        bare.close()
        peak = _peak_rss(server.pid)
    note = f"{total:,} bytes; server peak RSS {peak / 1e6:.0f} MB"
    for row in (stream_get, unary_get, upload):
        row.notes = note
    return [stream_get, unary_get, upload]


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0
