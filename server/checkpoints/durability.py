"""`--durability sync`: a change is answered only once a checkpoint holding it is fsync'd.

Group commit: a call that changed the model (after its change committed in memory, outside
the store's lock) takes a ticket and waits. One writer thread saves a checkpoint for every
ticket taken before the save began (the save's snapshot is taken after them, so it holds
their changes), then releases them all: concurrent writers share one fsync'd save. A failed
save fails its waiters with the save's status (UNAVAILABLE or RESOURCE_EXHAUSTED): their
change stays in memory but was not acknowledged; a retry with the same request_id is replayed
and waits for the next save.
"""

from __future__ import annotations

import threading
from collections import deque

from gradserve.errors import GradserveError, UnavailableError

from .files import Checkpointer


class GroupCommit:
    def __init__(self, checkpointer: Checkpointer) -> None:
        self._checkpointer = checkpointer
        self._changed = threading.Condition()
        self._taken = 0  # tickets handed out
        self._saved = 0  # every ticket <= this one is on disk (or failed: see _failures)
        # Failed saves, newest last: (first ticket, last ticket, why); a few suffice, as
        # waiters wake as soon as their save ends.
        self._failures: deque[tuple[int, int, GradserveError]] = deque(maxlen=64)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gradserve-durability", daemon=True)
        self._thread.start()

    def wait_durable(self) -> None:
        """Return once a checkpoint holding every change committed before this call is on
        disk; raise the save's status when that save failed."""
        with self._changed:
            self._taken += 1
            ticket = self._taken
            self._changed.notify_all()
            while self._saved < ticket:
                if self._stopping:
                    raise UnavailableError("the server is stopping; the change was not saved")
                self._changed.wait()
            failed = [error for first, last, error in self._failures if first <= ticket <= last]
        if failed:
            raise failed[0]

    def close(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                while self._saved == self._taken and not self._stopping:
                    self._changed.wait()
                if self._stopping:
                    return
                first, target = self._saved + 1, self._taken
            error: GradserveError | None = None
            try:
                self._checkpointer.save()
            except GradserveError as failure:
                error = failure
            with self._changed:
                if error is not None:
                    self._failures.append((first, target, error))
                self._saved = target
                self._changed.notify_all()
