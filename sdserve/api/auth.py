"""API keys: `Authorization: Bearer <key>` or a bare key; jobs belong to the key's fingerprint."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

OPEN_OWNER = "open"
"""Owner of every job when the server runs without keys (loopback only)."""


class Unauthorized(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def key_from_header(value: str | None) -> str | None:
    """The key in an Authorization header, with or without a (case-insensitive) scheme."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if rest and scheme.lower() in ("bearer", "token", "key"):
        return rest.strip() or None
    return value.strip() or None


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class KeyChecker:
    """Maps a presented key to its owner, or refuses it."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]

    @property
    def open(self) -> bool:
        return not self._keys

    def owner(self, key: str | None) -> str:
        if self.open:
            return OPEN_OWNER
        if key is None:
            raise Unauthorized("missing API key: send Authorization: Bearer <key>")
        try:
            presented = key.encode()
        except UnicodeEncodeError:  # a lone surrogate from a JSON escape: no key has one
            raise Unauthorized("invalid API key") from None
        if not any(hmac.compare_digest(presented, k) for k in self._keys):
            raise Unauthorized("invalid API key")
        return fingerprint(key)

    def owner_of(self, request: Request) -> str:
        """FastAPI dependency body: the caller's owner id from the Authorization header."""
        return self.owner(key_from_header(request.headers.get("authorization")))
