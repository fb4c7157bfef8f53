"""Server-side data parallelism: samples/s of a compute-bound MLP with W = 1 and W = 2 ranks.

`python -m bench.distributed [--seconds 10] [--batch 512] [--model mlp:512-2048-2048-10]`

Each configuration is a real server (ranks started with torchrun's environment on loopback,
gloo) and one client that calls ComputeGradients then ApplyUpdate on the same batch for
`--seconds`. W = 1 is run twice: torch with one intra-op thread, and with one per core.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import torch

from gradserve.client.gradient_client import GradientClient


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(world_size: int, model: str, threads: int) -> tuple[str, list[subprocess.Popen[str]]]:
    base = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(world_size),
        "OMP_NUM_THREADS": str(threads),
    }
    command = [sys.executable, "server/serve.py", "--port", "0", "--metrics-port", "0"]
    command += ["--model", model, "--torch-threads", str(threads), "--log-level", "WARNING"]
    processes = [
        subprocess.Popen(
            command,
            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE if rank == 0 else subprocess.DEVNULL,
            text=True,
        )
        for rank in range(world_size)
    ]
    lines: queue.Queue[str] = queue.Queue()
    stdout = processes[0].stdout
    assert stdout is not None
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    while True:
        line = lines.get(timeout=120)
        if line.startswith("listening on "):
            return line.removeprefix("listening on ").strip(), processes


def _stop(processes: list[subprocess.Popen[str]]) -> None:
    processes[0].send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


def measure(world_size: int, threads: int, model: str, batch: int, seconds: float) -> dict:
    address, processes = _start(world_size, model, threads)
    try:
        with GradientClient(address, timeout=120.0) as client:
            client.wait_until_ready(60.0)
            info = client.model_info()
            features = info.input.shape[1]
            classes = int(model.split(":")[1].rsplit("-", maxsplit=1)[-1])
            inputs = torch.randn(batch, features)
            targets = torch.randint(0, classes, (batch,))
            client.compute_gradients(inputs, targets)  # warm-up
            client.apply_update(0.0)
            steps = 0
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                client.compute_gradients(inputs, targets)
                client.apply_update(0.001)
                steps += 1
            elapsed = time.perf_counter() - started
    finally:
        _stop(processes)
    return {
        "world_size": world_size,
        "torch_threads_per_rank": threads,
        "steps": steps,
        "samples_per_second": round(steps * batch / elapsed, 1),
        "milliseconds_per_step": round(1000 * elapsed / steps, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--model", default="mlp:512-2048-2048-10")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    configurations = [(1, 1), (1, args.cores), (2, max(1, args.cores // 2))]
    for world_size, threads in configurations:
        result = measure(world_size, threads, args.model, args.batch, args.seconds)
        print(json.dumps({"model": args.model, "batch": args.batch, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
