"""The one grammar of names: runs, checkpoints, datasets, model files and principals.

A name is 1 to 64 ASCII letters, digits, `.`, `_` or `-`, starting with a letter or digit.
Every check uses `re.fullmatch` (with `re.ASCII`): `re.match` with `$` accepts a name that
ends in a newline ("a\\n"), and `\\d`/`\\w` without `re.ASCII` accept other scripts' digits
and letters. Patterns that embed a name (checkpoint folders) are built from NAME_PATTERN.
"""

from __future__ import annotations

import re

from gradserve.errors import InvalidArgumentError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
NAME = re.compile(NAME_PATTERN, re.ASCII)
RULE = "1 to 64 letters, digits, '.', '_', '-', starting with a letter or digit"


def is_name(text: str) -> bool:
    return NAME.fullmatch(text) is not None


def check_name(text: str, field: str, what: str, rule: str = RULE) -> None:
    """INVALID_ARGUMENT naming `field` unless `text` is a name (`what`: "a run name", ...)."""
    if not is_name(text):
        raise InvalidArgumentError(f"{field}: {text[:80]!r} is not {what} ({rule})", field=field)
