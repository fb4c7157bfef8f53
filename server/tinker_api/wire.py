"""The Tinker SDK's forward_backward protobuf, read into token batches and written back.

The SDK sends forward_backward (and forward) as its own protobuf (`tinker.proto`, pinned with
the SDK), optionally zstd-compressed, and reads ForwardBackwardOutput as protobuf too; every
other body is JSON. A datum becomes one token batch [1, T]: its text chunks' tokens (int32 on
the wire) are `inputs`, `loss_fn_inputs` give `targets` (`target_tokens`) and the loss's
per-token float32 tensors (`weights`, `logprobs`, `advantages`), each [T]. Anything gradserve
does not serve (images, sparse tensors, other input names) is refused naming the field.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import zstandard
from tinker.proto import tinker_public_pb2 as tinker_pb

from .errors import TinkerHttpError, bad_field

# loss_fn_inputs names -> what the token batch calls them.
PER_TOKEN_INPUTS = ("weights", "logprobs", "advantages")
_DTYPES = {tinker_pb.DTYPE_FLOAT32: torch.float32, tinker_pb.DTYPE_INT64: torch.int64}
_NUMPY = {torch.float32: np.float32, torch.int64: np.int64}


@dataclass(frozen=True)
class Datum:
    """One sequence: inputs and targets int64 [1, T], per-token float32 [1, T] by name."""

    inputs: torch.Tensor
    targets: torch.Tensor
    per_token: Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ForwardBackwardCall:
    model_id: str
    seq_id: int
    loss_fn: str
    loss_fn_config: Mapping[str, float]
    forward_only: bool
    data: Sequence[Datum]


def decompressed(body: bytes, encoding: str, limit: int) -> bytes:
    """The body, zstd-decoded when sent so; over `limit` bytes is refused before it is all read."""
    if encoding in ("", "identity"):
        return body
    if encoding != "zstd":
        raise TinkerHttpError(415, f"Content-Encoding: {encoding[:40]!r} (only zstd is read)")
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body))
        data = reader.read(limit + 1)
    except zstandard.ZstdError as error:
        raise bad_field("body", f"not valid zstd ({error})") from None
    if len(data) > limit:
        raise TinkerHttpError(413, f"body: over tinker_max_body_bytes ({limit}) decompressed")
    return data


def forward_backward_message(body: bytes) -> tinker_pb.ForwardBackwardRequest:
    """The message, parsed only: its model_id and seq_id are known before its data is checked."""
    message = tinker_pb.ForwardBackwardRequest()
    try:
        message.ParseFromString(body)
    except Exception:  # protobuf's DecodeError and its kin
        raise bad_field("body", "not a tinker ForwardBackwardRequest message") from None
    return message


def forward_backward_from_proto(message: tinker_pb.ForwardBackwardRequest) -> ForwardBackwardCall:
    config: dict[str, float] = dict(message.loss_fn_config)
    for key, value in message.loss_fn_config_v2.items():
        if value.WhichOneof("value") == "text":
            raise bad_field(f"loss_fn_config.{key[:40]}", "text values are not served")
        config[key] = value.number
    if not message.data:
        raise bad_field("data", "no datums")
    data = [_datum(index, datum) for index, datum in enumerate(message.data)]
    return ForwardBackwardCall(
        message.model_id, message.seq_id, message.loss_fn, config, message.forward_only, data
    )


def _datum(index: int, datum: tinker_pb.Datum) -> Datum:
    where = f"data[{index}]"
    tokens: list[np.ndarray] = []
    for number, chunk in enumerate(datum.model_input):
        kind = chunk.WhichOneof("chunk")
        if kind != "encoded_text":
            raise bad_field(
                f"{where}.model_input.chunks[{number}]", f"{kind} chunks are not served (text only)"
            )
        raw = chunk.encoded_text.tokens
        if len(raw) % 4:
            raise bad_field(f"{where}.model_input.chunks[{number}]", "tokens are not int32")
        tokens.append(np.frombuffer(raw, dtype="<i4"))
    joined = np.concatenate(tokens) if tokens else np.zeros(0, dtype=np.int32)
    length = int(joined.shape[0])
    if length == 0:
        raise bad_field(f"{where}.model_input", "no tokens")
    inputs = torch.from_numpy(joined.astype(np.int64)).reshape(1, length)
    named = {name: _tensor(f"{where}.loss_fn_inputs.{name}", t) for name, t in
             datum.loss_fn_inputs.items()}  # fmt: skip
    targets = named.pop("target_tokens", None)
    if targets is None:
        raise bad_field(f"{where}.loss_fn_inputs.target_tokens", "required")
    for name, tensor in {"target_tokens": targets, **named}.items():
        field = f"{where}.loss_fn_inputs.{name}"
        if name != "target_tokens" and name not in PER_TOKEN_INPUTS:
            raise bad_field(field, f"not an input gradserve serves ({', '.join(PER_TOKEN_INPUTS)})")
        wanted = torch.int64 if name == "target_tokens" else torch.float32
        if tensor.dtype != wanted:
            raise bad_field(f"{field}.dtype", f"{tensor.dtype} is not {wanted}")
        if tuple(tensor.shape) != (length,):
            raise bad_field(
                f"{field}.shape", f"{list(tensor.shape)}, but model_input has {length} tokens"
            )
    per_token = {name: tensor.reshape(1, length) for name, tensor in named.items()}
    return Datum(inputs, targets.reshape(1, length), per_token)


def _tensor(field: str, message: tinker_pb.Tensor) -> torch.Tensor:
    dtype = _DTYPES.get(message.dtype)
    if dtype is None:
        raise bad_field(f"{field}.dtype", "only float32 and int64 are served")
    if message.HasField("sparse_csr"):
        raise bad_field(field, "sparse tensors are not served (send it dense)")
    itemsize = 8 if dtype == torch.int64 else 4
    if len(message.dense) % itemsize:
        raise bad_field(f"{field}.data", f"{len(message.dense)} bytes is not a whole {dtype}")
    array = np.frombuffer(message.dense, dtype=np.dtype(_NUMPY[dtype]).newbyteorder("<"))
    shape = list(message.shape) or [int(array.shape[0])]
    if int(np.prod(shape)) != array.shape[0]:
        raise bad_field(f"{field}.shape", f"{shape} does not hold {array.shape[0]} values")
    return torch.from_numpy(array.copy()).reshape(shape)


def forward_backward_output_to_proto(
    logprobs: Sequence[torch.Tensor], metrics: Mapping[str, float]
) -> bytes:
    """ForwardBackwardOutput: per datum its targets' `logprobs` (float32 [T]), and metrics."""
    message = tinker_pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
    record = message.loss_fn_outputs.add(type_tag="ArrayRecord", num_datums=len(logprobs))
    flat = [t.reshape(-1).to(torch.float32).numpy() for t in logprobs]
    offsets = np.cumsum([0] + [a.nbytes for a in flat], dtype=np.int64)
    field = record.fields["logprobs"]
    field.dtype = tinker_pb.DTYPE_FLOAT32
    field.data = b"".join(a.astype("<f4").tobytes() for a in flat)
    field.offsets = offsets.astype("<i8").tobytes()
    for key, value in metrics.items():
        message.metrics[key] = value
    return message.SerializeToString()
