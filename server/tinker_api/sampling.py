"""Tinker's sampling: save_weights_for_sampler, sampling sessions and `asample`, over ServedRun.sample.

With --checkpoint-dir, `save_weights_for_sampler` is a snapshot: it writes the run's own
named checkpoint (`sampler-NAME` for a named save, `sampler-vVERSION-XXXXXXXX` for an unnamed
one, of which the run keeps its newest --checkpoint-keep) and a sample draws from that
checkpoint (ServedRun.sample's checkpoint path), however far the run has stepped since.
Without a checkpoint directory the save records the run and its version only, and a sample
answers only while the run is still at that version (after a step it is refused naming both
versions: save again). Sampling a base alone (no run) is not served. Records are bounded in
count per server; another principal's are NOT_FOUND.
"""

from __future__ import annotations

import contextlib
import math
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from tinker.proto import tinker_public_pb2 as tinker_pb

from gradserve.errors import FailedPreconditionError, NotFoundError
from gradserve.sampling_types import SamplingParams, StopReason, collect

from ..checkpoints.names import check_checkpoint_name
from ..config import SamplingLimits
from ..coordination.served_run import ServedRun
from ..models.sampling_limits import SamplingAdmission
from ..runs.principals import Principal
from ..runs.registry import RunRegistry
from .errors import bad_field
from .models import run_name_of
from .sessions import Session


@dataclass(frozen=True)
class Sampler:
    owner: str
    model_id: str
    version: int
    base_model: str
    path: str | None
    # The run's checkpoint sampled ("" without --checkpoint-dir: the run's weights at `version`).
    checkpoint: str = ""


# The unnamed snapshots' checkpoint names: pruned to the run's newest --checkpoint-keep.
UNNAMED_SNAPSHOT = re.compile(r"sampler-v[0-9]+-[0-9a-f]{8}", re.ASCII)


class SamplerTable:
    """Saved sampler weights by path and sampling sessions by id, the oldest dropped past
    `max_entries` (a dropped one is NOT_FOUND: save again)."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, Sampler] = OrderedDict()

    def put(self, key: str, sampler: Sampler) -> None:
        with self._lock:
            self._entries[key] = sampler
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def get(self, key: str, owner: str, field: str) -> Sampler:
        with self._lock:
            sampler = self._entries.get(key)
        if sampler is None or sampler.owner != owner:
            raise NotFoundError(f"{field}: no sampler {key[:120]!r}", field=field)
        return sampler


class TinkerSampling:
    def __init__(
        self,
        runs: RunRegistry,
        max_entries: int,
        limits: SamplingLimits,
        admission: SamplingAdmission,
    ) -> None:
        self._runs = runs
        self.samplers = SamplerTable(max_entries)
        # The server's one sampling admission, shared with the gRPC Sample.
        self._admission = admission
        self._limits = limits
        self._counter = 0
        self._lock = threading.Lock()

    def save_for_sampler(
        self, principal: Principal, model_id: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The path (named save) or a sampling session id (unnamed) of the run's weights now."""
        if body.get("kind", "snapshot") != "snapshot":
            raise bad_field("kind", "only snapshot sampling clients are served")
        run = self._runs.run(run_name_of(model_id), principal)
        name = body.get("path")
        named = isinstance(name, str) and bool(name)
        with self._runs.use(run.name, principal) as served:
            version = served.store.version
            checkpoint = ""
            if served.checkpointer is not None:
                checkpoint, version = _snapshot(served, str(name) if named else "")
        if named:
            path = f"tinker://{model_id}/sampler_weights/{name}"
            self.samplers.put(
                path,
                Sampler(principal.name, model_id, version, run.spec.base_model, path, checkpoint),
            )
            return {"path": path, "type": "save_weights_for_sampler"}
        with self._lock:
            self._counter += 1
            sampler_id = f"{model_id}:sample:{self._counter}"
        sampler = Sampler(principal.name, model_id, version, run.spec.base_model, None, checkpoint)
        self.samplers.put(sampler_id, sampler)
        return {"sampling_session_id": sampler_id, "type": "save_weights_for_sampler"}

    def create_session(
        self, principal: Principal, session: Session, body: Mapping[str, Any]
    ) -> str:
        path = body.get("model_path")
        if not isinstance(path, str) or not path:
            raise bad_field(
                "model_path",
                "sampling a base model alone is not served; save_weights_for_sampler from a "
                "training client and sample its path",
            )
        sampler = self.samplers.get(path, principal.name, "model_path")
        seq = body.get("sampling_session_seq_id", 0)
        sampler_id = f"{session.session_id}:sample:{seq}"
        self.samplers.put(sampler_id, sampler)
        return sampler_id

    def describe(self, principal: Principal, sampler_id: str) -> dict[str, Any]:
        sampler = self.samplers.get(sampler_id, principal.name, "sampler_id")
        return {
            "sampler_id": sampler_id,
            "base_model": sampler.base_model,
            "model_path": sampler.path,
        }

    def admit(
        self, principal: Principal, sampler: Sampler, prompt: list[int], params: SamplingParams
    ) -> contextlib.ExitStack:
        """A place in the server's sampling admission (the gRPC Sample's too), held by the
        stack until `sample` closes it; refused at once (429, the SDK retries) when full."""
        with self._runs.use(run_name_of(sampler.model_id), principal) as served:
            needed = served.check_sample(prompt, params, self._limits, sampler.checkpoint)
        held = contextlib.ExitStack()
        held.enter_context(self._admission.admitted(needed))
        return held

    def sample(
        self,
        principal: Principal,
        sampler: Sampler,
        prompt: list[int],
        params: SamplingParams,
        held: contextlib.ExitStack,
    ) -> bytes:
        """SampleResponse (protobuf) from the sampler's checkpoint, or from the run at the
        sampler's version or refused; `held` (admit's place) is given back at the end."""
        with held, self._runs.use(run_name_of(sampler.model_id), principal) as served:
            version, events = served.sample(
                prompt, params, cancelled=lambda: False, checkpoint=sampler.checkpoint
            )
            if version != sampler.version:
                raise FailedPreconditionError(
                    f"model_path: the weights were saved for sampling at version "
                    f"{sampler.version}; the run is at {version} now (save_weights_for_sampler "
                    "again to sample it)",
                    field="model_path",
                )
            result = collect(events, params.num_samples, version)
        message = tinker_pb.SampleResponse()
        for sequence in result.samples:
            reason = sequence.stop_reason
            message.sequences.add(
                stop_reason=tinker_pb.STOP_REASON_STOP
                if reason == StopReason.STOP_TOKEN
                else tinker_pb.STOP_REASON_LENGTH,
                tokens=_packed("<i4", sequence.tokens),
                logprobs=_packed("<f4", sequence.logprobs),
            )
        if result.prompt_logprobs is not None:
            # Tinker's convention: position 0 has no logprob (NaN on the wire, None in the SDK).
            message.prompt_logprobs = _packed("<f4", [math.nan, *result.prompt_logprobs])
        return message.SerializeToString()


def _snapshot(served: ServedRun, name: str) -> tuple[str, int]:
    """Write the run's checkpoint for a sampler save; answer its name and version."""
    if name:
        checkpoint = f"sampler-{name}"
        check_checkpoint_name(checkpoint, "path")
    else:
        checkpoint = f"sampler-v{served.store.version}-{secrets.token_hex(4)}"
    saved = served.save_checkpoint(checkpoint)
    assert served.checkpointer is not None
    # Oldest first (the checkpoints' own sequence).
    unnamed = [c for c in served.list_checkpoints() if UNNAMED_SNAPSHOT.fullmatch(c.name)]
    for old in unnamed[: max(0, len(unnamed) - max(1, served.checkpointer.keep))]:
        served.delete_checkpoint(old.name)
    return checkpoint, saved.model_version


def sampling_request(body: Mapping[str, Any]) -> tuple[list[int], SamplingParams]:
    """The prompt's tokens and the params of an asample body; what is not served is refused."""
    for key in ("topk_prompt_logprobs", "topk_sample_logprobs", "prompt_alt_tokens_k"):
        if body.get(key):
            raise bad_field(key, "not served by gradserve")
    for key in ("target_prompt_logprobs", "prompt_logprobs_last_n"):
        if body.get(key) is not None:
            raise bad_field(key, "not served by gradserve")
    prompt: list[int] = []
    chunks = (body.get("prompt") or {}).get("chunks") or []
    for number, chunk in enumerate(chunks):
        if not isinstance(chunk, dict) or chunk.get("type", "encoded_text") != "encoded_text":
            raise bad_field(f"prompt.chunks[{number}]", "only encoded_text chunks are served")
        tokens = chunk.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise bad_field(f"prompt.chunks[{number}].tokens", "a list of token ids is needed")
        prompt += tokens
    raw = body.get("sampling_params") or {}
    stop = raw.get("stop")
    if isinstance(stop, str) or (isinstance(stop, list) and any(isinstance(s, str) for s in stop)):
        raise bad_field("sampling_params.stop", "stop strings are not served (give token ids)")
    top_k = raw.get("top_k", -1)
    try:
        params = SamplingParams(
            num_samples=int(body.get("num_samples", 1)),
            max_tokens=int(raw.get("max_tokens") or 0),
            temperature=float(raw.get("temperature", 1.0)),
            top_k=0 if top_k in (None, -1) else int(top_k),
            top_p=float(raw.get("top_p", 1.0)),
            stop_token_ids=tuple(stop or ()),
            seed=int(raw.get("seed") or 0),
            prompt_logprobs=bool(body.get("prompt_logprobs")),
        )
    except (TypeError, ValueError):
        raise bad_field("sampling_params", "numbers are needed") from None
    if params.max_tokens <= 0:
        raise bad_field("sampling_params.max_tokens", "a positive max_tokens is needed")
    return prompt, params


def _packed(fmt: str, values: list[int] | list[float]) -> bytes:
    return np.asarray(values, dtype=fmt).tobytes()
