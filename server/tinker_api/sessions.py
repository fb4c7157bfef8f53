"""Tinker sessions: what the SDK opens first and keeps alive with heartbeats, per principal.

A session names the training clients it creates (`model_seq_id` 0, 1, ...): their runs are
named after it, so a retried create_model finds its run. Sessions are bounded in count; one
without a heartbeat for `session_seconds` is forgotten (its runs stay: they are ordinary runs,
listed and served over gRPC too). Another principal's session is NOT_FOUND.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

from gradserve.errors import NotFoundError, ResourceExhaustedError


@dataclass
class Session:
    session_id: str
    owner: str
    last_heartbeat: float


class SessionTable:
    def __init__(self, max_sessions: int, session_seconds: float) -> None:
        self._max, self._seconds = max_sessions, session_seconds
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def create(self, owner: str) -> Session:
        now = time.monotonic()
        with self._lock:
            self._forget_idle(now)
            if len(self._sessions) >= self._max:
                raise ResourceExhaustedError(
                    f"tinker_max_sessions: this server holds at most {self._max} sessions",
                    field="tinker_max_sessions",
                )
            # Run names are built from it: letters and digits only, short.
            session = Session(f"s{uuid.uuid4().hex[:16]}", owner, now)
            self._sessions[session.session_id] = session
            return session

    def heartbeat(self, session_id: str, owner: str) -> None:
        self.get(session_id, owner).last_heartbeat = time.monotonic()

    def get(self, session_id: str, owner: str) -> Session:
        with self._lock:
            self._forget_idle(time.monotonic())
            session = self._sessions.get(session_id)
        if session is None or session.owner != owner:
            raise NotFoundError(f"session_id: no session {session_id[:80]!r}", field="session_id")
        return session

    def _forget_idle(self, now: float) -> None:
        for session_id, session in list(self._sessions.items()):
            if now - session.last_heartbeat > self._seconds:
                del self._sessions[session_id]
