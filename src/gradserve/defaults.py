"""Values the server and the client must agree on, defined once for both.

The service's full name and its methods come from the contract itself; the message limit is the default of
the server's `--max-message-bytes` and of every client channel (gRPC's own default receive
limit, 4 MiB, is too small for a model's parameters).
"""

from __future__ import annotations

from gradserve.v1 import gradserve_pb2

# "gradserve.v1.GradientService", as the descriptor names it.
SERVICE_NAME: str = gradserve_pb2.DESCRIPTOR.services_by_name["GradientService"].full_name
# Its methods' names, as the contract declares them.
SERVICE_METHODS: frozenset[str] = frozenset(
    gradserve_pb2.DESCRIPTOR.services_by_name["GradientService"].methods_by_name
)

MIB = 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 64 * MIB


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Send and receive limits for a server or a channel (both default to less than we need)."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
