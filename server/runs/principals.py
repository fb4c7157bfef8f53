"""Who is calling: the principal behind a bearer token, for run ownership (server/runs/registry.py).

The tokens file has one token per line, `#` comments. A line is `TOKEN`, `PRINCIPAL TOKEN`
or `PRINCIPAL TOKEN admin`: a token alone is its own principal, named `token-` and the first
8 hex digits of its SHA-256 (never the token itself). Tokens from GRADSERVE_AUTH_TOKENS are
such bare tokens. An admin principal sees and may use every run; with `gradserve-owner: NAME`
metadata it reaches principal NAME's runs (run names are per principal, docs/runs.md). Without
tokens every caller is one principal, `anonymous`, as before runs had owners.

A named principal follows the name grammar (gradserve/names.py) and may not take a name the
server gives: `token-<8 hex>` (a bare token's), `anonymous` or `unauthenticated`. Otherwise a
tokens-file line could take a bare token's principal, and with it its runs; such a file is
refused at start with one line.

The bearer-token interceptor (auth.py) has already checked the token in constant time when a
call reaches the servicer; here the token's digest only picks its principal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gradserve.errors import InvalidArgumentError
from gradserve.names import is_name

OWNER_METADATA = "gradserve-owner"
DERIVED_NAME = re.compile(r"token-[0-9a-f]{8}", re.ASCII)


@dataclass(frozen=True)
class Principal:
    name: str
    admin: bool = False
    # An admin's gradserve-owner: whose runs its calls name ("": its own).
    acting_for: str = ""

    @property
    def runs_of(self) -> str:
        """The principal whose run names this caller's requests are looked up among."""
        return self.acting_for or self.name


ANONYMOUS = Principal("anonymous")
UNAUTHENTICATED = Principal("unauthenticated")


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
            _check_principal_name(fields[0], source, number)
            entries.append(TokenEntry(fields[1], Principal(fields[0], admin=len(fields) == 3)))
        else:
            raise InvalidArgumentError(
                f"auth_tokens_file: {source} line {number}: expected TOKEN, PRINCIPAL TOKEN or "
                "PRINCIPAL TOKEN admin",
                field="auth_tokens_file",
            )
    return entries


def _check_principal_name(name: str, source: str, number: int) -> None:
    reserved = DERIVED_NAME.fullmatch(name) or name in (ANONYMOUS.name, UNAUTHENTICATED.name)
    if is_name(name) and not reserved:
        return
    why = (
        "is a name the server gives (token-<8 hex> is a bare token's principal)"
        if reserved
        else "is not a name (1 to 64 letters, digits, '.', '_', '-')"
    )
    raise InvalidArgumentError(
        f"auth_tokens_file: {source} line {number}: principal {name[:80]!r} {why}",
        field="auth_tokens_file",
    )


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
        pairs = tuple(metadata or ())
        for key, value in pairs:
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
                scheme, _, token = presented.partition(b" ")
                if scheme.lower() == b"bearer":
                    found = self._by_digest.get(digest(token.strip()))
                    if found is not None:
                        return _acting(found, pairs)
        # Only reachable for services the interceptor lets through without a token.
        return UNAUTHENTICATED


def _acting(principal: Principal, metadata: Iterable[tuple[str, str | bytes]]) -> Principal:
    """An admin with gradserve-owner metadata acts on that principal's runs; anyone else's
    gradserve-owner is ignored (their runs are their own)."""
    if not principal.admin:
        return principal
    for key, value in metadata:
        if key == OWNER_METADATA and value:
            owner = value if isinstance(value, str) else value.decode(errors="replace")
            return dataclasses.replace(principal, acting_for=owner)
    return principal
