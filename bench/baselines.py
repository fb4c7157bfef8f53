"""Baselines measured in the same run: the local PyTorch loops and bare gRPC over raw bytes."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator, Sequence

import grpc
import torch
from torch import nn
from torch.nn import functional

from bench.echo_server import OPTIONS, SERVICE


def local_seed_loop(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    initial_w: torch.Tensor,
    initial_b: torch.Tensor,
    steps: int,
    batch_size: int = 10,
    lr: float = 0.01,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The seed tutorial's loop exactly; (seconds, w, b)."""
    w = initial_w.clone().requires_grad_(True)
    b = initial_b.clone().requires_grad_(True)
    samples = int(inputs.shape[0])
    started = time.perf_counter()
    done = 0
    while done < steps:
        for i in range(0, samples, batch_size):
            if done == steps:
                break
            x_batch, y_batch = inputs[i : i + batch_size], targets[i : i + batch_size]
            loss = ((w * x_batch + b - y_batch) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                w -= lr * w.grad
                b -= lr * b.grad
            w.grad.zero_()
            b.grad.zero_()
            done += 1
    seconds = time.perf_counter() - started
    return seconds, w.detach(), b.detach()


def local_mlp_loop(
    sizes: Sequence[int],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    seed: int = 0,
    lr: float = 0.01,
) -> tuple[float, dict[str, torch.Tensor]]:
    """Forward, cross_entropy, backward, then the seed loop's SGD step (`p -= lr * p.grad`,
    then zero_()) per batch, the arithmetic of the server's `sgd`, so the remote result can be
    compared bitwise; (seconds, final state)."""
    torch.manual_seed(seed)  # the server's initialisation (server/models/networks.py build_mlp)
    layers: list[nn.Module] = []
    for index in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[index], sizes[index + 1]))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    parameters = list(model.parameters())
    started = time.perf_counter()
    for inputs, targets in batches:
        loss = functional.cross_entropy(model(inputs), targets)
        loss.backward()
        with torch.no_grad():
            for parameter in parameters:
                parameter.sub_(lr * parameter.grad)  # `-=`, as the seed loop writes it
                parameter.grad.zero_()
    seconds = time.perf_counter() - started
    return seconds, {name: value.detach().clone() for name, value in model.state_dict().items()}


class BareClient:
    """Raw-bytes calls to bench/echo_server.py: the cost of gRPC alone."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target, options=OPTIONS)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self._unary = self.channel.unary_unary(f"/{SERVICE}/Unary")
        self._download = self.channel.unary_stream(f"/{SERVICE}/Download")
        self._upload = self.channel.stream_unary(f"/{SERVICE}/Upload")
        self._requests: dict[tuple[int, int], bytes] = {}

    def close(self) -> None:
        self.channel.close()

    def request(self, request_bytes: int, response_bytes: int) -> bytes:
        key = (request_bytes, response_bytes)
        if key not in self._requests:
            header = struct.pack("<Q", response_bytes)
            self._requests[key] = header + bytes(max(0, request_bytes - len(header)))
        return self._requests[key]

    def call(self, request: bytes, timeout: float = 30.0) -> bytes:
        return self._unary(request, timeout=timeout)

    def steps(self, calls: Sequence[tuple[int, int]], steps: int) -> float:
        """`steps` steps of len(calls) unary calls with these (request, response) sizes."""
        requests = [self.request(*sizes) for sizes in calls]
        started = time.perf_counter()
        for _ in range(steps):
            for request in requests:
                self._unary(request, timeout=30.0)
        return time.perf_counter() - started

    def seed_steps(
        self,
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        w: torch.Tensor,
        b: torch.Tensor,
        learning_rate: float,
    ) -> tuple[float, torch.Tensor, torch.Tensor]:
        """The seed loop on the bare prototype's Compute/Apply (the same arithmetic as
        gradserve's unary path, nothing else): seconds and the final w, b."""
        self.channel.unary_unary(f"/{SERVICE}/Init")(
            w.numpy().tobytes() + b.numpy().tobytes(), timeout=30.0
        )
        compute = self.channel.unary_unary(f"/{SERVICE}/Compute")
        apply = self.channel.unary_unary(f"/{SERVICE}/Apply")
        rate = struct.pack("<d", learning_rate)
        started = time.perf_counter()
        for x, y in batches:
            # What a client pays to put a batch on the wire: one copy of each tensor's bytes.
            compute(x.numpy().tobytes() + y.numpy().tobytes(), timeout=30.0)
            apply(rate, timeout=30.0)
        seconds = time.perf_counter() - started
        final = self.channel.unary_unary(f"/{SERVICE}/Parameters")(b"", timeout=30.0)
        values = torch.frombuffer(bytearray(final), dtype=torch.float32)
        return seconds, values[0:1].clone(), values[1:2].clone()

    def download(self, total: int, chunk: int) -> float:
        """Receive `total` bytes in chunks and join them into one buffer."""
        started = time.perf_counter()
        pieces = list(self._download(struct.pack("<QQ", total, chunk), timeout=120.0))
        whole = b"".join(pieces)
        seconds = time.perf_counter() - started
        assert len(whole) == total
        return seconds

    def download_one_message(self, total: int) -> float:
        started = time.perf_counter()
        reply = self._unary(struct.pack("<Q", total), timeout=120.0)
        seconds = time.perf_counter() - started
        assert len(reply) == total
        return seconds

    def upload(self, source: torch.Tensor, chunk: int) -> float:
        """Send a tensor's bytes in chunks, one copy per chunk (as the codec's tobytes())."""
        raw = source.contiguous().view(-1).view(torch.uint8)

        def chunks() -> Iterator[bytes]:
            for offset in range(0, raw.numel(), chunk):
                yield raw[offset : offset + chunk].numpy().tobytes()

        started = time.perf_counter()
        reply = self._upload(chunks(), timeout=120.0)
        seconds = time.perf_counter() - started
        assert struct.unpack("<Q", reply)[0] == raw.numel()
        return seconds
