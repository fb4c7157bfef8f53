"""Run names: the rule every run name (and dataset name) follows, and the default run's name."""

from __future__ import annotations

import re

from gradserve.errors import InvalidArgumentError

# The run the server's own flags build; requests that name no run use it.
DEFAULT_RUN = ""
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_run_name(name: str, field: str = "run") -> None:
    if not RUN_NAME.match(name):
        raise InvalidArgumentError(
            f"{field}: {name[:80]!r} is not a run name (1 to 64 letters, digits, '.', '_', "
            "'-', starting with a letter or digit)",
            field=field,
        )
