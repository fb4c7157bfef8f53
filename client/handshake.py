"""Why a server is not ready when gRPC says only "Deadline Exceeded": a TLS probe of its port.

gRPC reports a failed TLS handshake as a timeout (with wait_for_ready) or "Socket closed", so
a plaintext client against a TLS server, or a TLS client without the client certificate an
mTLS server asks for, read like a server that is down. When the client's wait for readiness
fails, this opens one plain TCP connection and tries a TLS handshake itself (verifying
nothing: it only asks what the server speaks), and names the likely cause.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl

# HTTP/2's client preface and an empty SETTINGS frame: a gRPC server that accepted the TLS
# session answers with frames; one that wants a client certificate closes it instead.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
PROBE_SECONDS = 2.0
PLAINTEXT_CLIENT = (
    "the server speaks TLS and this client connects in plaintext: give it the server's CA "
    "(--tls-ca, or channel_credentials in Python)"
)
CLIENT_CERTIFICATE = (
    "the server asks for a client certificate (mTLS): give this client one signed by the "
    "server's client CA (--tls-cert and --tls-key)"
)
NOT_TLS = "the TLS handshake failed: the server may not speak TLS (a plaintext port?)"


def _host_and_port(target: str) -> tuple[str, int] | None:
    address = target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit():
        return None
    return host.removeprefix("[").removesuffix("]"), int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def tls_hint(target: str, *, client_uses_tls: bool, seconds: float = PROBE_SECONDS) -> str | None:
    """The likely TLS cause of a failed connection to `target`, or None when the probe
    finds none (nothing listening, or TLS as the client expects it)."""
    parsed = _host_and_port(target)
    if parsed is None:
        return None
    host, port = parsed
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a probe of what the server speaks, not trust
    context.set_alpn_protocols(["h2"])
    try:
        raw = socket.create_connection((host, port), timeout=seconds)
    except OSError:
        return None  # nothing to talk to: not a TLS question
    with raw:
        try:
            session = context.wrap_socket(raw, server_hostname=None if _is_ip(host) else host)
        except ssl.SSLError as error:
            # TLS 1.2 refuses a missing client certificate inside the handshake.
            if _wants_client_certificate(error):
                return CLIENT_CERTIFICATE
            return NOT_TLS if client_uses_tls else None
        except OSError:
            return NOT_TLS if client_uses_tls else None
        with session:
            if not client_uses_tls:
                return PLAINTEXT_CLIENT
            try:
                # TLS 1.3 refuses it after the handshake: the server's first answer is an
                # alert, or (gRPC's BoringSSL) the session closed without a frame.
                session.sendall(_HTTP2_PREFACE)
                answer = session.recv(1)
            except (ssl.SSLEOFError, ConnectionResetError):
                return CLIENT_CERTIFICATE
            except ssl.SSLError as error:
                return CLIENT_CERTIFICATE if _wants_client_certificate(error) else None
            except OSError:
                return None
            return CLIENT_CERTIFICATE if answer == b"" else None
    return None


def _wants_client_certificate(error: ssl.SSLError) -> bool:
    reason = str(error.reason or error).upper()
    return "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason
