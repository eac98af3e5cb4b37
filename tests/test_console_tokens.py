"""API tokens: created by superusers and shown once, listed with last use, revoked."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from connectors.models import ApiToken
from connectors.tokens import hash_token, issue_token, verify_token

pytestmark = pytest.mark.django_db


def test_a_new_token_is_shown_once_and_only_its_hash_is_kept(admin_client, smtp_connector):
    response = admin_client.post(
        reverse("admin:connectors_apitoken_add"),
        {"name": "signup-service", "connectors": [smtp_connector.pk]},
    )
    assert response.status_code == 200
    token = response.context["token"]
    assert token in response.content.decode()
    row = ApiToken.objects.get()
    assert row.token_hash == hash_token(token) and token not in (row.prefix, row.token_hash)
    assert list(row.connectors.all()) == [smtp_connector]
    assert row.created_by.username == "root"
    assert verify_token(token) == row
    for url in (
        reverse("admin:connectors_apitoken_changelist"),
        reverse("admin:connectors_apitoken_change", args=[row.pk]),
    ):
        body = admin_client.get(url).content.decode()
        assert token not in body and row.token_hash not in body and row.prefix in body


def test_the_list_shows_scope_and_last_use(admin_client, smtp_connector):
    row, _ = issue_token("reporting")
    ApiToken.objects.filter(pk=row.pk).update(last_used_at=timezone.now())
    html = admin_client.get(reverse("admin:connectors_apitoken_changelist")).content.decode()
    assert "reporting" in html and "every connector" in html and "active" in html


def test_revoking_a_token_stops_it_working(admin_client):
    row, token = issue_token("old-service")
    response = admin_client.post(
        reverse("admin:connectors_apitoken_revoke", args=[row.pk]), follow=True
    )
    assert "Revoked old-service" in response.content.decode()
    assert verify_token(token) is None
    assert (
        "revoked"
        in admin_client.get(reverse("admin:connectors_apitoken_changelist")).content.decode()
    )


def test_editors_cannot_create_list_or_revoke_tokens(client, editor_user):
    row, token = issue_token("svc")
    client.force_login(editor_user)
    assert client.post(reverse("admin:connectors_apitoken_add"), {"name": "x"}).status_code == 403
    assert (
        client.post(reverse("admin:connectors_apitoken_revoke", args=[row.pk])).status_code == 403
    )
    assert verify_token(token) == row and ApiToken.objects.count() == 1


def test_the_token_pages_call_them_api_tokens(admin_client):
    row, _ = issue_token("svc")
    for url, title in (
        (reverse("admin:connectors_apitoken_changelist"), "API tokens"),
        (reverse("admin:connectors_apitoken_add"), "Add API token"),
        (reverse("admin:connectors_apitoken_change", args=[row.pk]), "Change API token"),
    ):
        html = admin_client.get(url).content.decode()
        assert f"<h1>{title}</h1>" in html
        breadcrumbs = html[html.index('<ol class="breadcrumbs">') : html.index("</ol>")]
        assert "API tokens" in breadcrumbs and "Api tokens" not in breadcrumbs
    html = admin_client.get(reverse("admin:connectors_apitoken_changelist")).content.decode()
    assert "Add API token </a>" in " ".join(html.split())
