"""History: each saved config is a revision; any two compare (secrets masked); restore one."""

from __future__ import annotations

import pytest
from django.urls import reverse

from connectors import schema

from .conftest import SMTP_PASSWORD

pytestmark = pytest.mark.django_db


def save_edit(connector, user=None, **changes):
    config = connector.config()
    config.update(changes)
    connector.apply_config(
        schema.validate_config_data(connector.kind, config).data, user=user, note="edited in a test"
    )


def test_the_history_lists_revisions_with_who_and_when(admin_client, admin_user, smtp_connector):
    save_edit(smtp_connector, admin_user, host="smtp2.example.test")
    response = admin_client.get(
        reverse("admin:connectors_connector_history", args=[smtp_connector.pk])
    )
    revisions = response.context["revisions"]
    assert [r.number for r in revisions] == [2, 1]
    assert revisions[0].created_by == admin_user
    html = response.content.decode()
    assert "edited in a test" in html and "root" in html


def test_the_diff_between_two_revisions_shows_the_change_with_secrets_masked(
    admin_client, smtp_connector
):
    save_edit(
        smtp_connector,
        host="smtp2.example.test",
        auth={"user": "mailer@example.test", "pass": "a-new-passw0rd"},
    )
    url = reverse("admin:connectors_connector_history_diff", args=[smtp_connector.pk])
    response = admin_client.get(url, {"from": 1, "to": 2})
    lines = response.context["lines"]
    assert any(line.kind == "removed" and "smtp.example.test" in line.text for line in lines)
    assert any(line.kind == "added" and "smtp2.example.test" in line.text for line in lines)
    body = response.content.decode()
    assert SMTP_PASSWORD not in body and "a-new-passw0rd" not in body


def test_the_diff_of_unknown_revisions_is_not_found(admin_client, smtp_connector):
    url = reverse("admin:connectors_connector_history_diff", args=[smtp_connector.pk])
    assert admin_client.get(url, {"from": 1, "to": 9}).status_code == 404
    assert admin_client.get(url, {"from": "x"}).status_code == 404


def test_restoring_a_revision_makes_a_new_one_and_keeps_the_stored_secret(
    admin_client, smtp_connector
):
    save_edit(smtp_connector, host="smtp2.example.test")
    url = reverse("admin:connectors_connector_history_restore", args=[smtp_connector.pk, 1])
    response = admin_client.post(url, follow=True)
    assert "Restored revision 1" in response.content.decode()
    smtp_connector.refresh_from_db()
    assert smtp_connector.settings["host"] == "smtp.example.test"
    assert smtp_connector.revisions.count() == 3
    assert smtp_connector.revisions.get(number=3).note == "restored revision 1"
    assert smtp_connector.secret_values() == {"auth.pass": SMTP_PASSWORD}


def test_restoring_needs_a_post(admin_client, smtp_connector):
    url = reverse("admin:connectors_connector_history_restore", args=[smtp_connector.pk, 1])
    assert admin_client.get(url).status_code == 405


def test_restoring_an_unknown_revision_is_not_found(admin_client, smtp_connector):
    url = reverse("admin:connectors_connector_history_restore", args=[smtp_connector.pk, 7])
    assert admin_client.post(url).status_code == 404


def test_a_revision_whose_secret_is_gone_cannot_be_restored(admin_client, smtp_connector):
    save_edit(smtp_connector, auth=None)  # the password is dropped with the auth block
    url = reverse("admin:connectors_connector_history_restore", args=[smtp_connector.pk, 1])
    response = admin_client.post(url, follow=True)
    assert "cannot be restored" in response.content.decode()
    assert smtp_connector.revisions.count() == 2
