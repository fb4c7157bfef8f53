"""The window of recent request ids: a repeated id gets the first call's result back (AIP-155)."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from gradserve.errors import InvalidArgumentError

MAX_REQUEST_ID_BYTES = 128

R = TypeVar("R")


def check_request_id(request_id: str) -> None:
    if len(request_id.encode()) > MAX_REQUEST_ID_BYTES:
        raise InvalidArgumentError(
            f"request_id: {len(request_id.encode())} bytes, at most {MAX_REQUEST_ID_BYTES}",
            field="request_id",
        )


class RequestIdWindow:
    """Results of the last `capacity` requests that carried an id, oldest evicted first.

    Keys are (method, request_id): the same id sent to two methods names two requests.
    Not thread-safe: the parameter store calls it under its lock.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._results: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def get(self, method: str, request_id: str) -> Any | None:
        if not request_id:
            return None
        return self._results.get((method, request_id))

    def remembered(self, method: str, request_id: str, run: Callable[[], R]) -> R:
        """run()'s result, remembered under the id; a repeated id gets the first result back,
        marked replayed (every result type has a `replayed` field), and run() is not called."""
        if request_id:
            earlier = self._results.get((method, request_id))
            if earlier is not None:
                return dataclasses.replace(earlier, replayed=True)  # type: ignore[no-any-return]
        result = run()
        self.put(method, request_id, result)
        return result

    def put(self, method: str, request_id: str, result: Any) -> None:
        if not request_id or self.capacity <= 0:
            return
        self._results[(method, request_id)] = result
        while len(self._results) > self.capacity:
            self._results.popitem(last=False)

    def __len__(self) -> int:
        return len(self._results)

    def items(self) -> Iterator[tuple[tuple[str, str], Any]]:
        return iter(self._results.items())
