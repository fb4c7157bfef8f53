"""The bare gRPC prototype: raw-bytes methods (generic handlers) with gradserve's payload sizes.

`python bench/echo_server.py --port 0` prints `listening on 127.0.0.1:PORT`. Methods of
`bench.Echo`, all on raw bytes (no protobuf):
- Unary: the request's first 8 bytes are the response size (little-endian); the reply is that
  many bytes, so one method stands in for any gradserve unary call.
- Download: request (total, chunk) as two little-endian uint64; streams `total` bytes in chunks.
- Upload: a stream of chunks in; joins them (the one copy a receiver makes) and answers 8 bytes.
"""

from __future__ import annotations

import argparse
import signal
import struct
import sys
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc

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


def build_handler() -> grpc.GenericRpcHandler:
    payloads = _Payloads()

    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        (size,) = struct.unpack_from("<Q", request)
        return payloads.get(size)

    def download(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        total, chunk = struct.unpack("<QQ", request)
        source = payloads.get(total)
        for offset in range(0, total, chunk):
            # A slice copies, as gradserve's encoder copies each chunk out of the tensor.
            yield source[offset : offset + chunk]

    def upload(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        whole = b"".join(requests)
        return struct.pack("<Q", len(whole))

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Download": grpc.unary_stream_rpc_method_handler(download),
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
        },
    )


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
