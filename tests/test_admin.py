"""The console (a Django admin site) is usable for connectors, and never shows a secret."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from connectors import schema
from connectors.models import Connector

from .conftest import HTTP_AUTHORIZATION, SMTP_PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def test_admin_pages_never_show_a_secret(admin_client, smtp_connector, http_connector):
    pages = [
        reverse("admin:connectors_connector_changelist"),
        reverse("admin:connectors_connector_change", args=[smtp_connector.pk]),
        reverse("admin:connectors_connector_change", args=[http_connector.pk]),
        reverse("admin:connectors_connector_history", args=[smtp_connector.pk]),
        reverse("admin:connectors_connector_history_diff", args=[smtp_connector.pk]),
    ]
    for url in pages:
        html = admin_client.get(url).content.decode()
        assert SMTP_PASSWORD not in html, url
        assert HTTP_AUTHORIZATION not in html, url
        assert smtp_connector.secrets not in html, url
    assert schema.MASK in admin_client.get(pages[1]).content.decode()


def test_new_connector_form_is_prefilled_with_the_full_example(admin_client):
    html = admin_client.get(reverse("admin:connectors_connector_add")).content.decode()
    assert "connectionTimeout" in html and "BindMfa" in html


def post_config(admin_client, url, **fields):
    data = {"name": "Main", "slug": "main", "kind": "smtp", "enabled": "on"}
    data.update({k: (json.dumps(v) if k == "config" else v) for k, v in fields.items()})
    data.update(
        {
            f"{prefix}-{k}": "0"
            for prefix in ("templates", "revisions")
            for k in ("TOTAL_FORMS", "INITIAL_FORMS")
        }
    )
    return admin_client.post(url, data)


def test_saving_in_the_admin_encrypts_and_keeps_masked_secrets(admin_client, smtp_config):
    response = post_config(
        admin_client, reverse("admin:connectors_connector_add"), config=smtp_config
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    connector = Connector.objects.get(slug="main")
    assert connector.secret_values() == {"auth.pass": SMTP_PASSWORD}

    edited = connector.config()  # masked
    edited["host"] = "smtp2.example.test"
    url = reverse("admin:connectors_connector_change", args=[connector.pk])
    response = post_config(admin_client, url, config=edited)
    assert response.status_code == 302
    connector.refresh_from_db()
    assert connector.settings["host"] == "smtp2.example.test"
    assert connector.secret_values() == {"auth.pass": SMTP_PASSWORD}
    assert connector.revisions.count() == 2


def test_invalid_config_in_the_admin_shows_located_errors(admin_client, smtp_config):
    smtp_config["fromEmial"] = smtp_config.pop("fromEmail")
    response = post_config(
        admin_client, reverse("admin:connectors_connector_add"), config=smtp_config
    )
    assert response.status_code == 200
    assert "fromEmial" in response.content.decode() and "fromEmail" in response.content.decode()
    assert not Connector.objects.exists()


def test_admin_requires_login(client, smtp_connector):
    response = client.get(reverse("admin:connectors_connector_change", args=[smtp_connector.pk]))
    assert response.status_code == 302 and "/login/" in response["Location"]
