"""Parameters of any size to and from a run: the one-message RPCs (GetParameters,
SetParameters) while the model fits well inside the server's message limit, the chunked ones
(StreamParameters, UploadParameters) past it. Both give the same tensors and the same version."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gradserve.chunks import DEFAULT_CHUNK_BYTES
from gradserve.types import ModelInfo

from .gradient_client import GradientClient


def _too_large_for_one_message(size: int, info: ModelInfo) -> bool:
    # Half the limit: the message also carries names, shapes and framing.
    return bool(info.max_message_bytes) and size > info.max_message_bytes // 2


def model_bytes(info: ModelInfo) -> int:
    return sum(
        int(torch.Size(spec.shape).numel()) * spec.dtype.itemsize for spec in info.parameters
    )


def fetch_parameters(
    client: GradientClient, info: ModelInfo
) -> tuple[int, dict[str, torch.Tensor]]:
    """(version, parameters) of the client's run."""
    if _too_large_for_one_message(model_bytes(info), info):
        return client.stream_parameters()
    return client.get_parameters()


def put_parameters(
    client: GradientClient,
    values: Mapping[str, torch.Tensor],
    info: ModelInfo,
    *,
    expected_version: int | None = None,
) -> int:
    """Set `values` on the client's run; its new version."""
    size = sum(value.numel() * value.element_size() for value in values.values())
    if _too_large_for_one_message(size, info):
        # Chunks well inside the limit too (a chunk carries its name and framing besides).
        return client.upload_parameters(
            values,
            chunk_bytes=min(DEFAULT_CHUNK_BYTES, info.max_message_bytes // 2),
            expected_version=expected_version,
        )
    return client.set_parameters(values, expected_version=expected_version)
