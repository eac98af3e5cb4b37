"""API tokens: how they are made, stored (as a hash only) and checked."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from typing import Any

from django.db import transaction

from .models import ApiToken, Connector

__all__ = ["TOKEN_PREFIX", "hash_token", "issue_token", "looks_like_token", "verify_token"]

TOKEN_PREFIX = "cc_"
# 32 random bytes, URL-safe base64 without padding: always 43 characters.
TOKEN_PATTERN = re.compile(r"cc_[A-Za-z0-9_-]{43}")
DISPLAY_LENGTH = 9  # "cc_" and six characters: enough to tell tokens apart, useless to guess one


def hash_token(token: str) -> str:
    """Return the SHA-256 hex digest under which a token is stored.

    A fast hash is right here, unlike for passwords: a token carries 256 random bits, so there is
    no dictionary to try and no brute force that a slow hash would make harder. A slow one
    (PBKDF2, Argon2) would only cost milliseconds on every API request.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(value: str) -> bool:
    """Return whether value has the shape of one of our tokens (checked before any query)."""
    return TOKEN_PATTERN.fullmatch(value) is not None


def issue_token(
    name: str, *, connectors: Iterable[Connector] = (), created_by: Any = None
) -> tuple[ApiToken, str]:
    """Create a token; return its row and the token itself, which is shown this once only."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        row = ApiToken.objects.create(
            name=name,
            prefix=token[:DISPLAY_LENGTH],
            token_hash=hash_token(token),
            created_by=created_by if getattr(created_by, "pk", None) else None,
        )
        row.connectors.set(list(connectors))
    return row, token


def verify_token(token: str) -> ApiToken | None:
    """Return the active token row for a presented token, or None."""
    if not looks_like_token(token):
        return None
    digest = hash_token(token)
    row = (
        ApiToken.objects.active()
        .filter(token_hash=digest)
        .only("id", "name", "prefix", "token_hash", "last_used_at")
        .first()
    )
    # The lookup by an index on the hash is not constant-time, but its timing can only tell
    # about the hash of the guess, never about a stored token; the final word is constant-time.
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    return row
