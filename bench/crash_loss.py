"""What a kill -9 loses with --durability async and --checkpoint-every-updates N, under load.

A server process saves in the background every N updates; client threads run ComputeGradients
+ ApplyUpdate (or Train requests of several steps, `--steps-per-request`) as fast as they can;
after a seeded-random stretch the server is SIGKILLed. The highest version any client saw
acknowledged, less the version the restarted server restores, is what that kill lost.
`python -m bench.crash_loss --kills 10 --clients 4` prints one line per kill and a summary
(docs/checkpoints.md quotes it, with the machine's load).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import tempfile
import threading
import time

from bench.processes import gradserve_server
from bench.workloads import seed_batches
from gradserve.client.gradient_client import NO_RETRY, GradientClient
from gradserve.errors import FailedPreconditionError, GradserveError
from gradserve.types import TrainStep


def _load(address: str, clients: int, steps: int, stop: threading.Event) -> list[int]:
    """Client threads updating until `stop`; each one's highest acknowledged version."""
    inputs, targets = seed_batches(1)[0]
    step = TrainStep(((inputs, targets),), apply_update=True, learning_rate=0.001)
    acknowledged = [0] * clients

    def run(index: int) -> None:
        with GradientClient(address, timeout=30, retry=NO_RETRY) as client:
            while not stop.is_set():
                try:
                    if steps > 1:
                        (answer,) = client.train_stream([[step] * steps], window=1)
                        version = max(result.model_version for result in answer)
                    else:
                        client.compute_gradients(inputs, targets)
                        version = client.apply_update(0.001).model_version
                except FailedPreconditionError:
                    continue  # another client's update took these gradients
                except GradserveError:
                    return  # the server is gone
                acknowledged[index] = max(acknowledged[index], version)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return acknowledged


def one_kill(clients: int, every: int, steps: int, seconds: float) -> tuple[int, int]:
    """(highest acknowledged version, restored version) for one kill after `seconds`."""
    with tempfile.TemporaryDirectory() as folder:
        flags = ("--checkpoint-dir", folder, "--checkpoint-every-updates", str(every))
        server = gradserve_server("linear", *flags)
        with server:
            stop = threading.Event()
            outcome: list[list[int]] = []
            loader = threading.Thread(
                target=lambda: outcome.append(_load(server.address, clients, steps, stop))
            )
            loader.start()
            time.sleep(seconds)  # a benchmark's stretch of load, not synchronisation
            os.kill(server.pid, signal.SIGKILL)
            server.process.wait(timeout=30)  # type: ignore[union-attr]
            stop.set()
            loader.join()
        with (
            gradserve_server("linear", *flags) as restarted,
            GradientClient(restarted.address, timeout=30, retry=NO_RETRY) as client,
        ):
            restored = client.model_info().model_version
        return max(outcome[0]), restored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--every", type=int, default=1, help="--checkpoint-every-updates")
    parser.add_argument("--steps-per-request", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    draw = random.Random(args.seed)
    losses = []
    for kill in range(args.kills):
        seconds = draw.uniform(1.0, 3.0)
        acked, restored = one_kill(args.clients, args.every, args.steps_per_request, seconds)
        losses.append(acked - restored)
        print(f"kill {kill + 1}: after {seconds:.2f}s acknowledged v{acked}, restored "
              f"v{restored}: lost {acked - restored}", flush=True)  # fmt: skip
    print(
        f"lost versions per kill: min {min(losses)}, median {statistics.median(losses):g}, "
        f"max {max(losses)} (load average {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
