"""Where the process_*, python_info and python_gc_* collectors join a gradserve registry.

The server and the trainer each export their own registry (one per server, so tests can run
several in one process). prometheus_client registers these collectors in its default registry
only; the same instances are added to ours (each reads this process when scraped).
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
)


def register_runtime_collectors(registry: CollectorRegistry) -> None:
    if registry is REGISTRY:
        return  # it has them already; registering twice would clash
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
