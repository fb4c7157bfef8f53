"""Where an error raised for one part of a request is re-scoped to the whole request's path.

A batch check names `inputs.shape`; inside a Train request that batch is
`steps[2].batches[0]`, so the error must say `steps[2].batches[0].inputs.shape`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gradserve.errors import GradserveError


@contextmanager
def scoped(where: str, *, note: str | None = None) -> Iterator[None]:
    """Errors raised inside name their field (and start their message) under `where`.

    With `note`, only the message changes, to "where: message (note)": the field stays the
    one the error named (a step that failed while running, not a malformed field)."""
    try:
        yield
    except GradserveError as error:
        if note is None:
            error.field = f"{where}.{error.field}" if error.field else where
            error.message = f"{where}.{error.message}"
        else:
            error.message = f"{where}: {error.message} ({note})"
        error.args = (error.message,)
        raise
