"""The cast: an administrator, keys, an SMTP connector and an HTTP connector."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from cryptography.fernet import Fernet

TEST_KEY = Fernet.generate_key().decode()
OLD_KEY = Fernet.generate_key().decode()
SMTP_PASSWORD = "s3cret-smtp-passw0rd"
HTTP_AUTHORIZATION = "Bearer http-s3cret-token"


def templates(*usage_types: str) -> list[dict[str, Any]]:
    """Return one plain-text template for each usage type."""
    return [
        {
            "usageType": usage,
            "contentType": "text/plain",
            "subject": f"{usage} code",
            "content": f"Your {usage} code is {{{{code}}}}.",
        }
        for usage in usage_types
    ]


REQUIRED = ("Register", "SignIn", "ForgotPassword", "Generic")

SMTP_CONFIG: dict[str, Any] = {
    "host": "smtp.example.test",
    "port": 587,
    "auth": {"user": "mailer@example.test", "pass": SMTP_PASSWORD},
    "fromEmail": "Acme <no-reply@example.test>",
    "templates": templates(*REQUIRED),
}

HTTP_CONFIG: dict[str, Any] = {
    "endpoint": "https://mail.example.test/send",
    "authorization": HTTP_AUTHORIZATION,
}


@pytest.fixture(autouse=True)
def encryption_keys(settings: Any) -> list[str]:
    """Encrypt with a key of the test run's own, never the developer's local one."""
    settings.CONNECTOR_ENCRYPTION_KEYS = [TEST_KEY]
    return settings.CONNECTOR_ENCRYPTION_KEYS


@pytest.fixture
def smtp_config() -> dict[str, Any]:
    return copy.deepcopy(SMTP_CONFIG)


@pytest.fixture
def http_config() -> dict[str, Any]:
    return copy.deepcopy(HTTP_CONFIG)


def make_connector(slug: str, kind: str, config: dict[str, Any], **fields: Any) -> Any:
    """Create and store a connector with a validated config."""
    from connectors import schema
    from connectors.models import Connector

    result = schema.validate_config_data(kind, config)
    assert result.ok, result.errors
    connector = Connector(slug=slug, name=fields.pop("name", slug.title()), kind=kind, **fields)
    connector.apply_config(result.data)
    return connector


@pytest.fixture
def smtp_connector(db: Any, smtp_config: dict[str, Any]) -> Any:
    return make_connector("smtp-main", "smtp", smtp_config)


@pytest.fixture
def http_connector(db: Any, http_config: dict[str, Any]) -> Any:
    return make_connector("http-hook", "http", http_config)


@pytest.fixture
def admin_user(db: Any, django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser("root", "root@example.test", "pw-root-123")


def make_staff(django_user_model: Any, username: str, role: str) -> Any:
    """Create a staff user in one of the console's roles (Viewer or Editor)."""
    from django.contrib.auth.models import Group

    from connectors.roles import create_roles

    create_roles()
    user = django_user_model.objects.create_user(
        username, f"{username}@example.test", f"pw-{username}-123", is_staff=True
    )
    user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def viewer_user(db: Any, django_user_model: Any) -> Any:
    return make_staff(django_user_model, "vera", "Viewer")


@pytest.fixture
def editor_user(db: Any, django_user_model: Any) -> Any:
    return make_staff(django_user_model, "eddie", "Editor")


@pytest.fixture(autouse=True)
def forget_rate_limits() -> None:
    """Start each test with no log-in failures or Send tests counted (they live in the cache)."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    """Hash the cast's passwords quickly: the production hasher takes half a second a user."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
