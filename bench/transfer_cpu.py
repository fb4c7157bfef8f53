"""CPU time of the 134 MB transfers (workload 3), ours against bare gRPC, client and server apart.

`python bench/transfer_cpu.py [repeats]` prints, per transfer, the median CPU milliseconds the
client process and the server process spent (user + system, from getrusage and /proc/PID/stat)
and the wall time. On 2 cores shared with other work the wall-time ratios of bench/run.py swing
by 2x between repeats; CPU time says what each side does, whatever the load.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.baselines import BareClient
from bench.processes import echo_server, gradserve_server
from bench.transfers import BIG_MODEL, LIMIT
from gradserve.client.gradient_client import GradientClient

CHUNK = 4 * 1024 * 1024
_TICK = os.sysconf("SC_CLK_TCK")


def _process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    with (
        gradserve_server(BIG_MODEL, "--max-message-bytes", str(LIMIT)) as server,
        echo_server() as echo,
        GradientClient(server.address, timeout=120, max_message_bytes=LIMIT) as client,
    ):
        client.wait_until_ready(60)
        bare = BareClient(echo.address)
        _, values = client.stream_parameters()
        total = sum(v.numel() * v.element_size() for v in values.values())
        flat = torch.cat([v.reshape(-1) for v in values.values()])
        transfers: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
            "GetParameters": (client.get_parameters, lambda: bare.download_one_message(total)),
            "StreamParameters": (client.stream_parameters, lambda: bare.download(total, CHUNK)),
            "UploadParameters": (
                lambda: client.upload_parameters(values),
                lambda: bare.upload(flat, CHUNK),
            ),
        }
        assert server.process is not None and echo.process is not None
        for name, (ours, baseline) in transfers.items():
            figures: dict[str, list[tuple[float, float, float]]] = {"ours": [], "bare": []}
            for _ in range(repeats):
                for kind, call, pid in (
                    ("ours", ours, server.process.pid),
                    ("bare", baseline, echo.process.pid),
                ):
                    own, theirs, started = _own_cpu(), _process_cpu(pid), time.perf_counter()
                    call()
                    figures[kind].append(
                        (
                            _own_cpu() - own,
                            _process_cpu(pid) - theirs,
                            time.perf_counter() - started,
                        )
                    )
            for kind, rows in figures.items():
                client_ms, server_ms, wall_ms = (
                    statistics.median(row[i] for row in rows) * 1e3 for i in range(3)
                )
                print(
                    f"{name:17s} {kind}: client CPU {client_ms:4.0f} ms, server CPU "
                    f"{server_ms:4.0f} ms, wall {wall_ms:4.0f} ms"
                )
        bare.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
