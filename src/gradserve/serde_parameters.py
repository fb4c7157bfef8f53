"""serde for the small answers about a run's parameters and gradients: set, uploaded, discarded.

Paired x_to_proto / x_from_proto, as in serde.py (which holds the tensor-carrying types).
"""

from __future__ import annotations

from gradserve.types import DiscardResult, SetResult
from gradserve.v1 import gradserve_pb2 as pb


def set_result_to_proto(result: SetResult) -> pb.SetParametersResponse:
    return pb.SetParametersResponse(model_version=result.model_version)


def set_result_from_proto(message: pb.SetParametersResponse) -> SetResult:
    return SetResult(message.model_version)


def uploaded_parameters_to_proto(result: SetResult) -> pb.UploadParametersResponse:
    return pb.UploadParametersResponse(model_version=result.model_version)


def uploaded_parameters_from_proto(message: pb.UploadParametersResponse) -> SetResult:
    return SetResult(message.model_version)


def discard_result_to_proto(result: DiscardResult) -> pb.DiscardGradientsResponse:
    return pb.DiscardGradientsResponse(
        discarded_batches=result.discarded_batches, model_version=result.model_version
    )


def discard_result_from_proto(message: pb.DiscardGradientsResponse) -> DiscardResult:
    return DiscardResult(message.discarded_batches, message.model_version)
