"""System checks flag unsafe production settings, with ids."""

from __future__ import annotations

from connectors.checks import check_deployment, check_keys


def ids(messages) -> set[str]:
    return {m.id for m in messages}


def test_development_keys_are_flagged(settings):
    settings.USING_DEVELOPMENT_ENCRYPTION_KEY = True
    settings.USING_DEVELOPMENT_SECRET_KEY = True
    assert {"connectors.W002", "connectors.W003"} <= ids(check_keys())


def test_configured_keys_are_not_flagged(settings):
    settings.USING_DEVELOPMENT_ENCRYPTION_KEY = False
    settings.USING_DEVELOPMENT_SECRET_KEY = False
    assert ids(check_keys()) == set()


def test_a_malformed_encryption_key_is_an_error(settings):
    settings.CONNECTOR_ENCRYPTION_KEYS = ["short"]
    assert "connectors.E001" in ids(check_keys())


def test_debug_and_plain_http_are_flagged_for_deployment(settings):
    settings.DEBUG = True
    settings.SECURE_SSL_REDIRECT = False
    settings.ALLOWED_HOSTS = ["*"]
    assert {"connectors.W001", "connectors.W004", "connectors.W005"} <= ids(check_deployment())


def harden(settings):
    """Set what a deployment behind HTTPS sets."""
    settings.DEBUG = False
    settings.SECURE_SSL_REDIRECT = True
    settings.SESSION_COOKIE_SECURE = True
    settings.CSRF_COOKIE_SECURE = True
    settings.ALLOWED_HOSTS = ["console.example.test"]


def test_a_hardened_deployment_passes(settings):
    harden(settings)
    assert ids(check_deployment()) == set()


def test_csrf_and_framing_checks_look_at_the_console_middleware(settings):
    harden(settings)
    settings.X_FRAME_OPTIONS = "SAMEORIGIN"
    assert ids(check_deployment()) == {"connectors.W007"}
    settings.X_FRAME_OPTIONS = "DENY"
    settings.CONSOLE_MIDDLEWARE = [
        m for m in settings.CONSOLE_MIDDLEWARE if not m.endswith("CsrfViewMiddleware")
    ]
    assert ids(check_deployment()) == {"connectors.W006"}


def test_a_hardened_deployment_has_no_false_alarms_from_django(settings):
    from django.core import checks

    harden(settings)
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = True
    settings.SECRET_KEY = "x" * 20 + "a-long-random-looking-production-secret-key-0123456789"
    found = {
        m.id
        for m in checks.run_checks(include_deployment_checks=True, tags=["security"])
        if m.id.startswith("security.") and not m.is_silenced()
    }
    assert found == set(), found


def test_a_lease_shorter_than_a_send_is_an_error(settings):
    from connectors.checks import check_delivery_timing

    settings.CONNECTORS_LEASE_SECONDS, settings.CONNECTORS_SEND_TIMEOUT = 100, 60
    assert [e.id for e in check_delivery_timing()] == ["connectors.E002"]
    settings.CONNECTORS_LEASE_SECONDS = 120
    assert check_delivery_timing() == []
    settings.CONNECTORS_LEASE_SECONDS = 300
    assert check_delivery_timing() == []
    settings.CONNECTORS_SEND_TIMEOUT = 0  # no limit at all is refused too
    assert [e.id for e in check_delivery_timing()] == ["connectors.E002"]
