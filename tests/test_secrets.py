"""Secrets are stored only encrypted, masked wherever shown, and keys rotate."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from connectors.models import Connector, ConnectorRevision
from connectors.secrets import MASK, DecryptionError, decrypt_secrets, encrypt_secrets

from .conftest import HTTP_AUTHORIZATION, OLD_KEY, SMTP_PASSWORD, TEST_KEY

pytestmark = pytest.mark.django_db


def raw_rows(table: str) -> str:
    """Return every column of every row of a table, as the database holds them."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table}")
        return repr(cursor.fetchall())


def test_secret_is_absent_from_every_database_column(smtp_connector, http_connector):
    everything = "".join(
        raw_rows(t)
        for t in ("connectors_connector", "connectors_template", "connectors_connectorrevision")
    )
    assert SMTP_PASSWORD not in everything
    assert HTTP_AUTHORIZATION not in everything
    assert smtp_connector.secret_values() == {"auth.pass": SMTP_PASSWORD}


def test_revisions_and_config_show_the_mask(smtp_connector):
    revision = ConnectorRevision.objects.get(connector=smtp_connector)
    assert revision.config["auth"]["pass"] == MASK
    assert smtp_connector.config()["auth"]["pass"] == MASK
    assert smtp_connector.config(reveal=True)["auth"]["pass"] == SMTP_PASSWORD


def test_saving_the_mask_keeps_the_stored_secret(smtp_connector):
    config = smtp_connector.config()
    config["host"] = "smtp2.example.test"
    smtp_connector.apply_config(config)
    smtp_connector.refresh_from_db()
    assert smtp_connector.secret_values() == {"auth.pass": SMTP_PASSWORD}
    assert smtp_connector.settings["host"] == "smtp2.example.test"


def test_saving_a_new_secret_replaces_the_stored_one(smtp_connector):
    config = smtp_connector.config()
    config["auth"]["pass"] = "new-password"
    smtp_connector.apply_config(config)
    assert Connector.objects.get(pk=smtp_connector.pk).secret_values() == {
        "auth.pass": "new-password"
    }


def test_the_mask_without_a_stored_secret_is_refused(db, smtp_config):
    from connectors.models import MissingSecretError

    smtp_config["auth"]["pass"] = MASK
    connector = Connector(slug="fresh", name="Fresh", kind="smtp")
    with pytest.raises(MissingSecretError, match=r"auth\.pass"):
        connector.apply_config(smtp_config)
    assert not Connector.objects.filter(slug="fresh").exists()


def test_a_wrong_key_fails_loudly(settings, smtp_connector):
    from cryptography.fernet import Fernet

    settings.CONNECTOR_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(DecryptionError, match="cannot be decrypted") as caught:
        smtp_connector.secret_values()
    assert smtp_connector.secrets not in str(caught.value)


def test_a_malformed_key_fails_loudly(settings):
    settings.CONNECTOR_ENCRYPTION_KEYS = ["not-a-fernet-key"]
    with pytest.raises(DecryptionError, match="not a Fernet key"):
        encrypt_secrets({"auth.pass": "x"})


def test_every_key_decrypts_and_the_first_encrypts(settings):
    settings.CONNECTOR_ENCRYPTION_KEYS = [OLD_KEY]
    token = encrypt_secrets({"authorization": "Bearer x"})
    settings.CONNECTOR_ENCRYPTION_KEYS = [TEST_KEY, OLD_KEY]
    assert decrypt_secrets(token) == {"authorization": "Bearer x"}
    settings.CONNECTOR_ENCRYPTION_KEYS = [TEST_KEY]
    with pytest.raises(DecryptionError):
        decrypt_secrets(token)


def test_rotation_reencrypts_with_the_first_key(settings, smtp_config, http_config):
    from .conftest import make_connector

    settings.CONNECTOR_ENCRYPTION_KEYS = [OLD_KEY]
    make_connector("old-smtp", "smtp", smtp_config)
    make_connector("old-http", "http", http_config)
    settings.CONNECTOR_ENCRYPTION_KEYS = [TEST_KEY, OLD_KEY]
    make_connector("new-http", "http", http_config)

    out = StringIO()
    call_command("rotate_encryption_keys", stdout=out)
    assert "re-encrypted 2 of 3" in out.getvalue()

    settings.CONNECTOR_ENCRYPTION_KEYS = [TEST_KEY]  # the old key can now be retired
    assert Connector.objects.get(slug="old-smtp").secret_values() == {"auth.pass": SMTP_PASSWORD}
    assert Connector.objects.get(slug="old-http").secret_values() == {
        "authorization": HTTP_AUTHORIZATION
    }
    out = StringIO()
    call_command("rotate_encryption_keys", stdout=out)
    assert "re-encrypted 0 of 3" in out.getvalue()


def test_rotation_with_a_missing_key_changes_nothing(settings, smtp_config):
    from .conftest import make_connector

    settings.CONNECTOR_ENCRYPTION_KEYS = [OLD_KEY]
    before = make_connector("old-smtp", "smtp", smtp_config).secrets
    settings.CONNECTOR_ENCRYPTION_KEYS = [TEST_KEY]
    with pytest.raises(CommandError, match="Nothing was changed"):
        call_command("rotate_encryption_keys", stdout=StringIO())
    assert Connector.objects.get(slug="old-smtp").secrets == before


def test_repr_and_str_carry_no_secret(smtp_connector):
    assert SMTP_PASSWORD not in repr(smtp_connector) + str(smtp_connector)
    assert SMTP_PASSWORD not in json.dumps(smtp_connector.config())
