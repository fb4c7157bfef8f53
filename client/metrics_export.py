"""Getting the trainer's metrics out: /metrics served on --metrics-port, a final push to a
Pushgateway, and --linger so that a scrape sees the final values."""

from __future__ import annotations

import signal
import threading
from typing import TextIO

from prometheus_client import CollectorRegistry, push_to_gateway, start_http_server

from .config import MetricsConfig


def serve_metrics(config: MetricsConfig, registry: CollectorRegistry, notice: TextIO) -> int:
    """Serve /metrics; the port it is served on (0: not served). When the default port is
    taken (port_fallback), a free one instead, said in one line on `notice`."""
    if not config.port:
        return 0
    try:
        server, _ = start_http_server(config.port, addr=config.host, registry=registry)
    except OSError as error:
        if not config.port_fallback:
            # Say which port, and how to move or drop it.
            raise OSError(
                f"cannot serve /metrics on {config.host}:{config.port}: "
                f"{error.strerror or error} (--metrics-port PORT, or 0 for none)"
            ) from None
        server, _ = start_http_server(0, addr=config.host, registry=registry)
        port = int(server.server_address[1])
        print(
            f"gradserve-train: port {config.port} is taken: /metrics on "
            f"{config.host}:{port} instead (--metrics-port PORT to choose, 0 for none)",
            file=notice,
        )
        return port
    return int(server.server_address[1])


def push_metrics(config: MetricsConfig, registry: CollectorRegistry) -> None:
    if not config.pushgateway:
        return
    try:
        push_to_gateway(
            config.pushgateway,
            job="gradserve_train",
            registry=registry,
            grouping_key={"run_id": config.run_id},
        )
    except OSError as error:
        reason = getattr(error, "reason", None) or error.strerror or error
        raise OSError(f"cannot push to the Pushgateway at {config.pushgateway}: {reason}") from None


class Linger:
    """Keep /metrics served so a scrape sees the final values; SIGTERM/SIGINT end it early.

    `begin()` takes the signals as soon as training is over, before the results are printed,
    so a caller that saw them and sends SIGTERM ends the linger rather than the process."""

    def __init__(self, config: MetricsConfig) -> None:
        self.seconds = config.linger_seconds if config.port else 0.0
        self.done = threading.Event()

    def begin(self) -> None:
        if self.seconds > 0:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.done.set())

    def wait(self) -> None:
        if self.seconds > 0:
            self.done.wait(self.seconds)
