"""Renew an OAuth2 access token from a refresh token, as nodemailer does for XOAUTH2."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .base import TransportError

__all__ = ["GOOGLE_TOKEN_URL", "OAuth2Token", "can_refresh", "refresh_access_token"]

GOOGLE_TOKEN_URL = "https://accounts.google.com/o/oauth2/token"  # nodemailer's default accessUrl


@dataclass
class OAuth2Token:
    """An OAuth2 access token, with its expiry in milliseconds since the epoch (or None)."""

    access_token: str = field(repr=False)
    expires: int | None = None

    def is_usable(self, now_ms: float | None = None) -> bool:
        """Return whether the token is set and has not expired."""
        now_ms = time.time() * 1000 if now_ms is None else now_ms
        return bool(self.access_token) and (not self.expires or self.expires > now_ms)

    def as_config(self) -> dict[str, Any]:
        """Return the token as the config's `auth.accessToken` and `auth.expires`."""
        return {"accessToken": self.access_token, "expires": self.expires}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects, so the client secret is never re-posted to another address."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def can_refresh(auth: Mapping[str, Any]) -> bool:
    """Return whether an auth config holds what a token renewal needs."""
    return all(auth.get(key) for key in ("clientId", "clientSecret", "refreshToken"))


def refresh_access_token(auth: Mapping[str, Any], *, timeout: float = 30) -> OAuth2Token:
    """Return a new access token fetched with the refresh token, or raise TransportError."""
    if not can_refresh(auth):
        state = "has expired" if auth.get("accessToken") else "is missing"
        raise TransportError(
            f"The OAuth2 access token {state}, and the config cannot renew it",
            permanent=True,
            hint="Set auth.clientId, auth.clientSecret and auth.refreshToken so the token can "
            "be renewed, or paste a current auth.accessToken.",
        )
    url = str(auth.get("accessUrl") or GOOGLE_TOKEN_URL)
    parts = urllib.parse.urlsplit(url)
    shown = f"{parts.scheme}://{parts.netloc}{parts.path}"  # the query could carry a credential
    if parts.scheme not in ("http", "https"):
        # urllib would also read file:// URLs; the answer must come from a token endpoint.
        raise TransportError(f"auth.accessUrl {shown!r} is not an http(s) URL", permanent=True)
    form = urllib.parse.urlencode(
        {
            "client_id": auth["clientId"],
            "client_secret": auth["clientSecret"],
            "refresh_token": auth["refreshToken"],
            "grant_type": "refresh_token",
        }
    ).encode()
    request = urllib.request.Request(  # noqa: S310 - the scheme was checked above
        url,
        data=form,
        method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        },
    )
    failed = f"Could not renew the OAuth2 access token at {shown}"
    try:
        with _opener.open(request, timeout=timeout) as response:
            body = response.read(65536)
    except urllib.error.HTTPError as exc:
        raise _refusal(failed, exc) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TransportError(f"{failed}: {reason}", permanent=False) from None
    try:
        data = json.loads(body)
        token = data["access_token"]
    except (ValueError, KeyError, TypeError):
        token = None
    if not isinstance(token, str) or not token:
        raise TransportError(f"{failed}: the answer holds no access_token", permanent=True)
    expires_in = data.get("expires_in")
    try:
        expires = int(time.time() * 1000 + float(expires_in) * 1000) if expires_in else None
    except (TypeError, ValueError):
        expires = None
    return OAuth2Token(access_token=token, expires=expires)


def _refusal(failed: str, exc: urllib.error.HTTPError) -> TransportError:
    """Return the TransportError for a token endpoint's refusal, quoting only its error fields."""
    try:
        data = json.loads(exc.read(4096))
        said = ": ".join(str(data[k]) for k in ("error", "error_description") if data.get(k))
    except (ValueError, TypeError, AttributeError, OSError):
        said = ""
    hint = ""
    if 300 <= exc.code < 400:
        hint = "The token endpoint redirects; set auth.accessUrl to the final address."
    elif exc.code in (400, 401):
        hint = (
            "The refresh token or the client was refused: check auth.clientId and "
            "auth.clientSecret, and create a new refresh token if it was revoked or expired."
        )
    return TransportError(
        failed,
        permanent=exc.code < 500 and exc.code != 429,
        code=exc.code,
        server_text=said or str(exc.reason),
        hint=hint,
    )
