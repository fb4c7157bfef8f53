"""Run names: what a client may create (the one name grammar, gradserve/names.py), what it
may look up (that, and the names of deleted runs whose checkpoints were kept), and the default
run's name.

A run deleted without delete_checkpoints stays its owner's as NAME@TAG, TAG the first 12 hex
digits of its incarnation: `@` is outside the grammar, so no run a client creates can take
that name, and a later run NAME is another run with its own folder.
"""

from __future__ import annotations

import hashlib
import re

from gradserve.errors import InvalidArgumentError
from gradserve.names import NAME_PATTERN, RULE, is_name

# The run the server's own flags build; requests that name no run use it.
DEFAULT_RUN = ""
RETIRED = re.compile(rf"({NAME_PATTERN})@([0-9a-f]{{12}})", re.ASCII)
INCARNATION = re.compile(r"[0-9a-f]{32}", re.ASCII)


def check_run_name(name: str, field: str = "run", *, new: bool = False) -> None:
    """INVALID_ARGUMENT naming `field` unless `name` is a run name (`new`: one a client may
    create; otherwise a deleted run's NAME@TAG too)."""
    if is_name(name) or (not new and RETIRED.fullmatch(name)):
        return
    raise InvalidArgumentError(
        f"{field}: {name[:80]!r} is not a run name ({RULE})"
        + ("" if new else "; a deleted run's kept checkpoints are NAME@TAG"),
        field=field,
    )


def retired_name(name: str, incarnation: str) -> str:
    """NAME@TAG for the kept checkpoints of run `name`'s incarnation."""
    if INCARNATION.fullmatch(incarnation):
        tag = incarnation[:12]
    else:  # a folder from before incarnations (runs/NAME/): a stable tag of its name
        tag = hashlib.sha256(incarnation.encode()).hexdigest()[:12]
    return f"{name}@{tag}"
