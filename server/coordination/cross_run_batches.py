"""Cross-run batching on a shared base: adapter runs' ComputeGradients gathered within a window
and computed in one forward and one backward (server/models/batched_lora.py; docs/batching.md).

One BaseBatcher per base, one BatchMember per loaded adapter run (the store's SharedCompute).
A request waits in the base's FairQueue holding its run's lock, so a run has at most one
request queued. No thread of its own: the first waiting request's thread leads, closing the
window when every run on the base has a request queued, at the request or token bound, or
when the oldest request has waited `batch_window_seconds`; it computes the batch outside the
queue's lock and hands each request its own loss and gradients. A lone run, a request with a
dropout adapter or one over the token bound, and a batch of one run alone, as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from gradserve.errors import ResourceExhaustedError

from ..batch_metrics import BatchMetrics
from ..config import BatchingConfig
from ..models.batched_lora import Gradients, MemberBatch, batched_gradients
from ..models.lora import LoraAdapter
from ..models.model import LossFunction
from ..models.token_losses import MAX_LOGITS_BYTES
from ..store.shared_compute import BatchNote
from .fair_queue import FairQueue

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Ticket:
    """One queued request and, once its batch ran, its outcome (None: run it alone)."""

    member: MemberBatch
    principal: str
    tokens: int
    nbytes: int
    arrived: float = field(default_factory=time.monotonic)
    position: int = 0
    # Batches started before it was queued, and then while it was queued before its own.
    started_before: int = 0
    batches_waited: int = 0
    done: bool = False
    outcome: tuple[float, Gradients, BatchNote] | None = None
    # Set when it is done, or when it is handed the lead (its thread then closes a window).
    woken: threading.Event = field(default_factory=threading.Event)


class BaseBatcher:
    """The queue and the batches of one base's adapter runs."""

    def __init__(
        self,
        name: str,
        base: nn.Module,
        vocab_size: int,
        config: BatchingConfig,
        metrics: BatchMetrics,
    ) -> None:
        self.name = name
        self._base = base
        self._config = config
        # A batch's logits (and their log-softmax) stay within what one request's may hold.
        self.max_tokens = max(1, min(config.batch_max_tokens, MAX_LOGITS_BYTES // (8 * vocab_size)))
        self._metrics = metrics
        self._lock = threading.Lock()
        # Only the leader waits on it, for arrivals; every other waiter on its own ticket's
        # event (one wake-up per request, not one per arrival for every waiter).
        self._arrivals = threading.Condition(self._lock)
        self._queue: FairQueue[Ticket] = FairQueue()
        self._leading = False
        self._started = 0
        # Loaded runs on this base: when all have a request queued, none can join.
        self.members = 0
        metrics.queued.labels(name).set_function(lambda: len(self._queue))

    def member(self, principal: str) -> BatchMember:
        with self._lock:
            self.members += 1
        return BatchMember(self, principal)

    def leave(self) -> None:
        with self._lock:
            self.members -= 1
            self._arrivals.notify()  # a window waiting for this run closes now

    def compute(self, ticket: Ticket) -> tuple[float, Gradients, BatchNote] | None:
        with self._lock:
            self._admit(ticket)
            leading = not self._leading
            self._leading = True
        if not leading:
            ticket.woken.wait()
        while not ticket.done:  # this thread leads: its request is still queued
            with self._lock:
                batch = self._close_window()
            try:
                self._run(batch)
            finally:
                with self._lock:
                    self._hand_on(ticket)
        return ticket.outcome

    def _hand_on(self, leader: Ticket) -> None:
        """After a batch: the lead stays with `leader` while its request waits, else goes to
        the oldest queued request's thread, else lapses."""
        if not leader.done:
            return
        oldest = self._queue.first()
        if oldest is None:
            self._leading = False
        else:
            oldest.woken.set()

    def _admit(self, ticket: Ticket) -> None:
        config, queue = self._config, self._queue
        reason = ""
        if len(queue) + 1 > config.batch_queue_requests:
            reason = "requests"
        elif queue.nbytes + ticket.nbytes > config.batch_queue_bytes:
            reason = "bytes"
        if reason:
            self._metrics.refused.labels(self.name, reason).inc()
            raise ResourceExhaustedError(
                f"inputs: the cross-run batch queue of base {self.name!r} is full "
                f"({len(queue)} requests, {queue.nbytes} bytes queued; at most "
                f"{config.batch_queue_requests} and {config.batch_queue_bytes}); nothing was "
                "done, retry after the delay",
                field="inputs",
                reason="BATCH_QUEUE_FULL",
                retry_delay=max(config.batch_window_seconds, 0.05),
            )
        ticket.started_before = self._started
        ticket.position = queue.push(ticket)
        self._arrivals.notify()

    def _close_window(self) -> list[Ticket]:
        """The next batch, once its window closes (the condition held)."""
        config, queue = self._config, self._queue
        while True:
            oldest = queue.first()
            assert oldest is not None  # the leader's own request is queued or taken
            full = (
                len(queue) >= self.members
                or len(queue) >= config.batch_max_requests
                or queue.tokens >= self.max_tokens
            )
            remaining = oldest.arrived + config.batch_window_seconds - time.monotonic()
            if full or remaining <= 0:
                break
            self._arrivals.wait(remaining)
        batch = queue.take(config.batch_max_requests, self.max_tokens)
        for ticket in batch:
            ticket.batches_waited = self._started - ticket.started_before
        self._started += 1
        return batch

    def _run(self, batch: Sequence[Ticket]) -> None:
        start = time.monotonic()
        outcomes: list[tuple[float, Gradients] | None] = [None] * len(batch)
        if len(batch) > 1:
            try:
                losses, gradients, _ = batched_gradients(self._base, [t.member for t in batch])
                outcomes = list(zip(losses, gradients, strict=True))
            except Exception:  # each request then runs alone and meets its own error there
                logger.exception("a cross-run batch on base %s failed; running alone", self.name)
                self._metrics.failed.labels(self.name).inc()
        metrics = self._metrics
        metrics.batch_requests.labels(self.name).observe(len(batch))
        with self._lock:
            for ticket, outcome in zip(batch, outcomes, strict=True):
                wait = start - ticket.arrived
                metrics.wait_seconds.labels(self.name).observe(wait)
                metrics.batches_waited.labels(self.name).observe(ticket.batches_waited)
                if outcome is not None:
                    metrics.batched.labels(self.name).inc()
                    note = BatchNote(ticket.position, ticket.batches_waited, wait, len(batch))
                    ticket.outcome = (*outcome, note)
                ticket.done = True
                ticket.woken.set()


class BatchMember:
    """One loaded adapter run's way into its base's batches (the store's SharedCompute)."""

    def __init__(self, batcher: BaseBatcher, principal: str) -> None:
        self._batcher = batcher
        self._principal = principal
        self._left = False

    def leave(self) -> None:
        """The run is unloaded or deleted: batches stop waiting for it (idempotent)."""
        if not self._left:
            self._left = True
            self._batcher.leave()

    def compute(
        self,
        module: nn.Module,
        parameters: Sequence[nn.Parameter],
        inputs: torch.Tensor,
        targets: torch.Tensor,
        loss_function: LossFunction,
    ) -> tuple[float, Gradients, BatchNote] | None:
        batcher = self._batcher
        tokens = int(inputs.numel())
        alone = (
            batcher.members < 2
            or tokens > batcher.max_tokens
            or not isinstance(module, LoraAdapter)
            or not module.causal_lm
            or module.config.dropout > 0  # its masks would be drawn in another order
        )
        if alone:
            return None
        assert isinstance(module, LoraAdapter)
        mask = getattr(loss_function, "attention_mask", None)
        mask = None if mask is None else mask.to(inputs.device)
        member = MemberBatch(module, parameters, inputs, targets, mask, loss_function)
        held = [inputs, targets, *([] if mask is None else [mask])]
        # A token loss's own per-token tensors (adapter_models.TokenLossFunction).
        per_token: dict[str, torch.Tensor | None] = getattr(
            getattr(loss_function, "batch", None), "per_token", dict
        )()
        held += [t for t in per_token.values() if t is not None]
        nbytes = sum(t.numel() * t.element_size() for t in held)
        return batcher.compute(Ticket(member, self._principal, tokens, nbytes))


class CrossRunBatches:
    """The server's batchers, one per base, made when a base's first adapter run loads."""

    def __init__(self, config: BatchingConfig, metrics: BatchMetrics) -> None:
        self._config = config
        self._metrics = metrics
        self._batchers: dict[str, BaseBatcher] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._config.batch_window_seconds > 0

    def member(
        self, base_name: str, base: nn.Module, vocab_size: int, principal: str
    ) -> BatchMember | None:
        """A run's membership of its base's batches; None while batching is off."""
        if not self.enabled:
            return None
        with self._lock:
            batcher = self._batchers.get(base_name)
            if batcher is None:
                batcher = BaseBatcher(base_name, base, vocab_size, self._config, self._metrics)
                self._batchers[base_name] = batcher
        return batcher.member(principal)


ENV_BATCH_WINDOW = "GRADSERVE_BATCH_WINDOW_SECONDS"
ENV_BATCH_MAX_REQUESTS = "GRADSERVE_BATCH_MAX_REQUESTS"
ENV_BATCH_MAX_TOKENS = "GRADSERVE_BATCH_MAX_TOKENS"
ENV_BATCH_QUEUE_REQUESTS = "GRADSERVE_BATCH_QUEUE_REQUESTS"
ENV_BATCH_QUEUE_BYTES = "GRADSERVE_BATCH_QUEUE_BYTES"


def add_batching_flags(
    add: Callable[..., object], env_or: Callable[[str, object], str], default: dict[str, object]
) -> None:
    """The flags of BatchingConfig (server/flags.py calls this)."""
    for flag, env, kind, text in (
        ("window-seconds", ENV_BATCH_WINDOW, float, "longest wait for other runs' requests "
         "on the same base; 0: off"),
        ("max-requests", ENV_BATCH_MAX_REQUESTS, int, "requests in one cross-run batch"),
        ("max-tokens", ENV_BATCH_MAX_TOKENS, int, "tokens (inputs' elements) in one batch"),
        ("queue-requests", ENV_BATCH_QUEUE_REQUESTS, int, "requests queued per base"),
        ("queue-bytes", ENV_BATCH_QUEUE_BYTES, int, "bytes of requests queued per base"),
    ):  # fmt: skip
        name = "batch_" + flag.replace("-", "_")
        add(
            f"--batch-{flag}",
            type=kind,
            default=kind(env_or(env, default[name])),
            help=f"cross-run batches (docs/batching.md): {text} [{env}]",
        )
