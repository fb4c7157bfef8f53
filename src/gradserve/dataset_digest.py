"""The digest of a dataset's content, the same on both sides: the client can name what it
uploads (UploadDatasetRequest.digest) and the server can tell the same content from other.

SHA-256 over the header line "gradserve-dataset-v1 INPUTS_DTYPE [SHAPE] TARGETS_DTYPE [SHAPE]\n"
(wire dtype names, e.g. FLOAT32, shape "100,1"), then the inputs' data, then the targets' data,
each as Tensor.data lays it out (row-major, little-endian); docs/datasets.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from gradserve.codec import dtype_name, dtype_to_proto, tensor_to_proto


def digest_header(
    input_dtype: int, input_shape: Sequence[int], target_dtype: int, target_shape: Sequence[int]
) -> bytes:
    """The header line, from wire dtypes (gradserve.v1.DataType values) and full shapes."""

    def spec(dtype: int, shape: Sequence[int]) -> str:
        return f"{dtype_name(dtype)} [{','.join(str(d) for d in shape)}]"

    return (
        f"gradserve-dataset-v1 {spec(input_dtype, input_shape)} "
        f"{spec(target_dtype, target_shape)}\n"
    ).encode()


def dataset_digest(inputs: torch.Tensor, targets: torch.Tensor) -> str:
    """Lowercase hex SHA-256 of the dataset as an upload of these tensors sends it."""
    digest = hashlib.sha256(
        digest_header(
            dtype_to_proto(inputs.dtype),
            inputs.shape,
            dtype_to_proto(targets.dtype),
            targets.shape,
        )
    )
    digest.update(tensor_to_proto(inputs).data)
    digest.update(tensor_to_proto(targets).data)
    return digest.hexdigest()
