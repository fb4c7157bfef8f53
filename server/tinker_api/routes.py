"""The Tinker REST routes (`/api/v1/...`, as tinker==0.38.0 calls them), each a few lines.

Calls that the SDK treats as futures (create_model, forward_backward, optim_step) are decoded
and checked here, answered at once with `{request_id, model_id}`, and run by the FutureQueue;
retrieve_future waits for the answer up to RETRIEVE_WAIT_SECONDS (a long poll: the SDK asks
again at once on `try_again`, so answering early would only spin it). The rest answer directly.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from aiohttp import web

from gradserve.errors import NotFoundError

from ..config import ServerConfig
from ..runs.principals import Principal
from ..runs.registry import RunRegistry
from . import checkpoints, models, training
from .errors import TinkerHttpError, bad_field
from .futures import Answer, FutureQueue
from .sampling import TinkerSampling, sampling_request
from .sessions import SessionTable
from .wire import decompressed, forward_backward_from_proto, forward_backward_message

# Under the SDK's 45 s timeout for one retrieve_future call.
RETRIEVE_WAIT_SECONDS = 20.0
PRINCIPAL = web.RequestKey("principal", Principal)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ModelVerb = Callable[[RunRegistry, Principal, str, dict[str, Any]], dict[str, Any]]


def json_answer(document: object) -> Answer:
    return Answer(json.dumps(document).encode())


class TinkerRoutes:
    def __init__(self, config: ServerConfig, runs: RunRegistry, futures: FutureQueue) -> None:
        self._config = config.tinker
        self._runs = runs
        self._futures = futures
        self._sessions = SessionTable(self._config.max_sessions, self._config.session_seconds)
        # Sampler records: a few per session.
        # The operator's sampling bounds (--max-sample-tokens, ...), with an admission of their
        # own: the gRPC Sample's is the servicer's.
        self._sampling = TinkerSampling(runs, 4 * self._config.max_sessions, config.sampling)

    def table(self) -> list[tuple[str, str, Handler]]:
        return [
            ("GET", "/api/v1/healthz", self.healthz),
            ("POST", "/api/v1/client/config", self.client_config),
            ("POST", "/api/v1/client/dynamic_config", self.dynamic_config),
            ("GET", "/api/v1/get_server_capabilities", self.capabilities),
            ("POST", "/api/v1/create_session", self.create_session),
            ("POST", "/api/v1/session_heartbeat", self.heartbeat),
            ("POST", "/api/v1/telemetry", self.telemetry),
            ("POST", "/api/v1/create_model", self.create_model),
            ("POST", "/api/v1/get_info", self.get_info),
            ("POST", "/api/v1/forward_backward", self.forward_backward),
            ("POST", "/api/v1/optim_step", self.optim_step),
            ("POST", "/api/v1/save_weights", self.save_weights),
            ("POST", "/api/v1/load_weights", self.load_weights),
            ("GET", "/api/v1/training_runs/{model_id}/checkpoints", self.list_checkpoints),
            ("POST", "/api/v1/save_weights_for_sampler", self.save_for_sampler),
            ("POST", "/api/v1/create_sampling_session", self.create_sampling_session),
            ("GET", "/api/v1/samplers/{sampler_id}", self.get_sampler),
            ("POST", "/api/v1/asample", self.asample),
            ("POST", "/api/v1/retrieve_future", self.retrieve_future),
        ]

    async def _read(self, request: web.Request) -> bytes:
        """The body, decoded by its Content-Encoding (zstd, or none) within the body limit."""
        encoding = request.headers.get("Content-Encoding", "")
        return decompressed(await request.read(), encoding, self._config.max_body_bytes)

    # -- directly answered -----------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def client_config(self, request: web.Request) -> web.Response:
        """The SDK's feature flags, set to what this server serves: API keys (no JWT
        exchange), plain httpx, proto forward_backward bodies without compression, chunks
        that fit the body limit, custom losses computed by the client."""
        return web.json_response(
            {
                "pjwt_auth_enabled": False,
                "use_pyqwest_transport": False,
                "proto_compress_fwdbwd": False,
                "parallel_fwdbwd_chunks": True,
                "fwdbwd_max_chunk_bytes_count": min(5_000_000, self._config.max_body_bytes // 2),
                "sample_use_retrieve_futures": False,
                "custom_loss_server_side": False,
                "sample_join_sampling_session": False,
            }
        )

    async def dynamic_config(self, request: web.Request) -> web.Response:
        return web.json_response({"refresh_interval_sec": 300, "sample_cancel_enabled": False})

    async def capabilities(self, request: web.Request) -> web.Response:
        return web.json_response(models.capabilities(self._runs))

    async def create_session(self, request: web.Request) -> web.Response:
        _parsed(await self._read(request))
        session = self._sessions.create(request[PRINCIPAL].name)
        return web.json_response({"type": "create_session", "session_id": session.session_id})

    async def heartbeat(self, request: web.Request) -> web.Response:
        body = _parsed(await self._read(request))
        try:
            self._sessions.heartbeat(str(body.get("session_id", "")), request[PRINCIPAL].name)
        except NotFoundError as error:
            # 410: the SDK stops its heartbeat loop for a session that has ended.
            raise TinkerHttpError(410, error.message, "session_id") from None
        return web.json_response({"type": "session_heartbeat"})

    async def telemetry(self, request: web.Request) -> web.Response:
        """The SDK's usage reports: read and dropped (nothing leaves this server)."""
        await request.read()
        return web.json_response({"status": "accepted"})

    async def get_info(self, request: web.Request) -> web.Response:
        body = _parsed(await self._read(request))
        return web.json_response(
            models.model_info(self._runs, request[PRINCIPAL], str(body.get("model_id", "")))
        )

    # -- futures ---------------------------------------------------------------------------

    async def create_model(self, request: web.Request) -> web.Response:
        body = _parsed(await self._read(request))
        principal = request[PRINCIPAL]
        session = self._sessions.get(str(body.get("session_id", "")), principal.name)

        def work() -> Answer:
            return json_answer(models.create_model(self._runs, principal, session, body))

        return self._submitted(principal, work, request.content_length or 0, None)

    async def forward_backward(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        message = forward_backward_message(body)
        principal = request[PRINCIPAL]
        try:
            call = forward_backward_from_proto(message)
            training.check_loss(call)
        except TinkerHttpError as error:
            self._refused_in_turn(principal, message.model_id, message.seq_id, body, error)

        def work() -> Answer:
            encoded = training.forward_backward(self._runs, principal, call)
            return Answer(encoded, "application/x-protobuf")

        model = call.model_id
        return self._submitted(principal, work, len(body), model, seq_id=call.seq_id, payload=body)

    async def optim_step(self, request: web.Request) -> web.Response:
        raw = await self._read(request)
        body = _parsed(raw)
        model_id = str(body.get("model_id", ""))
        principal = request[PRINCIPAL]
        seq = body.get("seq_id")
        seq_id = seq if isinstance(seq, int) else None
        try:
            params = training.adam_params(body)
        except TinkerHttpError as error:
            self._refused_in_turn(principal, model_id, seq_id, raw, error)

        def work() -> Answer:
            return json_answer(training.optim_step(self._runs, principal, model_id, params))

        return self._submitted(principal, work, len(raw), model_id, seq_id=seq_id, payload=raw)

    async def save_weights(self, request: web.Request) -> web.Response:
        return await self._model_call(request, checkpoints.save_state)

    async def load_weights(self, request: web.Request) -> web.Response:
        body = _parsed(await self._read(request))
        if "model_id" in body:
            return await self._model_call(request, checkpoints.load_state)
        # create_training_client_from_state(_with_optimizer): a new model from the checkpoint.
        principal = request[PRINCIPAL]
        session = self._sessions.get(str(body.get("session_id", "")), principal.name)

        def work() -> Answer:
            return json_answer(checkpoints.create_from_state(self._runs, principal, session, body))

        return self._submitted(principal, work, request.content_length or 0, None)

    async def _model_call(self, request: web.Request, verb: ModelVerb) -> web.Response:
        """A JSON call on one model, run in its seq_id order."""
        raw = await self._read(request)
        body = _parsed(raw)
        model_id = body.get("model_id")
        if not isinstance(model_id, str) or not model_id:
            raise bad_field("model_id", "needed (creating a model from a checkpoint is not served)")
        principal = request[PRINCIPAL]

        def work() -> Answer:
            return json_answer(verb(self._runs, principal, model_id, body))

        seq = body.get("seq_id")
        seq_id = seq if isinstance(seq, int) else None
        return self._submitted(principal, work, len(raw), model_id, seq_id=seq_id, payload=raw)

    async def save_for_sampler(self, request: web.Request) -> web.Response:
        sampling = self._sampling

        def save(
            runs: RunRegistry, who: Principal, model: str, body: dict[str, Any]
        ) -> dict[str, Any]:
            return sampling.save_for_sampler(who, model, body)

        return await self._model_call(request, save)

    async def create_sampling_session(self, request: web.Request) -> web.Response:
        body = _parsed(await self._read(request))
        principal = request[PRINCIPAL]
        session = self._sessions.get(str(body.get("session_id", "")), principal.name)
        sampler_id = self._sampling.create_session(principal, session, body)
        return web.json_response(
            {"type": "create_sampling_session", "sampling_session_id": sampler_id}
        )

    async def get_sampler(self, request: web.Request) -> web.Response:
        sampler_id = request.match_info["sampler_id"]
        return web.json_response(self._sampling.describe(request[PRINCIPAL], sampler_id))

    async def asample(self, request: web.Request) -> web.Response:
        raw = await self._read(request)
        body = _parsed(raw)
        principal = request[PRINCIPAL]
        session_id = str(body.get("sampling_session_id") or body.get("model_path") or "")
        field = "sampling_session_id" if body.get("sampling_session_id") else "model_path"
        sampler = self._sampling.samplers.get(session_id, principal.name, field)
        prompt, params = sampling_request(body)

        def work() -> Answer:
            encoded = self._sampling.sample(principal, sampler, prompt, params)
            return Answer(encoded, "application/x-protobuf")

        request_id = self._futures.submit(principal.name, work, size=len(raw))
        sequence_ids = [f"{request_id}:{index}" for index in range(params.num_samples)]
        return web.json_response(
            {
                "request_id": request_id,
                "model_id": sampler.model_id,
                "sample_sequence_ids": sequence_ids,
            }
        )

    async def list_checkpoints(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model_id"]
        return web.json_response(checkpoints.listing(self._runs, request[PRINCIPAL], model_id))

    def _refused_in_turn(
        self,
        principal: Principal,
        model_id: str,
        seq_id: int | None,
        payload: bytes,
        error: TinkerHttpError,
    ) -> NoReturn:
        """Refuse a model's call at once, yet let it take its seq_id's turn: the SDK goes on
        numbering after a refused call, and its next calls must not wait for this one."""
        if seq_id is not None and model_id:
            self._runs.run(models.run_name_of(model_id), principal)  # lanes: the caller's models

            def refused() -> Answer:
                raise error

            self._futures.submit(
                principal.name, refused, size=len(payload), model=model_id, seq_id=seq_id,
                payload=payload,
            )  # fmt: skip
        raise error

    def _submitted(
        self,
        principal: Principal,
        work: Callable[[], Answer],
        size: int,
        model_id: str | None,
        *,
        seq_id: int | None = None,
        payload: bytes = b"",
    ) -> web.Response:
        if model_id is not None:
            # The run must be the caller's before anything waits for it.
            self._runs.run(models.run_name_of(model_id), principal)
        request_id = self._futures.submit(
            principal.name, work, size=size, model=model_id, seq_id=seq_id, payload=payload
        )
        return web.json_response({"request_id": request_id, "model_id": model_id})

    async def retrieve_future(self, request: web.Request) -> web.Response:
        body = _parsed(await self._read(request))
        request_id = str(body.get("request_id", ""))
        answer = await self._futures.result(
            request_id, request[PRINCIPAL].name, RETRIEVE_WAIT_SECONDS
        )
        if answer is None:
            return web.json_response(
                {"type": "try_again", "request_id": request_id, "queue_state": "active"}
            )
        return web.Response(body=answer.body, content_type=answer.content_type)


def _parsed(raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw or b"{}")
    except ValueError:
        raise bad_field("body", "not JSON") from None
    if not isinstance(document, dict):
        raise bad_field("body", "a JSON object is needed")
    return document
