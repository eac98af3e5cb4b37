"""A small sliding-window limit kept in Django's cache: log-in failures and Send test."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from django.core.cache import cache


@dataclass(frozen=True)
class RateLimit:
    """At most `limit` events per `window` seconds for one identity (0 = no limit)."""

    scope: str
    limit: int
    window: int

    def _key(self, identity: str) -> str:
        # Hashed: identities hold user names and addresses, and cache keys have a charset.
        digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
        return f"console-rate:{self.scope}:{digest}"

    def _recent(self, identity: str, now: float) -> list[float]:
        stamps = cache.get(self._key(identity)) or []
        return [t for t in stamps if now - t < self.window]

    def retry_after(self, identity: str) -> int | None:
        """Return the seconds to wait when the identity is at its limit, else None."""
        if self.limit <= 0:
            return None
        now = time.time()
        recent = self._recent(identity, now)
        if len(recent) < self.limit:
            return None
        return max(1, int(recent[-self.limit] + self.window - now) + 1)

    def hit(self, identity: str) -> None:
        """Count one event for the identity."""
        if self.limit <= 0:
            return
        now = time.time()
        recent = [*self._recent(identity, now), now][-self.limit :]
        cache.set(self._key(identity), recent, self.window)

    def reset(self, identity: str) -> None:
        """Forget the identity's events (after a successful log-in)."""
        cache.delete(self._key(identity))


def client_address(request: object) -> str:
    """Return the client's address as the server saw it (the proxy's, behind one)."""
    meta = getattr(request, "META", {})
    return str(meta.get("REMOTE_ADDR") or "unknown")
