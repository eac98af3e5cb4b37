"""The delivery log: filters, search by recipient, detail with every attempt, retry."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from connectors.models import Delivery, DeliveryAttempt
from connectors.secrets import encrypt_secrets

from .conftest import REQUIRED, make_connector, templates
from .servers import SmtpServer

pytestmark = pytest.mark.django_db

LOG = "admin:connectors_delivery_changelist"


def delivery(connector, **fields):
    values = {
        "connector": connector,
        "connector_slug": connector.slug if connector else "gone",
        "to": "ada@example.test",
        "usage_type": "SignIn",
        "source": "api",
        "status": "sent",
        "payload": {"code": "[redacted]", "user": {"name": "Ada"}},
    }
    values.update(fields)
    return Delivery.objects.create(**values)


def listed(client, **params):
    response = client.get(reverse(LOG), params)
    assert response.status_code == 200
    return {d.pk for d in response.context["cl"].result_list}


def test_the_log_filters_by_status_connector_usage_type_source_and_date(
    admin_client, smtp_connector, http_connector
):
    sent = delivery(smtp_connector)
    failed = delivery(http_connector, status="failed", usage_type="Register", source="test")
    old = delivery(smtp_connector, created_at=timezone.now() - timedelta(days=40))
    assert listed(admin_client, status="failed") == {failed.pk}
    assert listed(admin_client, connector__id__exact=http_connector.pk) == {failed.pk}
    assert listed(admin_client, usage_type="Register") == {failed.pk}
    assert listed(admin_client, source="test") == {failed.pk}
    since = (timezone.now() - timedelta(days=7)).isoformat()
    assert listed(admin_client, created_at__gte=since) == {sent.pk, failed.pk}
    assert old.pk in listed(admin_client)


def test_usage_types_are_named_as_in_configs(admin_client, smtp_connector):
    delivery(smtp_connector, usage_type="ForgotPassword")
    html = " ".join(admin_client.get(reverse(LOG)).content.decode().split())
    assert "ForgotPassword" in html and "Forgot Password" not in html
    assert "SignIn" in html and "Sign In" not in html  # the filter lists every type


def test_the_log_is_searched_by_recipient(admin_client, smtp_connector):
    ada = delivery(smtp_connector, to="ada@example.test")
    delivery(smtp_connector, to="grace@example.test")
    assert listed(admin_client, q="ada@") == {ada.pk}


def test_the_detail_shows_every_attempt_with_error_hint_and_reply(admin_client, smtp_connector):
    failed = delivery(
        smtp_connector, status="failed", error="Recipient refused.", hint="Check the address."
    )
    now = timezone.now()
    DeliveryAttempt.objects.create(
        delivery=failed,
        number=1,
        started_at=now,
        outcome="retry",
        error="Connection refused.",
        hint="Is the server up?",
        code=None,
    )
    DeliveryAttempt.objects.create(
        delivery=failed,
        number=2,
        started_at=now,
        outcome="failed",
        error="Recipient refused.",
        hint="Check the address.",
        code=550,
        server_reply="5.1.1 no such user",
    )
    html = admin_client.get(
        reverse("admin:connectors_delivery_change", args=[failed.pk])
    ).content.decode()
    for text in (
        "Connection refused.",
        "Is the server up?",
        "550",
        "5.1.1 no such user",
        "transient failure",
        "permanent failure",
        "Check the address.",
    ):
        assert text in html, text
    assert "[redacted]" in html


def test_the_detail_never_shows_a_one_time_code(admin_client, smtp_connector):
    pending = delivery(
        smtp_connector, status="queued", sealed=encrypt_secrets({"payload": {"code": "246810"}})
    )
    html = admin_client.get(
        reverse("admin:connectors_delivery_change", args=[pending.pk])
    ).content.decode()
    assert "246810" not in html and pending.sealed not in html


def test_the_log_is_read_only(admin_client, smtp_connector):
    sent = delivery(smtp_connector)
    url = reverse("admin:connectors_delivery_change", args=[sent.pk])
    html = admin_client.get(url).content.decode()
    assert 'name="_save"' not in html
    admin_client.post(url, {"to": "eve@example.test"})
    sent.refresh_from_db()
    assert sent.to == "ada@example.test"
    assert admin_client.get(reverse("admin:connectors_delivery_add")).status_code == 403


def test_a_failed_delivery_without_one_time_values_is_retried(
    editor_user, client, django_capture_on_commit_callbacks
):
    with SmtpServer() as smtp:
        connector = make_connector("loop", "smtp", smtp.config(templates=templates(*REQUIRED)))
        failed = delivery(
            connector,
            status="failed",
            payload={"user": {"name": "Ada"}},
            finished_at=timezone.now(),
        )
        client.force_login(editor_user)
        url = reverse("admin:connectors_delivery_retry", args=[failed.pk])
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(url, follow=True)
        assert "retried" in response.content.decode()
        assert len(smtp.messages) == 1
    failed.refresh_from_db()
    assert failed.status == "sent"


def test_a_failed_delivery_whose_code_was_scrubbed_says_why_it_cannot_be_retried(
    admin_client, smtp_connector
):
    failed = delivery(smtp_connector, status="failed")  # its payload's code reads [redacted]
    response = admin_client.post(
        reverse("admin:connectors_delivery_retry", args=[failed.pk]), follow=True
    )
    assert "content was scrubbed" in response.content.decode()
    failed.refresh_from_db()
    assert failed.status == "failed"


@pytest.mark.parametrize(
    ("status", "source", "reason"),
    [
        ("sent", "api", "sent already"),
        ("failed", "test", "Send tests are not retried"),
    ],
)
def test_some_deliveries_are_never_retried(admin_client, smtp_connector, status, source, reason):
    row = delivery(smtp_connector, status=status, source=source, payload={})
    response = admin_client.post(
        reverse(LOG), {"action": "retry", "_selected_action": [row.pk]}, follow=True
    )
    assert reason in response.content.decode()


def test_retry_needs_a_post(admin_client, smtp_connector):
    row = delivery(smtp_connector, status="failed")
    assert (
        admin_client.get(reverse("admin:connectors_delivery_retry", args=[row.pk])).status_code
        == 405
    )
