"""The proxy in front of the replicas: nginx's config written from the ring, and its process.

nginx reads only the `gradserve-run` header (split_clients over the ring of placement.py); the
set's health (`grpc.health.v1`) and ListRuns go to the supervisor, which asks every replica.
Its files (config, pid, temp folders) live in a temporary folder of the supervisor's; errors go
to stderr.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from gradserve.errors import GradserveError

from .placement import percent, ring

CHECK_TIMEOUT_SECONDS = 30.0
# Upstream connections each nginx worker keeps open per replica: without `keepalive` nginx opens
# a new HTTP/2 connection to the replica for every call.
UPSTREAM_KEEPALIVE = 32

TEMPLATE = """\
{user}daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;

    # The ring of server/replicas/placement.py: a run's name picks its replica.
    split_clients "${{http_gradserve_run}}" $gradserve_ring {{
{shares}
    }}
    # No header: the default run, ListRuns and admin calls, all on replica 0.
    map $http_gradserve_run $gradserve_replica {{
        ""      replica_0;
        default $gradserve_ring;
    }}
{upstreams}
    # The supervisor: the set's health and ListRuns merged over the replicas.
    upstream supervisor {{ server {supervisor}; keepalive 4; }}

    server {{
        listen {listen} http2;
        # 0: no limit. nginx counts a streaming call's whole body against it; every replica
        # checks each message against its own --max-message-bytes.
        client_max_body_size 0;
        grpc_read_timeout 300s;   # Train streams and sync rounds may be quiet a while
        grpc_send_timeout 300s;
        location /grpc.health.v1.Health/ {{
            grpc_pass grpc://supervisor;
        }}
        location = /gradserve.v1.GradientService/ListRuns {{
            grpc_pass grpc://supervisor;
        }}
        location / {{
            grpc_pass grpc://$gradserve_replica;
        }}
    }}
}}
"""


class ProxyError(GradserveError):
    """nginx is missing, refuses its config, or cannot start."""


def nginx_config(folder: Path, listen: str, replicas: Sequence[str], supervisor: str) -> str:
    """The config for `replicas` (HOST:PORT, by index) behind `listen`; `supervisor`: the
    supervisor's own server (health, ListRuns)."""
    shares = "\n".join(
        f"        {percent(share.steps) if share.steps else '*'} replica_{share.replica};"
        for share in ring(len(replicas))
    )
    upstreams = "\n".join(
        f"    upstream replica_{index} {{ server {address}; keepalive {UPSTREAM_KEEPALIVE}; }}"
        for index, address in enumerate(replicas)
    )
    # As root, nginx's workers would switch to `nobody`, who cannot enter the private folder;
    # they stay the user the server runs as instead (never more privileged than it).
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    return TEMPLATE.format(
        user=user,
        folder=folder,
        shares=shares,
        upstreams=upstreams,
        supervisor=supervisor,
        listen=listen,
    )


def check_nginx(binary: str) -> None:
    """ProxyError naming `--nginx` unless `binary` is an executable file."""
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise ProxyError(
            f"--replicas needs nginx, and --nginx {binary} is not an executable file "
            "(scripts/install-proxy-deps.sh installs Debian's; or set --nginx / GRADSERVE_NGINX)",
            field="nginx",
        )


def start_nginx(
    binary: str,
    folder: Path,
    *,
    listen: str,
    listener: socket.socket,
    replicas: Sequence[str],
    supervisor: str,
    preexec: Callable[[], None],
) -> subprocess.Popen[str]:
    """Writes the config into `folder`, has nginx test it (which binds nothing), and starts
    nginx in the foreground on `listener`, bound to `listen` (HOST:PORT) by the supervisor."""
    config = folder / "nginx.conf"
    config.write_text(nginx_config(folder, listen, replicas, supervisor))
    command = [binary, "-p", str(folder), "-c", str(config), "-e", "stderr"]
    checked = subprocess.run(
        [*command, "-t", "-q"],
        capture_output=True, text=True, timeout=CHECK_TIMEOUT_SECONDS, check=False,
    )  # fmt: skip
    if checked.returncode != 0:
        raise ProxyError(f"nginx refused its config {config}: {checked.stderr.strip()}")
    # nginx's own way to take over a listening socket (its binary upgrade): the descriptors in
    # the NGINX variable are used for the `listen` with the same address, nothing is bound.
    descriptor = listener.fileno()
    environment = {**os.environ, "NGINX": f"{descriptor};"}
    return subprocess.Popen(
        command, stdin=subprocess.DEVNULL, text=True, env=environment, pass_fds=(descriptor,),
        preexec_fn=preexec,  # noqa: PLW1509
    )  # fmt: skip
