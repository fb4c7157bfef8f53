"""Who is calling: the principal behind a bearer token, for run ownership (server/runs/registry.py).

The tokens file has one token per line, `#` comments. A line is `TOKEN`, `PRINCIPAL TOKEN`
or `PRINCIPAL TOKEN admin`: a token alone is its own principal, named `token-` and the first
8 hex digits of its SHA-256 (never the token itself). Tokens from GRADSERVE_AUTH_TOKENS are
such bare tokens. An admin principal sees and may use every run. Without tokens every caller
is one principal, `anonymous`, as before runs had owners.

The bearer-token interceptor (auth.py) has already checked the token in constant time when a
call reaches the servicer; here the token's digest only picks its principal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gradserve.errors import InvalidArgumentError


@dataclass(frozen=True)
class Principal:
    name: str
    admin: bool = False


ANONYMOUS = Principal("anonymous")


@dataclass(frozen=True)
class TokenEntry:
    token: str
    principal: Principal


def digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


def derived_principal(token: str) -> Principal:
    return Principal(f"token-{digest(token).hex()[:8]}")


def parse_tokens_file(text: str, source: str) -> list[TokenEntry]:
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) == 1:
            entries.append(TokenEntry(fields[0], derived_principal(fields[0])))
        elif len(fields) == 2 or (len(fields) == 3 and fields[2] == "admin"):
            entries.append(TokenEntry(fields[1], Principal(fields[0], admin=len(fields) == 3)))
        else:
            raise InvalidArgumentError(
                f"auth_tokens_file: {source} line {number}: expected TOKEN, PRINCIPAL TOKEN or "
                "PRINCIPAL TOKEN admin",
                field="auth_tokens_file",
            )
    return entries


def read_token_entries(tokens: Iterable[str], tokens_file: str | None) -> list[TokenEntry]:
    entries = [TokenEntry(token, derived_principal(token)) for token in tokens]
    if tokens_file:
        try:
            text = Path(tokens_file).read_text()
        except OSError as error:
            raise InvalidArgumentError(
                f"auth_tokens_file: cannot read {tokens_file}: {error.strerror}",
                field="auth_tokens_file",
            ) from None
        entries += parse_tokens_file(text, tokens_file)
    return entries


class PrincipalTable:
    """Token digest -> principal. Empty: every caller is ANONYMOUS."""

    def __init__(self, entries: Sequence[TokenEntry] = ()) -> None:
        self._by_digest = {digest(entry.token): entry.principal for entry in entries}

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    def of(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        """The caller's principal from its `authorization: Bearer` metadata."""
        if not self._by_digest:
            return ANONYMOUS
        for key, value in metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
                scheme, _, token = presented.partition(b" ")
                if scheme.lower() == b"bearer":
                    found = self._by_digest.get(digest(token.strip()))
                    if found is not None:
                        return found
        # Only reachable for services the interceptor lets through without a token.
        return Principal("unauthenticated")
