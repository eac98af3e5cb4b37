"""Encryption of connector secrets at rest, and masking wherever a config is shown.

Secrets are kept as one Fernet token per connector holding a JSON object of
`{"auth.pass": "...", ...}`: the paths come from `schema.SECRET_PATHS`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from .schema import MASK

__all__ = [
    "MASK",
    "DecryptionError",
    "decrypt_secrets",
    "encrypt_secrets",
    "mask_secrets",
    "merge_secrets",
    "needs_rotation",
    "rotate_token",
    "split_secrets",
]


class DecryptionError(Exception):
    """A stored secret could not be decrypted with any configured key."""


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise DecryptionError("CONNECTOR_ENCRYPTION_KEYS is empty: set at least one Fernet key.")
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except (ValueError, TypeError) as exc:
        raise DecryptionError(
            "CONNECTOR_ENCRYPTION_KEYS holds a value that is not a Fernet key (32 url-safe "
            "base64-encoded bytes); generate one with `python manage.py generate_encryption_key`."
        ) from exc


def _keys() -> tuple[str, ...]:
    return tuple(k.strip() for k in settings.CONNECTOR_ENCRYPTION_KEYS if k.strip())


def encrypt_secrets(values: Mapping[str, Any]) -> str:
    """Return a Fernet token of the secret values, encrypted with the first key; "" for none."""
    if not values:
        return ""
    return _fernet(_keys()).encrypt(json.dumps(dict(values)).encode()).decode()


def decrypt_secrets(token: str) -> dict[str, Any]:
    """Return the secret values held in a token, or raise DecryptionError."""
    if not token:
        return {}
    try:
        return json.loads(_fernet(_keys()).decrypt(token.encode()))
    except InvalidToken:
        raise DecryptionError(
            "Stored connector secrets cannot be decrypted with any key in "
            "CONNECTOR_ENCRYPTION_KEYS. Was the key that encrypted them removed? Add it back "
            "(keys are comma-separated; the first encrypts, all decrypt)."
        ) from None


def rotate_token(token: str) -> str:
    """Return the token re-encrypted with the first key."""
    if not token:
        return token
    try:
        return _fernet(_keys()).rotate(token.encode()).decode()
    except InvalidToken:
        decrypt_secrets(token)  # raises the explanatory error
        raise


def needs_rotation(token: str) -> bool:
    """Tell whether the token is not readable with the first key alone."""
    if not token:
        return False
    primary = Fernet(_keys()[0].encode())
    try:
        primary.decrypt(token.encode())
    except InvalidToken:
        return True
    return False


def _walk(config: dict[str, Any], path: str) -> tuple[dict[str, Any], str] | None:
    """Return (parent object, key) of a dotted path, or None when it is absent."""
    *parents, leaf = path.split(".")
    node: Any = config
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and leaf in node:
        return node, leaf
    return None


def split_secrets(
    config: Mapping[str, Any], paths: Iterable[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (config without its secrets, {path: secret}) ."""
    public = copy.deepcopy(dict(config))
    secrets: dict[str, Any] = {}
    for path in paths:
        found = _walk(public, path)
        if found:
            parent, key = found
            secrets[path] = parent.pop(key)
    return public, secrets


def merge_secrets(public: Mapping[str, Any], secrets: Mapping[str, Any]) -> dict[str, Any]:
    """Return the config with its secrets put back in place."""
    config = copy.deepcopy(dict(public))
    for path, value in secrets.items():
        *parents, leaf = path.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def mask_secrets(config: Mapping[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """Return a copy of the config with every secret that is set replaced by the mask."""
    masked = copy.deepcopy(dict(config))
    for path in paths:
        found = _walk(masked, path)
        if found and found[0][found[1]] not in (None, ""):
            found[0][found[1]] = MASK
    return masked
