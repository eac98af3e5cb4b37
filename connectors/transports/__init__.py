"""Connector kinds behind one contract: `Transport.send(message) -> SendResult`.

Adding a kind means adding one module with a Transport subclass and one line in TRANSPORTS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import SendResult, Transport, TransportError
from .http import HttpTransport
from .smtp import OAuth2Token, SmtpTransport

__all__ = [
    "TRANSPORTS",
    "HttpTransport",
    "OAuth2Token",
    "SendResult",
    "SmtpTransport",
    "Transport",
    "TransportError",
    "get_transport",
]

TRANSPORTS: dict[str, type[Transport]] = {
    "smtp": SmtpTransport,
    "http": HttpTransport,
}


def get_transport(kind: str, config: Mapping[str, Any], **options: Any) -> Transport:
    """Return a transport of the given kind for a config; options go to its constructor."""
    try:
        transport_class = TRANSPORTS[kind]
    except KeyError:
        raise TransportError(
            f"There is no connector kind {kind!r}",
            permanent=True,
            hint=f"Use one of: {', '.join(sorted(TRANSPORTS))}.",
        ) from None
    return transport_class(config, **options)
