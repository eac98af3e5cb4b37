"""System checks for settings that are unsafe in production.

`python manage.py check` shows the ones that always matter; `check --deploy` adds the ones that
only matter on a server (DEBUG, HTTPS).
"""

from __future__ import annotations

from typing import Any

from cryptography.fernet import Fernet
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


@register(Tags.security)
def check_keys(app_configs: Any = None, **kwargs: Any) -> list[Error | Warning]:
    """Flag development keys and encryption keys that are not Fernet keys."""
    problems: list[Error | Warning] = []
    for position, key in enumerate(settings.CONNECTOR_ENCRYPTION_KEYS, start=1):
        try:
            Fernet(key.strip().encode())
        except (ValueError, TypeError):
            problems.append(
                Error(
                    f"Key number {position} in CONNECTOR_ENCRYPTION_KEYS is not a Fernet key.",
                    hint="Generate one with `python manage.py generate_encryption_key`.",
                    id="connectors.E001",
                )
            )
    if getattr(settings, "USING_DEVELOPMENT_ENCRYPTION_KEY", False):
        problems.append(
            Warning(
                "Connector secrets are encrypted with the development key in var/encryption-key.",
                hint="Fine on a laptop. In production set CONNECTOR_ENCRYPTION_KEYS (and keep a "
                "copy "
                "of it: secrets encrypted with a lost key cannot be recovered).",
                id="connectors.W003",
            )
        )
    if getattr(settings, "USING_DEVELOPMENT_SECRET_KEY", False):
        problems.append(
            Warning(
                "SECRET_KEY is the local development key in var/secret-key.",
                hint="In production set SECRET_KEY to a long random value of its own.",
                id="connectors.W002",
            )
        )
    return problems


@register(Tags.security, deploy=True)
def check_deployment(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Flag DEBUG and missing HTTPS settings on a server."""
    problems: list[Warning] = []
    if settings.DEBUG:
        problems.append(
            Warning(
                "DEBUG is on: error pages would show settings and request data.",
                hint="Set DEBUG=false in production.",
                id="connectors.W001",
            )
        )
    insecure = [
        name
        for name in ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE")
        if not getattr(settings, name)
    ]
    if insecure:
        problems.append(
            Warning(
                f"HTTPS is not enforced: {', '.join(insecure)} off.",
                hint="Serve the console over HTTPS and set SECURE_SSL_REDIRECT, "
                "SESSION_COOKIE_SECURE and CSRF_COOKIE_SECURE to true (and BEHIND_HTTPS_PROXY=true "
                "behind a proxy that terminates TLS).",
                id="connectors.W004",
            )
        )
    listed = [*settings.MIDDLEWARE, *getattr(settings, "CONSOLE_MIDDLEWARE", [])]
    if "django.middleware.csrf.CsrfViewMiddleware" not in listed:
        problems.append(
            Warning(
                "CSRF protection is off: CsrfViewMiddleware is in neither MIDDLEWARE nor "
                "CONSOLE_MIDDLEWARE.",
                hint="Put it back in CONSOLE_MIDDLEWARE.",
                id="connectors.W006",
            )
        )
    if "django.middleware.clickjacking.XFrameOptionsMiddleware" not in listed or (
        settings.X_FRAME_OPTIONS != "DENY"
    ):
        problems.append(
            Warning(
                "Pages may be framed by other sites: XFrameOptionsMiddleware is not listed, or "
                f"X_FRAME_OPTIONS is {settings.X_FRAME_OPTIONS!r} rather than 'DENY'.",
                hint="Keep XFrameOptionsMiddleware in CONSOLE_MIDDLEWARE and X_FRAME_OPTIONS "
                "'DENY'.",
                id="connectors.W007",
            )
        )
    if "*" in settings.ALLOWED_HOSTS:
        problems.append(
            Warning(
                "ALLOWED_HOSTS accepts any host name.",
                hint="List the console's own host names.",
                id="connectors.W005",
            )
        )
    return problems


@register()
def check_delivery_timing(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """A lease must outlast the longest send, or a second worker could take a delivery mid-send."""
    lease = getattr(settings, "CONNECTORS_LEASE_SECONDS", 300)
    send = getattr(settings, "CONNECTORS_SEND_TIMEOUT", 60)
    if send <= 0:
        return [
            Error(
                f"CONNECTORS_SEND_TIMEOUT must be a positive number of seconds, not {send}.",
                hint="Without a limit, a stuck server could hold a send past its lease.",
                id="connectors.E002",
            )
        ]
    if lease >= 2 * send:
        return []
    return [
        Error(
            f"CONNECTORS_LEASE_SECONDS ({lease}) must be at least twice CONNECTORS_SEND_TIMEOUT "
            f"({send}).",
            hint="A worker holds a delivery for the lease, renewing it while two sends' worth "
            "is left; a send that outlasted it could be sent a second time by another worker. "
            "Raise the lease or lower the send timeout.",
            id="connectors.E002",
        )
    ]
