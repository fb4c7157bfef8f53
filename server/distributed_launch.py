"""Starting and stopping a distributed server: joining the process group, the ranks > 0 that
follow rank 0, and rank 0's failure reporting and heartbeat (serve.py calls these).

The store itself and the protocol between ranks are in distributed.py.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import threading
from collections.abc import Callable

import torch
import torch.distributed as dist

from .app import GradientServer
from .config import ServerConfig
from .models.optimizers import build_optimizer
from .models.specs import build_configured
from .store.distributed import ENV_TIMEOUT, DataParallelCompute, data_parallel_store
from .store.parameter_store import ParameterStore

logger = logging.getLogger(__name__)

ENV_HEARTBEAT = "GRADSERVE_DISTRIBUTED_HEARTBEAT_SECONDS"


def launched() -> bool:
    """Started by torchrun (or with its environment) with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def store_factory() -> Callable[..., ParameterStore] | None:
    """What builds rank 0's stores: with the data-parallel strategy once the group is joined."""
    return data_parallel_store if dist.is_initialized() else None


def is_rank_zero() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def init_process_group(config: ServerConfig) -> None:
    timeout = float(os.environ.get(ENV_TIMEOUT, "30"))
    backend = "nccl" if config.model.device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    logger.info(
        "rank %d of %d (%s), collective timeout %gs",
        dist.get_rank(),
        dist.get_world_size(),
        backend,
        timeout,
    )


def follow_rank_zero(config: ServerConfig) -> int:
    """A rank > 0: build the same model (same seed) and execute rank 0's commands."""
    if config.runtime.torch_threads is not None:
        torch.set_num_threads(config.runtime.torch_threads)
    model = build_configured(config.model)
    named = dict(model.module.named_parameters())
    optimizer = build_optimizer(config.model.optimizer, list(named.values()), list(named))
    store = data_parallel_store(model, optimizer, request_id_window=0)
    parallel = store.compute_strategy
    assert isinstance(parallel, DataParallelCompute)
    # Rank 0 decides when to stop (OP_STOP); a launcher's SIGINT/SIGTERM goes to rank 0 too.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    try:
        parallel.follow(store)
    except (RuntimeError, dist.DistBackendError) as error:
        logger.error("rank %d: rank 0 stopped answering: %s", parallel.rank, error)
        return 1
    finally:
        dist.destroy_process_group()
    return 0


def attach(running: GradientServer) -> threading.Thread | None:
    """Rank 0, once serving: report NOT_SERVING on failure, and start the heartbeat."""
    parallel = running.store.compute_strategy
    if not isinstance(parallel, DataParallelCompute):
        return None

    parallel.on_failure = running.not_serving
    interval = float(
        os.environ.get(ENV_HEARTBEAT, str(float(os.environ.get(ENV_TIMEOUT, "30")) / 4))
    )
    thread = threading.Thread(
        target=parallel.heartbeat, args=(interval,), name="gradserve-heartbeat", daemon=True
    )
    thread.start()
    return thread


def shutdown(store: ParameterStore) -> None:
    if isinstance(store.compute_strategy, DataParallelCompute):
        store.compute_strategy.stop_ranks()
        dist.destroy_process_group()
