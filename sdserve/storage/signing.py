"""Signed, expiring image URLs: HMAC-SHA256 over the key and the expiry time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path
from urllib.parse import quote


def load_secret(configured: str | None, data_dir: Path) -> bytes:
    """The configured key, else one generated once and kept in the data directory."""
    if configured:
        return configured.encode()
    path = data_dir / "url-signing.key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(secrets.token_hex(32))
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_text().strip().encode()


class UrlSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _signature(self, key: str, expires: int) -> str:
        message = f"{key}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def url(self, base_url: str, key: str, expires: float) -> str:
        """An absolute URL for `key` valid until `expires` (unix seconds)."""
        at = int(expires)
        return (
            f"{base_url.rstrip('/')}/files/{quote(key)}?expires={at}&sig={self._signature(key, at)}"
        )

    def verify(self, key: str, expires: int, signature: str) -> bool:
        valid = hmac.compare_digest(self._signature(key, expires), signature)
        return valid and expires >= time.time()
