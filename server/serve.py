"""`python server/serve.py` / `gradserve-server`: run a gradserve server until SIGTERM or SIGINT.

With `--replicas N` (N > 1) this process supervises N servers behind nginx instead
(server/replicas/supervisor.py).

On the signal: health NOT_SERVING for --drain-seconds while still serving (a second signal
ends that early), then in-flight calls get --shutdown-grace seconds, then the final checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

# gRPC core reads GRPC_VERBOSITY once, when grpc is imported; unset, this grpc writes its INFO
# lines (a GOAWAY as a server stops, ...) to stderr, into our own output. ERROR, as gRPC
# documents its default, unless the user chose a level.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from gradserve.errors import GradserveError
from gradserve.server import distributed_launch as distributed
from gradserve.server.app import create_server, format_address
from gradserve.server.flags import parse_args
from gradserve.server.metrics import ServerMetrics
from gradserve.server.metrics_endpoint import MetricsEndpoint, start_metrics_endpoint
from gradserve.server.replicas.supervisor import serve_replicas

logger = logging.getLogger("gradserve.server")


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(
        level=config.runtime.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if config.replicas.count > 1:
        # This process supervises; the replicas are servers of their own (docs/scaling.md).
        return serve_replicas(config, sys.argv[1:] if argv is None else argv)
    if distributed.launched():
        # torchrun: every rank joins; ranks > 0 follow rank 0, which serves gRPC.
        distributed.init_process_group(config)
        if not distributed.is_rank_zero():
            return distributed.follow_rank_zero(config)
    network = config.network
    metrics = ServerMetrics(run_labels=config.security.metrics_run_labels)
    endpoint: MetricsEndpoint | None = None
    try:
        # /metrics first: a busy metrics port is one line before minutes of loading.
        if network.metrics_port:
            endpoint = start_metrics_endpoint(config, metrics.registry)
        running = create_server(config, metrics, store_factory=distributed.store_factory())
    except GradserveError as error:
        print(f"gradserve-server: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"gradserve-server: {error}", file=sys.stderr)
        return 1
    if endpoint is not None:
        print(f"metrics on {format_address(network.metrics_host, endpoint.port)}", flush=True)
    distributed.attach(running)

    runtime = config.runtime
    stop_requested, drain_cut_short = threading.Event(), threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop_requested.is_set():
            logger.info("%s again: ending the drain", name)
            drain_cut_short.set()
            return
        logger.info(
            "%s: stopping (drain %.1fs, grace %.1fs)",
            name,
            runtime.drain_seconds,
            runtime.shutdown_grace_seconds,
        )
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    # Announced only now: a supervisor may signal as soon as it reads this line, and a SIGTERM
    # before the handler would kill the server without its drain, grace or final checkpoint.
    print(f"listening on {running.address}", flush=True)
    stop_requested.wait()
    # Health says NOT_SERVING while calls are still served: a balancer's probe sees it and
    # sends new calls elsewhere before the port closes.
    running.drain()
    if runtime.drain_seconds > 0:
        logger.info("draining: NOT_SERVING for %.1fs, still serving", runtime.drain_seconds)
        drain_cut_short.wait(runtime.drain_seconds)
    running.stop()
    distributed.shutdown(running.store)
    logger.info("stopped at model version %d", running.store.version)
    return 1 if running.final_checkpoint_failed else 0


if __name__ == "__main__":
    sys.exit(main())
