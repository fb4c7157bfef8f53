"""`gradserve-server --replicas N`: start N replicas and nginx, watch them, stop them in order.

Policy when a child dies (a replica or nginx): the whole set stops and exits 1, naming it. A
replica's runs live in its memory and its own checkpoint folder; restarting one behind the
others' backs would hide a crash that lost unsaved steps, and whatever restarts one gradserve
server (systemd, Compose's `restart:`, Kubernetes) restarts the set the same way, each replica
restoring its folder. On SIGTERM or SIGINT: the set's health turns NOT_SERVING, every replica
gets SIGTERM (its drain, grace and final checkpoint, while nginx still forwards to it), then
nginx stops; a second signal is passed on to the replicas (ending their drain). Children die
with the supervisor even when it is killed (processes.py).
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradserve.errors import GradserveError

from .. import distributed_launch
from ..config import ServerConfig
from ..listening import check_port_free, format_address
from .health import ReplicaSetHealth, start_set_server
from .nginx import ProxyError, check_nginx, start_nginx
from .processes import Child, child_setup, start_replica
from .run_listing import MergedRunListing

logger = logging.getLogger("gradserve.server.replicas")
# nginx answers within milliseconds of starting; a set that is not healthy by then is broken.
PROXY_READY_SECONDS = 60.0
# On top of drain and grace: each replica's final checkpoints.
FINAL_CHECKPOINT_SECONDS = 60.0
NGINX_STOP_SECONDS = 10.0
LISTEN_BACKLOG = 511  # nginx's default


def check_supported(config: ServerConfig) -> None:
    if distributed_launch.launched():
        raise ProxyError("--replicas: not under torchrun (one or the other)", field="replicas")
    if config.security.tls_cert or config.security.tls_client_ca:
        raise ProxyError(
            "--replicas: TLS (--tls-cert, --tls-client-ca) is not configured on the proxy yet; "
            "terminate TLS in front of the set (docs/scaling.md)",
            field="replicas",
        )


def listening_socket(host: str, port: int) -> socket.socket:
    """The set's listening socket, bound now and handed to nginx later: the port (a free one for
    0, which nginx could not report) is the set's while the replicas load, and nobody can take
    it between the check and nginx's start."""
    check_port_free(host, port, "--port")
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx binds
        listener.bind((host, port))
        listener.listen(LISTEN_BACKLOG)
    except OSError:
        listener.close()
        raise
    return listener


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def serve_replicas(config: ServerConfig, argv: Sequence[str]) -> int:
    """Runs the set until a signal or a child's death; the exit status."""
    network = config.network
    try:
        check_supported(config)
        check_nginx(config.replicas.nginx)
        listener = listening_socket(network.host, network.port)
    except GradserveError as error:
        print(f"gradserve-server: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"gradserve-server: --port {network.port}: {error.strerror}", file=sys.stderr)
        return 1
    replica_set = ReplicaSet(config, argv)
    signal.signal(signal.SIGTERM, replica_set.request_stop)
    signal.signal(signal.SIGINT, replica_set.request_stop)
    try:
        status = replica_set.run(listener)
    except (GradserveError, OSError) as error:
        print(f"gradserve-server: {error}", file=sys.stderr)
        status = 1
    finally:
        listener.close()
        failed = replica_set.close()
    return status or int(failed)


class ReplicaSet:
    """The replicas, nginx and the set's health; `wake` is set by a signal or a child's exit."""

    def __init__(self, config: ServerConfig, argv: Sequence[str]) -> None:
        self.config, self.argv = config, argv
        self.wake, self.stop_requested = threading.Event(), threading.Event()
        self.replicas: list[Child] = []
        self.nginx: Child | None = None
        self.health: ReplicaSetHealth | None = None
        self.listing: MergedRunListing | None = None
        # The supervisor's own gRPC server: the set's health and the merged ListRuns.
        self.set_server: grpc.Server | None = None
        self.folder = Path(tempfile.mkdtemp(prefix="gradserve-proxy-"))

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested.is_set():
            for replica in self.replicas:
                replica.signal(signum)
        self.stop_requested.set()
        self.wake.set()

    def run(self, listener: socket.socket) -> int:
        """Starts the set, serves until a signal (0) or a child's death (1)."""
        config = self.config
        for index in range(config.replicas.count):
            self.replicas.append(start_replica(self.argv, config, index, self.wake))
        while not all(replica.address for replica in self.replicas):
            if (dead := self.dead()) is not None:
                print(f"gradserve-server: {dead.name} exited with status "
                      f"{dead.process.returncode} before listening", file=sys.stderr)  # fmt: skip
                return dead.process.returncode or 1
            if self.stop_requested.is_set():
                return 0
            self.wake.wait()
            self.wake.clear()
        addresses = [replica.address for replica in self.replicas]
        for replica in self.replicas:
            print(f"{replica.name}: pid {replica.pid}, listening on {replica.address}", flush=True)
        self.health = ReplicaSetHealth(addresses)
        self.listing = MergedRunListing(addresses)
        self.set_server, set_address = start_set_server(self.health, [self.listing.handler()])
        address = format_address(config.network.host, listener.getsockname()[1])
        process = start_nginx(config.replicas.nginx, self.folder, listen=address, listener=listener,
                              replicas=addresses, supervisor=set_address, preexec=child_setup())  # fmt: skip
        listener.close()  # nginx holds it now
        self.nginx = Child("nginx", process, self.wake)
        deadline = time.monotonic() + PROXY_READY_SECONDS
        while not serving(address):
            if self.stop_requested.is_set():
                return 0
            if self.dead() is not None or time.monotonic() > deadline:
                print(f"gradserve-server: the set did not answer SERVING through nginx on "
                      f"{address}", file=sys.stderr)  # fmt: skip
                return 1
            # Not on `wake` alone: nginx says nothing when it is ready, so the proxy is asked
            # again every 0.1 s; a child's exit or a signal ends the wait at once.
            self.wake.wait(0.1)
            self.wake.clear()
        print(f"nginx: pid {self.nginx.pid}", flush=True)
        # What a supervisor or a test waits for, as from one server: the whole set is ready.
        print(f"listening on {address}", flush=True)
        while not self.stop_requested.is_set():
            if (dead := self.dead()) is not None:
                print(f"gradserve-server: {dead.name} (pid {dead.pid}) exited with status "
                      f"{dead.process.returncode}: stopping the set", file=sys.stderr)  # fmt: skip
                return 1
            self.wake.wait()
            self.wake.clear()
        return 0

    def dead(self) -> Child | None:
        """The first child that has exited, nginx included."""
        children = [*self.replicas, *([self.nginx] if self.nginx is not None else [])]
        return next((child for child in children if child.exited.is_set()), None)

    def close(self) -> bool:
        """Health NOT_SERVING; SIGTERM to every replica at once; once they are gone, nginx.
        True if a replica exited with a failure."""
        if self.health is not None:
            self.health.stopping()
        runtime = self.config.runtime
        seconds = runtime.drain_seconds + runtime.shutdown_grace_seconds + FINAL_CHECKPOINT_SECONDS
        for replica in self.replicas:
            replica.signal(signal.SIGTERM)
        failed = False
        for replica in self.replicas:
            code = replica.wait_or_kill(seconds)
            if code != 0:
                failed = True
                logger.warning("%s exited with status %d", replica.name, code)
        if self.nginx is not None:
            self.nginx.signal(signal.SIGTERM)
            self.nginx.wait_or_kill(NGINX_STOP_SECONDS)
        if self.set_server is not None:
            self.set_server.stop(0).wait()
        for part in (self.health, self.listing):
            if part is not None:
                part.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        return failed
