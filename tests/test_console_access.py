"""Who may do what in the console: log-in, roles, CSRF, CSP, log-in throttling."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from connectors.roles import EDITOR_PERMISSIONS, VIEWER_PERMISSIONS, create_roles

pytestmark = pytest.mark.django_db


def page_urls(connector, delivery=None):
    """Return the GET pages of the console about a connector (and a delivery)."""
    pk = connector.pk
    urls = {
        "connectors": reverse("admin:connectors_connector_changelist"),
        "connector": reverse("admin:connectors_connector_change", args=[pk]),
        "templates": reverse("admin:connectors_connector_templates", args=[pk]),
        "template": reverse("admin:connectors_connector_template", args=[pk, "Generic", "default"]),
        "history": reverse("admin:connectors_connector_history", args=[pk]),
        "diff": reverse("admin:connectors_connector_history_diff", args=[pk]),
        "export": reverse("admin:connectors_connector_export", args=[pk]),
        "deliveries": reverse("admin:connectors_delivery_changelist"),
    }
    if delivery is not None:
        urls["delivery"] = reverse("admin:connectors_delivery_change", args=[delivery.pk])
    return urls


@pytest.fixture
def delivery(smtp_connector):
    from connectors.models import Delivery

    return Delivery.objects.create(
        connector=smtp_connector,
        connector_slug=smtp_connector.slug,
        to="ada@example.test",
        usage_type="Generic",
        source="python",
        status="failed",
        error="550 no such user",
    )


def test_anonymous_visitors_are_sent_to_the_login_page(client, smtp_connector, delivery):
    for name, url in page_urls(smtp_connector, delivery).items():
        response = client.get(url)
        assert response.status_code == 302, name
        assert response["Location"].startswith(reverse("admin:login")), name
    send_test = reverse("admin:connectors_connector_send_test", args=[smtp_connector.pk])
    response = client.post(send_test, "{}", content_type="application/json")
    assert response.status_code == 302


def test_non_staff_users_cannot_log_in(client, django_user_model):
    django_user_model.objects.create_user("outsider", "o@example.test", "pw-outsider-1")
    response = client.post(
        reverse("admin:login"), {"username": "outsider", "password": "pw-outsider-1"}
    )
    assert response.status_code == 200
    assert "staff account" in response.content.decode()


def test_a_viewer_reads_every_page_but_changes_nothing(
    client, viewer_user, smtp_connector, delivery
):
    client.force_login(viewer_user)
    for name, url in page_urls(smtp_connector, delivery).items():
        assert client.get(url).status_code == 200, name

    page = client.get(reverse("admin:connectors_connector_change", args=[smtp_connector.pk]))
    html = page.content.decode()
    assert 'name="_save"' not in html and "Send test" not in html
    assert client.get(reverse("admin:connectors_connector_add")).status_code == 403


def test_a_viewer_cannot_send_a_test_or_change_anything(
    client, viewer_user, smtp_connector, delivery
):
    client.force_login(viewer_user)
    pk = smtp_connector.pk
    config = json.dumps({"config": json.dumps(smtp_connector.config()), "to": "a@example.test"})
    posts = {
        "send test": (reverse("admin:connectors_connector_send_test", args=[pk]), config),
        "send test, new": (reverse("admin:connectors_connector_send_test_new"), config),
        "edit": (reverse("admin:connectors_connector_change", args=[pk]), {"name": "x"}),
        "template": (
            reverse("admin:connectors_connector_template", args=[pk, "Generic", "default"]),
            {"subject": "s", "content": "c", "content_type": "text/plain"},
        ),
        "add locale": (
            reverse("admin:connectors_connector_templates", args=[pk]),
            {"locale": "fr"},
        ),
        "restore": (reverse("admin:connectors_connector_history_restore", args=[pk, 1]), {}),
        "retry": (reverse("admin:connectors_delivery_retry", args=[delivery.pk]), {}),
    }
    for name, (url, data) in posts.items():
        if isinstance(data, str):
            response = client.post(url, data, content_type="application/json")
        else:
            response = client.post(url, data)
        assert response.status_code == 403, name
    smtp_connector.refresh_from_db()
    assert smtp_connector.name == "Smtp-Main" and smtp_connector.revisions.count() == 1


def test_a_viewer_cannot_run_the_change_actions(client, viewer_user, smtp_connector):
    client.force_login(viewer_user)
    response = client.post(
        reverse("admin:connectors_connector_changelist"),
        {"action": "disable", "_selected_action": [smtp_connector.pk]},
    )
    smtp_connector.refresh_from_db()
    assert smtp_connector.enabled
    assert response.status_code in (200, 302)


def test_an_editor_changes_connectors_but_not_tokens_or_users(client, editor_user, smtp_connector):
    client.force_login(editor_user)
    assert client.get(reverse("admin:connectors_connector_add")).status_code == 200
    html = client.get(
        reverse("admin:connectors_connector_change", args=[smtp_connector.pk])
    ).content.decode()
    assert 'name="_save"' in html and "Send test" in html
    for url in (
        reverse("admin:connectors_apitoken_changelist"),
        reverse("admin:connectors_apitoken_add"),
        reverse("admin:auth_user_changelist"),
        reverse("admin:auth_group_changelist"),
    ):
        assert client.get(url).status_code == 403, url
    index = client.get(reverse("admin:index")).content.decode()
    assert "API tokens" not in index and "Users" not in index


def test_a_superuser_manages_tokens_and_users(admin_client):
    for url in (
        reverse("admin:connectors_apitoken_changelist"),
        reverse("admin:auth_user_changelist"),
    ):
        assert admin_client.get(url).status_code == 200
    index = admin_client.get(reverse("admin:index")).content.decode().split('id="content-main"')[1]
    assert index.index("API tokens") < index.index("Groups")  # the console's own pages first
    assert "Delivery log" in index


def test_roles_hold_exactly_their_permissions():
    create_roles()
    create_roles()  # again: idempotent
    for name, codenames in (("Viewer", VIEWER_PERMISSIONS), ("Editor", EDITOR_PERMISSIONS)):
        group = Group.objects.get(name=name)
        assert sorted(p.codename for p in group.permissions.all()) == sorted(codenames)


def test_posts_without_a_csrf_token_are_refused(editor_user, smtp_connector):
    client = Client(enforce_csrf_checks=True)
    client.force_login(editor_user)
    url = reverse("admin:connectors_connector_send_test", args=[smtp_connector.pk])
    body = json.dumps({"config": json.dumps(smtp_connector.config()), "to": "a@example.test"})
    assert client.post(url, body, content_type="application/json").status_code == 403
    restore = reverse("admin:connectors_connector_history_restore", args=[smtp_connector.pk, 1])
    assert client.post(restore).status_code == 403


def test_posts_with_the_csrf_token_are_accepted(editor_user, smtp_connector):
    client = Client(enforce_csrf_checks=True)
    client.force_login(editor_user)
    client.get(reverse("admin:connectors_connector_change", args=[smtp_connector.pk]))
    token = client.cookies["csrftoken"].value
    url = reverse("admin:connectors_connector_send_test", args=[smtp_connector.pk])
    response = client.post(
        url,
        json.dumps({"config": "{", "to": "a@example.test"}),
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert response.status_code == 400  # past CSRF: the config itself is refused
    assert response.json()["error"]["code"] == "invalid_config"


def test_pages_send_a_csp_that_allows_only_the_consoles_own_scripts(admin_client, smtp_connector):
    response = admin_client.get(
        reverse("admin:connectors_connector_change", args=[smtp_connector.pk])
    )
    policy = response["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'self'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    html = response.content.decode()
    # No inline script: each <script> has a src, or is data (json_script).
    for tag in html.split("<script")[1:]:
        opening = tag.split(">", 1)[0]
        assert "src=" in opening or 'type="application/json"' in opening, opening


def test_the_login_page_sends_the_csp_too(client):
    assert "script-src 'self'" in client.get(reverse("admin:login"))["Content-Security-Policy"]


def test_repeated_failed_logins_are_throttled_per_user_and_address(client, admin_user, settings):
    settings.CONSOLE_LOGIN_FAILURE_LIMIT = (3, 600)
    login = reverse("admin:login")
    for _ in range(3):
        response = client.post(login, {"username": "root", "password": "wrong"})
        assert "Too many failed" not in response.content.decode()
    # Now even the right password is not checked for this user from this address...
    response = client.post(login, {"username": "root", "password": "pw-root-123"})
    assert "Too many failed log-ins" in response.content.decode()
    assert "_auth_user_id" not in client.session
    # ...while the same user from another address, and other users, still log in.
    other = Client(REMOTE_ADDR="192.0.2.7")
    response = other.post(login, {"username": "root", "password": "pw-root-123"})
    assert response.status_code == 302


def test_a_successful_login_clears_earlier_failures(client, admin_user, settings):
    settings.CONSOLE_LOGIN_FAILURE_LIMIT = (3, 600)
    login = reverse("admin:login")
    for _ in range(2):
        client.post(login, {"username": "root", "password": "wrong"})
    assert client.post(login, {"username": "root", "password": "pw-root-123"}).status_code == 302
    client.logout()
    for _ in range(2):
        client.post(login, {"username": "root", "password": "wrong"})
    assert client.post(login, {"username": "root", "password": "pw-root-123"}).status_code == 302
