"""The bare gRPC prototype: raw-bytes methods (generic handlers) with gradserve's payload sizes.

`python bench/echo_server.py --port 0` prints `listening on 127.0.0.1:PORT`. Methods of
`bench.Echo`, all on raw bytes (no protobuf):
- Unary: the request's first 8 bytes are the response size (little-endian); the reply is that
  many bytes, so one method stands in for any gradserve unary call.
- Download: request (total, chunk) as two little-endian uint64; streams `total` bytes in chunks.
- Upload: a stream of chunks in; joins them (the one copy a receiver makes) and answers 8 bytes.
- Compute / Apply: the seed step's own arithmetic on raw float32 bytes, with no checks, no
  protobuf and no bookkeeping: Compute takes x and y ([N] each, concatenated), runs
  y_pred = w * x + b, the mean squared error and backward() into .grad, and answers the loss
  (8 bytes); Apply takes the learning rate (a float64), steps w -= lr * w.grad (and b), zeroes
  the gradients and answers 8 bytes. Init takes w and b (2 float32) and resets them. This is the
  floor a unary ComputeGradients + ApplyUpdate server can reach in its own process.
"""

from __future__ import annotations

import argparse
import signal
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import torch

SERVICE = "bench.Echo"
LIMIT = 512 * 1024 * 1024
OPTIONS = [("grpc.max_receive_message_length", LIMIT), ("grpc.max_send_message_length", LIMIT)]


class _Payloads:
    """Replies by size, made once: the floor sends bytes it already has."""

    def __init__(self) -> None:
        self._by_size: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def get(self, size: int) -> bytes:
        payload = self._by_size.get(size)
        if payload is None:
            with self._lock:
                payload = self._by_size.setdefault(size, bytes(size))
        return payload


class _SeedArithmetic:
    """w and b of the seed model, trained by the raw Compute/Apply calls (one lock, as any
    server that holds a model must have)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.w = torch.zeros(1, requires_grad=True)
        self.b = torch.zeros(1, requires_grad=True)

    def init(self, request: bytes, context: Any) -> bytes:
        values = torch.frombuffer(bytearray(request), dtype=torch.float32)
        with self.lock, torch.no_grad():
            self.w.copy_(values[0:1])
            self.b.copy_(values[1:2])
            self.w.grad = self.b.grad = None
        return bytes(8)

    def compute(self, request: bytes, context: Any) -> bytes:
        both = torch.frombuffer(request, dtype=torch.float32)
        half = both.numel() // 2
        x, y = both[:half].reshape(-1, 1), both[half:].reshape(-1, 1)
        with self.lock:
            loss = ((self.w * x + self.b - y) ** 2).mean()
            loss.backward()
            return struct.pack("<d", loss.item())

    def apply(self, request: bytes, context: Any) -> bytes:
        (learning_rate,) = struct.unpack("<d", request)
        with self.lock, torch.no_grad():
            for parameter in (self.w, self.b):
                assert parameter.grad is not None
                parameter.sub_(learning_rate * parameter.grad)
                parameter.grad.zero_()
            return bytes(8)

    def parameters(self, request: bytes, context: Any) -> bytes:
        with self.lock:
            return self.w.detach().numpy().tobytes() + self.b.detach().numpy().tobytes()


def unary_behaviours() -> dict[str, Callable[[bytes, Any], bytes]]:
    """The unary methods by name, as plain functions (bench/aio_servers.py serves the same ones
    on grpc.aio)."""
    payloads = _Payloads()
    seed = _SeedArithmetic()

    def unary(request: bytes, context: Any) -> bytes:
        (size,) = struct.unpack_from("<Q", request)
        return payloads.get(size)

    return {
        "Unary": unary,
        "Init": seed.init,
        "Compute": seed.compute,
        "Apply": seed.apply,
        "Parameters": seed.parameters,
    }


def build_handler() -> grpc.GenericRpcHandler:
    payloads = _Payloads()

    def download(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        total, chunk = struct.unpack("<QQ", request)
        source = payloads.get(total)
        for offset in range(0, total, chunk):
            # A slice copies, as gradserve's encoder copies each chunk out of the tensor.
            yield source[offset : offset + chunk]

    def upload(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        whole = b"".join(requests)
        return struct.pack("<Q", len(whole))

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(behaviour)
        for name, behaviour in unary_behaviours().items()
    }
    handlers["Download"] = grpc.unary_stream_rpc_method_handler(download)
    handlers["Upload"] = grpc.stream_unary_rpc_method_handler(upload)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers), options=OPTIONS)
    server.add_generic_rpc_handlers((build_handler(),))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    stop.wait()
    server.stop(1).wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
